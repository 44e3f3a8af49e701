//! The device's only `unsafe`: receiving file descriptors (SCM_RIGHTS) on a unix stream.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most descriptors one vhost-user message carries (vhost's MAX_ATTACHED_FD_ENTRIES).
pub const MAX_FDS: usize = 32;

/// `recvmsg` into `buf`; received descriptors are appended to `fds` as owned fds.
/// Returns the byte count (0 = end of stream).
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    loop {
        // SAFETY: the iovec points at `buf`, which we borrow mutably for the whole call, so the
        // kernel may write any bytes into it; `raw` has room for MAX_FDS descriptors.
        let res = unsafe { sock.recv_with_fds(&mut iov, &mut raw) };
        match res {
            Ok((n, nfds)) => {
                for fd in &raw[..nfds] {
                    // SAFETY: recvmsg just installed these descriptors in our table; nothing
                    // else owns them, so wrapping each once in an OwnedFd is sound.
                    fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                return Ok(n);
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
}
