//! Sequence-number arithmetic modulo 2^32 (RFC 9293 §3.4).

#[inline]
pub fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
#[inline]
pub fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}
#[inline]
pub fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}
#[inline]
pub fn ge(a: u32, b: u32) -> bool {
    le(b, a)
}
/// Distance from `a` up to `b` (b − a), assuming b is not before a.
#[inline]
pub fn dist(a: u32, b: u32) -> u32 {
    b.wrapping_sub(a)
}
#[inline]
pub fn max(a: u32, b: u32) -> u32 {
    if lt(a, b) {
        b
    } else {
        a
    }
}
#[inline]
pub fn min(a: u32, b: u32) -> u32 {
    if lt(a, b) {
        a
    } else {
        b
    }
}
/// `lo <= x < hi` in sequence space.
#[inline]
pub fn in_range(x: u32, lo: u32, hi: u32) -> bool {
    le(lo, x) && lt(x, hi)
}
