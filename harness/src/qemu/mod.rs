//! The host side of a QEMU run.
pub mod peer;
