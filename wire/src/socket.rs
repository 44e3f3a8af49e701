//! Kernel TCP peers in test namespaces: closing without losing data.

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::sys;

/// Wait until everything the kernel sent on `s` is acknowledged, FIN included (the send
/// queue, `SIOCOUTQ`, is empty), or `limit` passes. `Err(n)`: `n` bytes were still
/// unacknowledged at the limit. A failing ioctl counts as done (nothing left to wait for).
///
/// Why: a test peer that closes its last descriptor while its data is still unacknowledged
/// leaves an orphaned socket, and Linux gives orphans only `tcp_orphan_retries` worth of
/// retransmission time before it aborts them silently (TCPAbortOnTimeout, no RST). Under loss
/// that killed the kernel→us direction of live transfers (docs/netstack.md, stall report).
/// A real application that wants its data delivered waits the same way (or lingers).
pub fn wait_until_acked(s: &TcpStream, limit: Duration) -> Result<(), usize> {
    let end = Instant::now() + limit;
    loop {
        let outq = sys::tcp_send_queue(s.as_fd()).unwrap_or(0);
        if outq == 0 {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(outq);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
