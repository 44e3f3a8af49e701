#![no_std]
//! chimney-miniport: the NDIS-style chimney miniport (portable core).
extern crate alloc;
