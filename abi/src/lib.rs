#![no_std]
#![forbid(unsafe_code)]
//! chimney-abi: the device/driver contract. See docs/ring-abi.md.
