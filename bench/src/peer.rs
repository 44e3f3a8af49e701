//! The Linux kernel peer: threads of this process inside the rig's namespace, serving the
//! connections the host stack opens to 192.0.2.1. Sinks read everything with epoll and count
//! it; a source writes a fixed chunk as fast as the kernel takes it. Both stop on a flag, so
//! they never outlive a measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chimney_wire::NetNs;

use crate::error::{BenchError, Result};

pub struct Peer {
    stop: Arc<AtomicBool>,
    /// Bytes read (sink) or written (source) so far.
    pub bytes: Arc<AtomicU64>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    /// A source writes only once this is set (so nothing piles up in the host stack before
    /// the connection is offloaded).
    go: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Read and discard everything from `conns` connections.
    Sink { conns: usize },
    /// Write `chunk` bytes per write() to one connection (TCP_NODELAY if `nodelay`).
    Source { chunk: usize, nodelay: bool },
}

/// Let the namespace's listen queue hold many SYNs (the scaling and bulk runs open
/// thousands of connections at once).
pub fn tune_namespace(ns: &NetNs) -> Result<()> {
    let out = ns
        .command("sysctl")
        .args([
            "-q",
            "-w",
            "net.core.somaxconn=65535",
            "net.ipv4.tcp_max_syn_backlog=65535",
        ])
        .output()
        .map_err(|e| BenchError::io("sysctl in the namespace", e))?;
    if !out.status.success() {
        return Err(BenchError::Device(format!(
            "sysctl in the namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // SAFETY: setrlimit with a struct we own; raising our own descriptor limit for the
    // peer's sockets (10k connections).
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < 65536 {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    Ok(())
}

impl Peer {
    pub fn start(ns: &NetNs, addr: SocketAddr, mode: Mode) -> Result<Peer> {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, b, a) = (stop.clone(), bytes.clone(), accepted.clone());
        let thread = ns.spawn("bench-peer", move || -> std::io::Result<()> {
            let l = TcpListener::bind(addr)?;
            // SAFETY: listen(2) on the listener's own descriptor, to raise std's backlog
            // of 128.
            unsafe { libc::listen(l.as_raw_fd(), 65535) };
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            match mode {
                Mode::Sink { conns } => sink(&l, conns, &s, &b, &a),
                Mode::Source { chunk, nodelay } => {
                    let Some(c) = accept_one(&l, &s)? else {
                        return Ok(());
                    };
                    a.fetch_add(1, Ordering::Relaxed);
                    c.set_nodelay(nodelay)?;
                    while !g.load(Ordering::Relaxed) {
                        if s.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    source(c, chunk, &s, &b)
                }
            }
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| BenchError::Device("peer did not start listening".into()))?;
        Ok(Peer {
            stop,
            bytes,
            accepted,
            go,
            thread: Some(thread),
        })
    }

    /// Let a source start writing.
    pub fn go(&self) {
        self.go.store(true, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stop and join; an I/O error of the peer is returned (a reset after the rig went
    /// away is not an error: the measurement is over by then).
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BenchError::io("peer", e)),
                Err(_) => return Err(BenchError::Device("peer thread panicked".into())),
            }
        }
        Ok(self.bytes())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_one(l: &TcpListener, stop: &AtomicBool) -> std::io::Result<Option<TcpStream>> {
    loop {
        match l.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false)?;
                return Ok(Some(c));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

fn source(
    mut c: TcpStream,
    chunk: usize,
    stop: &AtomicBool,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    c.set_write_timeout(Some(Duration::from_millis(200)))?;
    let buf = vec![0x5a_u8; chunk];
    while !stop.load(Ordering::Relaxed) {
        match c.write(&buf) {
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            // The rig tore the connection down first: the measurement is over.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Accept up to `conns` connections and read all of them with one level-triggered epoll.
fn sink(
    l: &TcpListener,
    conns: usize,
    stop: &AtomicBool,
    bytes: &AtomicU64,
    accepted: &AtomicU64,
) -> std::io::Result<()> {
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let add = |fd: i32, token: u64| -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ep and fd are live descriptors; ev is ours.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    add(l.as_raw_fd(), u64::MAX)?;
    let mut socks: Vec<Option<TcpStream>> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let result = (|| -> std::io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: events has room for its length; ep is live.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token == u64::MAX {
                    while socks.len() < conns {
                        match l.accept() {
                            Ok((c, _)) => {
                                c.set_nonblocking(true)?;
                                add(c.as_raw_fd(), socks.len() as u64)?;
                                socks.push(Some(c));
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    continue;
                }
                let Some(slot) = socks.get_mut(token as usize) else {
                    continue;
                };
                let Some(c) = slot.as_mut() else { continue };
                match c.read(&mut buf) {
                    Ok(0) => *slot = None,
                    Ok(k) => {
                        bytes.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => {}
                    // Reset: dropping the socket closes and deregisters it.
                    Err(_) => *slot = None,
                }
            }
        }
        Ok(())
    })();
    // SAFETY: closing the epoll descriptor we created.
    unsafe { libc::close(ep) };
    result
}
