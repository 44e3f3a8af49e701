//! The DMA allocator of the Linux binding, without the system: DMA memory is a list of 2 MiB
//! huge pages, each physically contiguous but not adjacent to the others, so an allocation
//! must fit inside one page. A bump pointer (page, offset) hands out aligned pieces and never
//! gives the same bytes twice (the driver allocates once, at bring-up).

/// Where the next allocation may start: huge page index and offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub page: usize,
    pub offset: usize,
}

/// Place `len` bytes aligned to `align` (a power of two, at most the page size) in pages of
/// `page_len` bytes, `pages` of them, from `at` on. Returns (page, offset) of the piece and the
/// cursor after it, or `None` when it does not fit.
///
/// Pages start at bus addresses aligned to `page_len`, so an aligned offset is an aligned
/// address.
pub fn place(
    at: Cursor,
    pages: usize,
    page_len: usize,
    len: usize,
    align: usize,
) -> Option<(Cursor, Cursor)> {
    if !align.is_power_of_two() || align > page_len || len > page_len {
        return None;
    }
    let mut c = at;
    while c.page < pages {
        let start = c.offset.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(len)?;
        if end <= page_len {
            return Some((
                Cursor {
                    page: c.page,
                    offset: start,
                },
                Cursor {
                    page: c.page,
                    offset: end,
                },
            ));
        }
        c = Cursor {
            page: c.page + 1,
            offset: 0,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 2 << 20;

    #[test]
    fn pieces_are_aligned_and_do_not_overlap() {
        let mut at = Cursor::default();
        let mut seen: alloc::vec::Vec<(usize, usize, usize)> = alloc::vec::Vec::new();
        for (len, align) in [
            (4096, 4096),
            (10, 2),
            (6 + 2 * 256, 2),
            (1 << 20, 64),
            (16, 16),
        ] {
            let (piece, next) = place(at, 4, P, len, align).expect("fits");
            assert_eq!(
                piece.offset % align,
                0,
                "offset {} not aligned to {align}",
                piece.offset
            );
            for (pg, s, l) in &seen {
                assert!(
                    *pg != piece.page || piece.offset >= s + l || piece.offset + len <= *s,
                    "piece {piece:?}+{len} overlaps ({pg}, {s}+{l})"
                );
            }
            seen.push((piece.page, piece.offset, len));
            at = next;
        }
    }

    #[test]
    fn a_piece_that_does_not_fit_the_rest_of_a_page_moves_to_the_next_page() {
        let at = Cursor {
            page: 0,
            offset: P - 100,
        };
        let (piece, next) = place(at, 2, P, 200, 8).expect("fits in page 1");
        assert_eq!(piece, Cursor { page: 1, offset: 0 });
        assert_eq!(
            next,
            Cursor {
                page: 1,
                offset: 200
            }
        );
    }

    #[test]
    fn too_large_bad_alignment_and_exhaustion_are_refused() {
        let at = Cursor::default();
        assert_eq!(place(at, 4, P, P + 1, 8), None, "larger than a page");
        assert_eq!(place(at, 4, P, 16, 3), None, "alignment not a power of two");
        assert_eq!(
            place(at, 4, P, 16, 2 * P),
            None,
            "alignment above the page size"
        );
        let full = Cursor { page: 1, offset: P };
        assert_eq!(place(full, 2, P, 1, 1), None, "all pages used");
        assert_eq!(place(at, 0, P, 1, 1), None, "no pages");
        let near_max = Cursor {
            page: 0,
            offset: usize::MAX - 2,
        };
        assert_eq!(place(near_max, 1, P, 1, 8), None, "offset overflow");
    }
}
