//! The Linux guest binding's pieces that need no VM: PCI config space of a real virtio-net
//! function (captured, see tests/fixtures/README.md), sysfs `resource`, pagemap entries
//! (decoded by hand and read for real from /proc/self/pagemap), VQ_PAIRS_SET encoding.

use chimney_miniport::linux::ctrl::{vq_pairs_set_command, CtrlError};
use chimney_miniport::linux::pagemap::{self, PagemapError};
use chimney_miniport::linux::pci::{
    parse_bars, parse_resource, Bar, CfgType, PciError, Resource, VirtioPciLayout, VirtioRegion,
};

const CONFIG: &[u8] = include_bytes!("fixtures/virtio-net-pci-config.bin");
const RESOURCE: &str = include_str!("fixtures/virtio-net-pci-resource.txt");

#[test]
fn captured_config_space_gives_the_virtio_regions() {
    let l = VirtioPciLayout::parse(CONFIG).expect("captured config parses");
    assert_eq!((l.vendor, l.device), (0x1AF4, 0x1041));
    let r = |bar, offset, length| VirtioRegion {
        bar,
        offset,
        length,
    };
    assert_eq!(l.common, r(0, 0x0000, 0x38));
    assert_eq!(l.isr, r(0, 0x2000, 0x1));
    assert_eq!(l.device_cfg, Some(r(0, 0x4000, 0x1000)));
    assert_eq!(l.notify, r(0, 0x6000, 0x1000));
    assert_eq!(l.notify_off_multiplier, 4);
    assert_eq!(l.notify_offset(3), Some(0x6000 + 12));
}

#[test]
fn captured_bars_and_resource_file_agree() {
    let bars = parse_bars(CONFIG).expect("BARs");
    assert_eq!(
        bars[0],
        Bar::Memory {
            addr: 0x40_0010_0000,
            is_64: true,
            prefetchable: false
        }
    );
    assert!(bars[1..].iter().all(|b| *b == Bar::Unused), "{bars:?}");
    let res = parse_resource(RESOURCE).expect("resource");
    assert_eq!(
        res[0],
        Some(Resource {
            start: 0x40_0010_0000,
            size: 0x8_0000,
            flags: 0x14_0204
        })
    );
    assert!(res[1..].iter().all(|r| r.is_none()));
    // Every virtio region fits in BAR0.
    let l = VirtioPciLayout::parse(CONFIG).unwrap();
    for g in [l.common, l.notify, l.isr, l.device_cfg.unwrap()] {
        assert!(
            u64::from(g.offset) + u64::from(g.length) <= 0x8_0000,
            "{g:?}"
        );
    }
}

#[test]
fn broken_config_spaces_are_typed_errors() {
    // Truncated: the capabilities pointer (0x34) is missing.
    assert!(matches!(
        VirtioPciLayout::parse(&CONFIG[..0x10]),
        Err(PciError::Truncated {
            field: "capabilities_pointer",
            need: 0x35,
            have: 0x10
        })
    ));
    // Another vendor.
    let mut c = CONFIG.to_vec();
    c[0] = 0x86;
    c[1] = 0x80;
    assert!(matches!(
        VirtioPciLayout::parse(&c),
        Err(PciError::NotVirtioNet { vendor: 0x8086, .. })
    ));
    // A capability list that loops back on itself.
    let mut c = CONFIG.to_vec();
    c[0x41] = 0x40; // first capability's next = itself
    assert_eq!(VirtioPciLayout::parse(&c), Err(PciError::Loop(48)));
    // A pointer into the header.
    let mut c = CONFIG.to_vec();
    c[0x34] = 0x20;
    assert!(matches!(
        VirtioPciLayout::parse(&c),
        Err(PciError::BadPointer { ptr: 0x20, .. })
    ));
    // No common configuration capability (turn it into a PCI_CFG one).
    let mut c = CONFIG.to_vec();
    c[0x43] = 5;
    assert_eq!(
        VirtioPciLayout::parse(&c),
        Err(PciError::Missing(CfgType::Common))
    );
    // Capability pointing past the end of a short capture.
    assert!(matches!(
        VirtioPciLayout::parse(&CONFIG[..0x50]),
        Err(PciError::Truncated { .. })
    ));
    assert!(matches!(
        parse_resource("0x10 0x0f 0x0\n"),
        Err(PciError::Resource {
            line: 1,
            why: "end below start"
        })
    ));
    assert!(matches!(
        parse_resource("0x0 0x0\n"),
        Err(PciError::Resource { line: 1, .. })
    ));
}

#[test]
fn pagemap_entries_decode_by_hand() {
    let present = 1u64 << 63;
    assert_eq!(
        pagemap::physical_address(0x7f00_1234, present | 0x1_2345, 4096),
        Ok(0x1_2345 * 4096 + 0x234)
    );
    assert_eq!(
        pagemap::physical_address(0x1000, 1 << 62, 4096),
        Err(PagemapError::Swapped { vaddr: 0x1000 })
    );
    assert_eq!(
        pagemap::physical_address(0x1000, 0, 4096),
        Err(PagemapError::NotPresent { vaddr: 0x1000 })
    );
    assert_eq!(
        pagemap::physical_address(0x1000, present, 4096),
        Err(PagemapError::PfnHidden { vaddr: 0x1000 })
    );
    assert_eq!(pagemap::entry_offset(0x5000, 4096), Ok(5 * 8));
    assert_eq!(
        pagemap::entry_offset(0x5000, 3000),
        Err(PagemapError::PageSize(3000))
    );
    // Bits 55..61 are flags, not part of the PFN.
    assert_eq!(
        pagemap::physical_address(0, present | (1 << 55) | 7, 4096),
        Ok(7 * 4096)
    );
}

/// As root (CI runs as root), our own pagemap gives a frame for a page we wrote; two
/// addresses in the same page map into the same frame at their page offsets.
#[test]
fn real_pagemap_of_a_touched_page() {
    use std::io::{Read, Seek, SeekFrom};
    let page = 4096u64;
    let buf = vec![0xA5u8; 3 * page as usize];
    let base = (buf.as_ptr() as u64 + page - 1) & !(page - 1); // a page fully inside buf
    let mut f = std::fs::File::open("/proc/self/pagemap").expect("open pagemap");
    let mut entry = |v: u64| {
        let mut b = [0u8; 8];
        f.seek(SeekFrom::Start(pagemap::entry_offset(v, page).unwrap()))
            .unwrap();
        f.read_exact(&mut b).expect("read pagemap");
        pagemap::entry_from_bytes(b)
    };
    let (e1, e2) = (entry(base + 8), entry(base + 4000));
    let p1 = pagemap::physical_address(base + 8, e1, page);
    if matches!(p1, Err(PagemapError::PfnHidden { .. })) {
        panic!("pagemap hides frame numbers: this test needs root (CAP_SYS_ADMIN)");
    }
    let p1 = p1.expect("touched page is present");
    let p2 = pagemap::physical_address(base + 4000, e2, page).expect("same page");
    assert_eq!(p2 - p1, 4000 - 8);
    assert_eq!(p1 % page, 8);
    assert_eq!(buf[0], 0xA5);
}

#[test]
fn vq_pairs_set_command_bytes() {
    assert_eq!(vq_pairs_set_command(2), Ok([4, 0, 2, 0]));
    assert_eq!(vq_pairs_set_command(0x8000), Ok([4, 0, 0x00, 0x80]));
    assert_eq!(vq_pairs_set_command(0), Err(CtrlError::PairsOutOfRange(0)));
    assert_eq!(
        vq_pairs_set_command(0x8001),
        Err(CtrlError::PairsOutOfRange(0x8001))
    );
}
