//! The only module with `unsafe`: TUN/TAP ioctls, setns, poll.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Open `/dev/net/tun` and attach it to (or create) the TAP interface `name` in the calling
/// thread's network namespace. An empty `name` lets the kernel pick (`tap%d`).
/// Returns the fd and the interface name the kernel reports.
pub(crate) fn open_tap(name: &str, flags: libc::c_int) -> io::Result<(File, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name longer than IFNAMSIZ-1",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is; the fd is a
    // valid open /dev/net/tun descriptor owned by `file`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let actual: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok((file, String::from_utf8_lossy(&actual).into_owned()))
}

/// `TUNSETVNETHDRSZ`: the size of the virtio-net header in front of every frame.
pub(crate) fn set_vnet_hdr_size(fd: BorrowedFd<'_>, size: libc::c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which points to `size`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TUNSETOFFLOAD`: which offloads (TUN_F_*) the kernel may hand us in frames it sends.
pub(crate) fn set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no memory is touched.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD as _,
            flags as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Move the calling thread into the network namespace behind `ns_fd`.
pub(crate) fn setns_net(ns_fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads the fd number and flag; affects only the calling thread for
    // CLONE_NEWNET.
    let rc = unsafe { libc::setns(ns_fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait until `fd` is readable or `timeout_ms` passes (-1: forever). Returns true if readable.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd and we pass nfds = 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(rc > 0 && (pfd.revents & libc::POLLIN) != 0);
    }
}

/// Bytes in a TCP socket's send queue not yet acknowledged by the peer (unsent included,
/// FIN counted): `SIOCOUTQ`, which Linux spells `TIOCOUTQ` for sockets.
pub(crate) fn tcp_send_queue(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut outq: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer, which is valid and aligned;
    // the fd is borrowed, so it stays open for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut outq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(outq).unwrap_or(0))
}
