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

/// Block SIGINT and SIGTERM in the calling thread (and the threads it spawns afterwards), so
/// that [`wait_termination_signal`] can take them synchronously. Call first thing in `main`.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set()?;
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait until SIGINT or SIGTERM arrives (they must be blocked); returns the signal number.
pub fn wait_termination_signal() -> io::Result<i32> {
    let set = termination_set()?;
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `sig` a valid place for the result.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

fn termination_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` points to a sigset_t we own; the signal numbers are valid.
    let ok = unsafe {
        libc::sigemptyset(&mut set) == 0
            && libc::sigaddset(&mut set, libc::SIGINT) == 0
            && libc::sigaddset(&mut set, libc::SIGTERM) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}
