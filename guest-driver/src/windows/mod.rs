//! The Windows NDIS 6 binding (DESIGN.md: windows-drivers-rs has no NDIS bindings and does
//! not build on Linux). [`ffi`] declares the NDIS structures and functions the chimney needs
//! ourselves; [`edge`] converts between ndis.sys's C block lists and the core's
//! [`crate::ndis`] shapes and implements [`crate::ndis::chars::NdisMiniportServices`] over
//! the real `NdisM*` exports; [`platform`] is the DMA / doorbell side.
//!
//! Built only for `target_os = "windows"`; `scripts/check-targets` type-checks it with
//! `cargo check --target x86_64-pc-windows-msvc` (no linking, no WDK). With the `wdk`
//! feature on a Windows build machine, wdk-sys supplies `DriverEntry` glue and the import
//! library (docs/windows.md).

pub mod adapter;
pub mod edge;
pub mod ffi;
pub mod platform;
