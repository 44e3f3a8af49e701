//! PCI configuration space of a virtio 1.x PCI device (PCI 3.0 type-0 header; virtio 1.x
//! §4.1.4): identity, the six BARs, and the virtio vendor capabilities that say where in
//! which BAR the common, notify, ISR and device-specific configuration live. Everything
//! comes from a file the driver reads (sysfs `config`, `resource`): untrusted, every
//! offset bounded, the capability walk cannot loop.

use alloc::vec::Vec;

pub const VIRTIO_PCI_VENDOR: u16 = 0x1AF4;
/// Modern virtio-net (0x1040 + device type 1).
pub const VIRTIO_NET_MODERN_DEVICE: u16 = 0x1041;
/// Transitional virtio-net.
pub const VIRTIO_NET_TRANSITIONAL_DEVICE: u16 = 0x1000;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
const PCI_CAP_ID_VNDR: u8 = 0x09;
const HEADER_LEN: usize = 0x40;

/// `cfg_type` of a virtio PCI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CfgType {
    Common = 1,
    Notify = 2,
    Isr = 3,
    Device = 4,
    PciCfg = 5,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    #[error("config space: {need} bytes needed for {field}, {have} present")]
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    #[error("vendor {vendor:#06x} device {device:#06x} is not a virtio-net device")]
    NotVirtioNet { vendor: u16, device: u16 },
    #[error("header type {0:#x}: only type-0 (endpoint) headers are handled")]
    HeaderType(u8),
    #[error("status register says there is no capability list")]
    NoCapabilities,
    #[error("capability pointer {ptr:#x} at {at:#x} is inside the header or misaligned")]
    BadPointer { at: usize, ptr: u8 },
    #[error("capability list loops (more than {0} entries)")]
    Loop(usize),
    #[error("virtio capability at {at:#x}: {field} = {value:#x} is invalid")]
    BadVirtioCap {
        at: usize,
        field: &'static str,
        value: u32,
    },
    #[error("virtio capability {0:?} missing")]
    Missing(CfgType),
    #[error("BAR{bar}: {why}")]
    Bar { bar: u8, why: &'static str },
    #[error("resource file line {line}: {why}")]
    Resource { line: usize, why: &'static str },
}

/// Where one virtio structure lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioRegion {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// The virtio 1.x layout of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciLayout {
    pub vendor: u16,
    pub device: u16,
    pub common: VirtioRegion,
    pub notify: VirtioRegion,
    /// Queue `q`'s doorbell is at `notify.offset + queue_notify_off(q) * multiplier`.
    pub notify_off_multiplier: u32,
    pub isr: VirtioRegion,
    pub device_cfg: Option<VirtioRegion>,
}

/// A BAR as the header describes it (addresses as programmed; sizes come from sysfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    Unused,
    Io {
        port: u32,
    },
    Memory {
        addr: u64,
        is_64: bool,
        prefetchable: bool,
    },
}

fn u8_at(c: &[u8], at: usize, field: &'static str) -> Result<u8, PciError> {
    c.get(at).copied().ok_or(PciError::Truncated {
        field,
        need: at + 1,
        have: c.len(),
    })
}
fn u16_at(c: &[u8], at: usize, field: &'static str) -> Result<u16, PciError> {
    match c.get(at..at + 2) {
        Some(b) => Ok(u16::from_le_bytes([b[0], b[1]])),
        None => Err(PciError::Truncated {
            field,
            need: at + 2,
            have: c.len(),
        }),
    }
}
fn u32_at(c: &[u8], at: usize, field: &'static str) -> Result<u32, PciError> {
    match c.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(PciError::Truncated {
            field,
            need: at + 4,
            have: c.len(),
        }),
    }
}

/// The six BARs of a type-0 header (a 64-bit BAR takes two slots; the upper one reads
/// as `Unused`).
pub fn parse_bars(c: &[u8]) -> Result<[Bar; 6], PciError> {
    let mut bars = [Bar::Unused; 6];
    let mut i = 0;
    while i < 6 {
        let at = 0x10 + 4 * i;
        let lo = u32_at(c, at, "bar")?;
        if lo & 1 == 1 {
            bars[i] = Bar::Io { port: lo & !0x3 };
            i += 1;
            continue;
        }
        let kind = (lo >> 1) & 0x3;
        let prefetchable = lo & 0x8 != 0;
        match kind {
            0 => {
                if lo != 0 {
                    bars[i] = Bar::Memory {
                        addr: u64::from(lo & !0xF),
                        is_64: false,
                        prefetchable,
                    };
                }
                i += 1;
            }
            2 => {
                if i == 5 {
                    return Err(PciError::Bar {
                        bar: i as u8,
                        why: "64-bit BAR in the last slot",
                    });
                }
                let hi = u32_at(c, at + 4, "bar")?;
                bars[i] = Bar::Memory {
                    addr: u64::from(hi) << 32 | u64::from(lo & !0xF),
                    is_64: true,
                    prefetchable,
                };
                i += 2;
            }
            _ => {
                return Err(PciError::Bar {
                    bar: i as u8,
                    why: "reserved memory type",
                })
            }
        }
    }
    Ok(bars)
}

impl VirtioPciLayout {
    /// Parse the configuration space (at least the 64-byte header plus the capabilities).
    pub fn parse(c: &[u8]) -> Result<Self, PciError> {
        let vendor = u16_at(c, 0x00, "vendor")?;
        let device = u16_at(c, 0x02, "device")?;
        if vendor != VIRTIO_PCI_VENDOR
            || !(device == VIRTIO_NET_MODERN_DEVICE || device == VIRTIO_NET_TRANSITIONAL_DEVICE)
        {
            return Err(PciError::NotVirtioNet { vendor, device });
        }
        let header_type = u8_at(c, 0x0E, "header_type")? & 0x7F;
        if header_type != 0 {
            return Err(PciError::HeaderType(header_type));
        }
        if u16_at(c, 0x06, "status")? & PCI_STATUS_CAP_LIST == 0 {
            return Err(PciError::NoCapabilities);
        }
        let (mut common, mut notify, mut isr, mut device_cfg) = (None, None, None, None);
        let mut mult = 0;
        let mut at = 0x34usize;
        let mut ptr = u8_at(c, at, "capabilities_pointer")? & !0x3;
        // At most (256 - 64) / 4 capabilities fit: more means a loop.
        let max = (256 - HEADER_LEN) / 4;
        let mut n = 0;
        while ptr != 0 {
            if usize::from(ptr) < HEADER_LEN {
                return Err(PciError::BadPointer { at, ptr });
            }
            n += 1;
            if n > max {
                return Err(PciError::Loop(max));
            }
            at = usize::from(ptr);
            let id = u8_at(c, at, "cap_vndr")?;
            let next = u8_at(c, at + 1, "cap_next")?;
            if id == PCI_CAP_ID_VNDR {
                let cap_len = u8_at(c, at + 2, "cap_len")?;
                let cfg_type = u8_at(c, at + 3, "cfg_type")?;
                let bar = u8_at(c, at + 4, "bar")?;
                let offset = u32_at(c, at + 8, "offset")?;
                let length = u32_at(c, at + 12, "length")?;
                if cap_len < 16 {
                    return Err(PciError::BadVirtioCap {
                        at,
                        field: "cap_len",
                        value: u32::from(cap_len),
                    });
                }
                let region = VirtioRegion {
                    bar,
                    offset,
                    length,
                };
                // Structures 1..4 live in BAR 0..5 (PCI_CFG, 5, is an access window).
                if (1..=4).contains(&cfg_type) && bar > 5 {
                    return Err(PciError::BadVirtioCap {
                        at,
                        field: "bar",
                        value: u32::from(bar),
                    });
                }
                // virtio 1.x: the first capability of each type is the preferred one.
                match cfg_type {
                    1 => {
                        common.get_or_insert(region);
                    }
                    2 => {
                        if cap_len < 20 {
                            return Err(PciError::BadVirtioCap {
                                at,
                                field: "cap_len",
                                value: u32::from(cap_len),
                            });
                        }
                        if notify.is_none() {
                            mult = u32_at(c, at + 16, "notify_off_multiplier")?;
                            notify = Some(region);
                        }
                    }
                    3 => {
                        isr.get_or_insert(region);
                    }
                    4 => {
                        device_cfg.get_or_insert(region);
                    }
                    _ => {} // PCI_CFG access window, vendor-specific others: ignored.
                }
            }
            ptr = next & !0x3;
        }
        Ok(VirtioPciLayout {
            vendor,
            device,
            common: common.ok_or(PciError::Missing(CfgType::Common))?,
            notify: notify.ok_or(PciError::Missing(CfgType::Notify))?,
            notify_off_multiplier: mult,
            isr: isr.ok_or(PciError::Missing(CfgType::Isr))?,
            device_cfg,
        })
    }

    /// Doorbell offset of a queue in the notify BAR, from its `queue_notify_off`.
    pub fn notify_offset(&self, queue_notify_off: u16) -> Option<u64> {
        u64::from(queue_notify_off)
            .checked_mul(u64::from(self.notify_off_multiplier))?
            .checked_add(u64::from(self.notify.offset))
    }
}

/// One used line of sysfs `resource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub start: u64,
    pub size: u64,
    pub flags: u64,
}

/// Lines of sysfs `resource`: start, end, flags (end = start + size − 1; all zero =
/// unused, `None`).
pub fn parse_resource(text: &str) -> Result<Vec<Option<Resource>>, PciError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let mut it = line.split_whitespace().map(|w| {
            w.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or(PciError::Resource {
                    line: line_no,
                    why: "not a 0x-prefixed hex number",
                })
        });
        let (Some(start), Some(end), Some(flags), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(PciError::Resource {
                line: line_no,
                why: "expected three numbers",
            });
        };
        let (start, end, flags) = (start?, end?, flags?);
        if start == 0 && end == 0 {
            out.push(None);
            continue;
        }
        if end < start {
            return Err(PciError::Resource {
                line: line_no,
                why: "end below start",
            });
        }
        out.push(Some(Resource {
            start,
            size: end - start + 1,
            flags,
        }));
    }
    Ok(out)
}
