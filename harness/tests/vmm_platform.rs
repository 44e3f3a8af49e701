//! The VMM's guest RAM and doorbells, without a device: memfd sharing (what the device
//! relies on after SET_MEM_TABLE), allocation rules, and errors instead of panics.

use std::time::Duration;

use chimney_harness::{VmmPlatform, GUEST_RAM_BASE};
use chimney_miniport::{Platform, PlatformError, WaitOutcome};
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion, MmapRegion, VolatileMemory};

#[test]
fn guest_ram_is_a_shared_memfd_a_second_mapping_sees_driver_writes() {
    let p = VmmPlatform::new(1 << 20, 2).expect("platform");
    let r = p.alloc_dma(4096, 4096).expect("alloc");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
    p.write(r.addr, &data).expect("write");

    // Map the same memfd again, as the device process does with the fd it receives.
    let region = p.memory().iter().next().expect("one region");
    let fo = region.file_offset().expect("file-backed region");
    let file = fo.file().try_clone().expect("dup memfd");
    let again = MmapRegion::<()>::from_file(FileOffset::new(file, 0), 1 << 20).expect("mmap");
    let off = (r.addr - GUEST_RAM_BASE) as usize;
    let mut seen = vec![0u8; 4096];
    again
        .get_slice(off, 4096)
        .expect("slice")
        .copy_to(&mut seen[..]);
    assert_eq!(
        seen, data,
        "second mapping differs from what the driver wrote"
    );
}

#[test]
fn allocations_are_aligned_disjoint_and_run_out_with_an_error() {
    let p = VmmPlatform::new(64 << 10, 1).expect("platform");
    let a = p.alloc_dma(100, 64).expect("a");
    let b = p.alloc_dma(10, 4096).expect("b");
    assert_eq!(a.addr % 64, 0);
    assert_eq!(b.addr % 4096, 0);
    assert!(b.addr >= a.addr + 100, "overlap: {a:?} {b:?}");
    assert_eq!(
        p.alloc_dma(1 << 20, 8),
        Err(PlatformError::OutOfMemory {
            wanted: 1 << 20,
            align: 8
        })
    );
}

#[test]
fn access_outside_guest_ram_is_an_error_not_a_panic() {
    let p = VmmPlatform::new(64 << 10, 1).expect("platform");
    let end = p.ram_end();
    let mut buf = [0u8; 8];
    assert_eq!(
        p.read(end - 4, &mut buf),
        Err(PlatformError::BadAddress {
            addr: end - 4,
            len: 8
        })
    );
    assert_eq!(
        p.write(0, &buf),
        Err(PlatformError::BadAddress { addr: 0, len: 8 })
    );
    assert_eq!(
        p.read_u16(end + 2),
        Err(PlatformError::BadAddress {
            addr: end + 2,
            len: 2
        })
    );
    assert_eq!(p.notify(5), Err(PlatformError::Notify { queue: 5 }));
}

#[test]
fn wait_returns_signalled_after_a_call_and_timed_out_without() {
    let p = VmmPlatform::new(64 << 10, 2).expect("platform");
    assert_eq!(
        p.wait(1, Duration::from_millis(1)),
        Ok(WaitOutcome::TimedOut)
    );
    p.call_fd(1).expect("call fd").write(1).expect("signal");
    assert_eq!(
        p.wait(1, Duration::from_secs(5)),
        Ok(WaitOutcome::Signalled)
    );
    // The counter was drained: the next wait sees nothing.
    assert_eq!(
        p.wait(1, Duration::from_millis(1)),
        Ok(WaitOutcome::TimedOut)
    );
    // notify() reaches the kick fd.
    p.notify(0).expect("notify");
    assert_eq!(
        p.kick_fd(0).expect("kick fd").read().expect("kick count"),
        1
    );
}
