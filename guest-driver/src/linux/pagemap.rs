//! `/proc/self/pagemap` entries (Linux `Documentation/admin-guide/mm/pagemap.rst`): one
//! little-endian u64 per virtual page. Bits 0–54 page frame number (zero unless the reader
//! has CAP_SYS_ADMIN), bit 61 file-page/shared-anon, bit 62 swapped, bit 63 present.

/// Size of one entry in bytes.
pub const ENTRY_LEN: usize = 8;
const PFN_MASK: u64 = (1 << 55) - 1;
const SWAPPED: u64 = 1 << 62;
const PRESENT: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PagemapError {
    #[error("page at {vaddr:#x} is not present (lock the memory first)")]
    NotPresent { vaddr: u64 },
    #[error("page at {vaddr:#x} is swapped out (lock the memory first)")]
    Swapped { vaddr: u64 },
    #[error("page frame number of {vaddr:#x} is hidden (reading pagemap needs CAP_SYS_ADMIN)")]
    PfnHidden { vaddr: u64 },
    #[error("page size {0} is not a power of two")]
    PageSize(u64),
    #[error("physical address of {vaddr:#x} overflows 64 bits")]
    Overflow { vaddr: u64 },
}

/// Byte offset of `vaddr`'s entry in the pagemap file.
pub fn entry_offset(vaddr: u64, page_size: u64) -> Result<u64, PagemapError> {
    if !page_size.is_power_of_two() {
        return Err(PagemapError::PageSize(page_size));
    }
    Ok(vaddr / page_size * ENTRY_LEN as u64)
}

/// The physical (bus) address of `vaddr` from its pagemap `entry`.
pub fn physical_address(vaddr: u64, entry: u64, page_size: u64) -> Result<u64, PagemapError> {
    if !page_size.is_power_of_two() {
        return Err(PagemapError::PageSize(page_size));
    }
    if entry & PRESENT == 0 {
        return Err(if entry & SWAPPED != 0 {
            PagemapError::Swapped { vaddr }
        } else {
            PagemapError::NotPresent { vaddr }
        });
    }
    let pfn = entry & PFN_MASK;
    if pfn == 0 {
        return Err(PagemapError::PfnHidden { vaddr });
    }
    pfn.checked_mul(page_size)
        .and_then(|base| base.checked_add(vaddr & (page_size - 1)))
        .ok_or(PagemapError::Overflow { vaddr })
}

/// Decode one entry from the 8 bytes read at [`entry_offset`].
pub fn entry_from_bytes(b: [u8; ENTRY_LEN]) -> u64 {
    u64::from_le_bytes(b)
}
