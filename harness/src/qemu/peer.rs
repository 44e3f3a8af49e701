//! The peer service: the Linux TCP peer of a QEMU run, inside the namespace with the TAP,
//! controlled by the guest agent over a plain (never offloaded) TCP connection that the
//! agent opens through its own host stack on queue pair 0.
//!
//! Why a control connection: the agent in the guest decides when the peer writes, closes
//! or resets (scenario `peer` and `receive` steps) and needs the peer's view (bytes read and
//! their SHA-256) to judge a step. A TCP connection through the device's ordinary NIC path
//! is the simplest real channel between guest and namespace.
//!
//! Protocol: one request line, one answer line (`OK`, `RESULT <bytes> <sha256>`, or
//! `ERR <text>`). `<port>` names a data connection:
//!
//! | request | effect |
//! | --- | --- |
//! | `LISTEN <port> <4\|6> <seed>` | listen on the peer address, accept one connection, read it until EOF; its writes use the seeded stream `seed` ([`crate::scenario::host::stream_bytes`]) |
//! | `CONNECT <port> <4\|6> <seed>` | the same, but connect to the guest's address (the guest listens: passive open) |
//! | `FORGET <port>` | drop the connection (RST if still open) and free the port |
//! | `WRITE <port> <n>` | write the next `n` bytes of that stream |
//! | `CLOSE <port>` | FIN after the pending writes |
//! | `RESET <port>` | abortive close now (SO_LINGER 0: RST) |
//! | `STOP <port>` / `RESUME <port>` | stop / resume reading |
//! | `RESULT <port> <seconds>` | wait (bounded) until the connection ended; bytes read and SHA-256, or why it failed |
//!
//! Every input line is untrusted: an unknown or malformed request gets `ERR` naming it, and
//! the service keeps serving.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chimney_wire::{NetNs, GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6};
use sha2::{Digest, Sha256};

use crate::scenario::host::{hex, stream_bytes};

/// Port of the control connection on the peer's IPv4 address.
pub const CONTROL_PORT: u16 = 7000;

/// Longest a data connection may stay without progress or command.
const IDLE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
enum Cmd {
    Write(u64),
    Close,
    Reset,
    Stop,
    Resume,
}

type ConnResult = Result<(u64, [u8; 32]), String>;

struct DataConn {
    cmd: mpsc::Sender<Cmd>,
    done: Option<JoinHandle<ConnResult>>,
    /// Set by FORGET: a connection still being accepted or made gives up.
    forgotten: Arc<AtomicBool>,
}

impl Drop for DataConn {
    fn drop(&mut self) {
        self.forgotten.store(true, Ordering::Relaxed);
    }
}

/// The running service; stops (and ends its connections) on drop.
pub struct PeerService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Bytes read on all data connections so far (progress, e.g. for fault injection).
    pub bytes_read: Arc<AtomicU64>,
    /// One line per request and answer, for the run's log.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl PeerService {
    /// Listen on `PEER_IPV4:CONTROL_PORT` inside `ns` and serve control connections one
    /// after the other until dropped.
    pub fn start(ns: &NetNs) -> Result<PeerService, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes_read = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (s2, b2, l2) = (stop.clone(), bytes_read.clone(), log.clone());
        // A thread inside the namespace: every socket it (and threads it starts) opens
        // lives there.
        let thread = ns
            .spawn("peer-service", move || {
                let l = match TcpListener::bind(SocketAddr::new(PEER_IPV4.into(), CONTROL_PORT)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind control port: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                serve_control(l, &s2, &b2, &l2);
            })
            .map_err(|e| format!("peer service thread: {e}"))?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "peer service did not start".to_string())??;
        Ok(PeerService {
            stop,
            thread: Some(thread),
            bytes_read,
            log,
        })
    }
}

impl Drop for PeerService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn note(log: &Mutex<Vec<String>>, line: String) {
    tracing::info!(target: "peer", "{line}");
    log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
}

fn serve_control(
    l: TcpListener,
    stop: &AtomicBool,
    bytes: &Arc<AtomicU64>,
    log: &Mutex<Vec<String>>,
) {
    if l.set_nonblocking(true).is_err() {
        return;
    }
    let mut conns: HashMap<u16, DataConn> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, from)) => {
                note(log, format!("control connection from {from}"));
                if let Err(e) = serve_one(s, stop, bytes, log, &mut conns) {
                    note(log, format!("control connection ended: {e}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                note(log, format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Dropping the senders ends the data threads.
    conns.clear();
}

fn serve_one(
    s: TcpStream,
    stop: &AtomicBool,
    bytes: &Arc<AtomicU64>,
    log: &Mutex<Vec<String>>,
    conns: &mut HashMap<u16, DataConn>,
) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        }
        if !line.ends_with('\n') {
            continue;
        }
        let req = line.trim().to_string();
        line.clear();
        let answer = handle(&req, bytes, conns).unwrap_or_else(|e| format!("ERR {e}"));
        note(log, format!("> {req}  < {answer}"));
        w.write_all(format!("{answer}\n").as_bytes())
            .map_err(|e| e.to_string())?;
    }
}

fn handle(
    req: &str,
    bytes: &Arc<AtomicU64>,
    conns: &mut HashMap<u16, DataConn>,
) -> Result<String, String> {
    let w: Vec<&str> = req.split_whitespace().collect();
    let port = |i: usize| -> Result<u16, String> {
        w.get(i)
            .ok_or("missing <port>")?
            .parse()
            .map_err(|_| format!("<port> `{}` is not a port number", w[i]))
    };
    let num = |i: usize, name: &str| -> Result<u64, String> {
        w.get(i)
            .ok_or(format!("missing <{name}>"))?
            .parse()
            .map_err(|_| format!("<{name}> `{}` is not a number", w[i]))
    };
    let send = |conns: &HashMap<u16, DataConn>, p: u16, c: Cmd| -> Result<String, String> {
        conns
            .get(&p)
            .ok_or(format!("no connection on port {p} (LISTEN first)"))?
            .cmd
            .send(c)
            .map_err(|_| format!("the connection on port {p} has already ended"))?;
        Ok("OK".into())
    };
    match w.first().copied() {
        Some(verb @ ("LISTEN" | "CONNECT")) => {
            let p = port(1)?;
            let v6 = match w.get(2).copied() {
                Some("4") => false,
                Some("6") => true,
                other => return Err(format!("family `{}` is not 4 or 6", other.unwrap_or(""))),
            };
            let seed = num(3, "seed")?;
            if conns.contains_key(&p) {
                return Err(format!("port {p} is already in use"));
            }
            let (tx, rx) = mpsc::channel();
            let b = bytes.clone();
            let forgotten = Arc::new(AtomicBool::new(false));
            let f2 = forgotten.clone();
            let stream: Box<dyn FnOnce() -> Result<TcpStream, String> + Send> = if verb == "LISTEN"
            {
                let ip: IpAddr = if v6 {
                    PEER_IPV6.into()
                } else {
                    PEER_IPV4.into()
                };
                let l = TcpListener::bind(SocketAddr::new(ip, p))
                    .map_err(|e| format!("bind {ip}:{p}: {e}"))?;
                Box::new(move || accept(&l, &f2))
            } else {
                let ip: IpAddr = if v6 {
                    GUEST_IPV6.into()
                } else {
                    GUEST_IPV4.into()
                };
                Box::new(move || connect(SocketAddr::new(ip, p), &f2))
            };
            let done = std::thread::Builder::new()
                .name(format!("peer-{p}"))
                .spawn(move || stream().and_then(|s| serve_data(s, rx, seed, &b)))
                .map_err(|e| format!("thread: {e}"))?;
            conns.insert(
                p,
                DataConn {
                    cmd: tx,
                    done: Some(done),
                    forgotten,
                },
            );
            Ok("OK".into())
        }
        Some("FORGET") => {
            let p = port(1)?;
            conns.remove(&p);
            Ok("OK".into())
        }
        Some("WRITE") => send(conns, port(1)?, Cmd::Write(num(2, "n")?)),
        Some("CLOSE") => send(conns, port(1)?, Cmd::Close),
        Some("RESET") => send(conns, port(1)?, Cmd::Reset),
        Some("STOP") => send(conns, port(1)?, Cmd::Stop),
        Some("RESUME") => send(conns, port(1)?, Cmd::Resume),
        Some("RESULT") => {
            let p = port(1)?;
            let secs = num(2, "seconds")?.min(600);
            let c = conns
                .get_mut(&p)
                .ok_or(format!("no connection on port {p}"))?;
            let limit = Instant::now() + Duration::from_secs(secs);
            let done = c.done.as_ref().ok_or("result already taken")?;
            while !done.is_finished() {
                if Instant::now() > limit {
                    return Err(format!(
                        "the connection on port {p} has not ended after {secs} s"
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let r = c
                .done
                .take()
                .ok_or("result already taken")?
                .join()
                .map_err(|_| "peer thread panicked".to_string())?;
            conns.remove(&p);
            match r {
                Ok((n, sha)) => Ok(format!("RESULT {n} {}", hex(&sha))),
                Err(e) => Err(e),
            }
        }
        Some(other) => Err(format!("unknown request `{other}`")),
        None => Err("empty request".into()),
    }
}

fn accept(l: &TcpListener, forgotten: &AtomicBool) -> Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let limit = Instant::now() + IDLE_LIMIT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if forgotten.load(Ordering::Relaxed) {
                    return Err("forgotten before a connection arrived".into());
                }
                if Instant::now() > limit {
                    return Err("no connection arrived".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Connect to the guest (passive open on its side), retrying while its host stack gets
/// ready.
fn connect(to: SocketAddr, forgotten: &AtomicBool) -> Result<TcpStream, String> {
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if forgotten.load(Ordering::Relaxed) || Instant::now() > limit {
                    return Err(format!("connect to {to}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Read until EOF (unless stopped), write the seeded stream when told, close or reset when
/// told. The sender being dropped ends it.
fn serve_data(s: TcpStream, cmds: mpsc::Receiver<Cmd>, seed: u64, total: &AtomicU64) -> ConnResult {
    use std::sync::mpsc::TryRecvError;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (mut h, mut n) = (Sha256::new(), 0u64);
    let (mut reading, mut eof) = (true, false);
    let (mut close_after, mut closed) = (false, false);
    let (mut offset, mut to_write) = (0u64, 0u64);
    let (mut out, mut out_at) = (Vec::new(), 0usize);
    let mut buf = vec![0u8; 64 << 10];
    let mut idle = Instant::now();
    loop {
        let mut progress = false;
        loop {
            match cmds.try_recv() {
                Ok(c) => {
                    progress = true;
                    match c {
                        Cmd::Write(k) => to_write += k,
                        Cmd::Close => close_after = true,
                        Cmd::Reset => {
                            reset_on_drop(&s)?;
                            return Ok((n, h.finalize().into()));
                        }
                        Cmd::Stop => reading = false,
                        Cmd::Resume => reading = true,
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(format!("the service stopped after {n} bytes"))
                }
            }
        }
        if out_at == out.len() && to_write > 0 {
            let k = to_write.min(64 << 10) as usize;
            out.resize(k, 0);
            stream_bytes(seed, offset, &mut out);
            offset += k as u64;
            out_at = 0;
            to_write -= k as u64;
        }
        if out_at < out.len() {
            match (&s).write(&out[out_at..]) {
                Ok(k) => {
                    out_at += k;
                    progress |= k > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        let written = out_at == out.len() && to_write == 0;
        if close_after && !closed && written {
            s.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            closed = true;
        }
        if reading && !eof {
            match (&s).read(&mut buf) {
                Ok(0) => eof = true,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k as u64;
                    total.fetch_add(k as u64, Ordering::Relaxed);
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("read after {n} bytes: {e}")),
            }
        }
        if eof && written {
            return Ok((n, h.finalize().into()));
        }
        if progress {
            idle = Instant::now();
        } else if idle.elapsed() > IDLE_LIMIT {
            return Err(format!("idle for {IDLE_LIMIT:?} after {n} bytes"));
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// SO_LINGER {on, 0}: closing the socket sends RST instead of FIN.
fn reset_on_drop(s: &TcpStream) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("SO_LINGER: {}", std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(req: &str) -> Result<String, String> {
        handle(req, &Arc::new(AtomicU64::new(0)), &mut HashMap::new())
    }

    #[test]
    fn malformed_requests_get_errors_naming_the_field() {
        let cases = [
            ("", "empty request"),
            ("HELLO 1", "unknown request `HELLO`"),
            ("LISTEN", "missing <port>"),
            ("LISTEN 70000 4 1", "<port> `70000` is not a port number"),
            ("LISTEN 5000 5 1", "family `5` is not 4 or 6"),
            ("LISTEN 5000 4", "missing <seed>"),
            ("LISTEN 5000 4 x", "<seed> `x` is not a number"),
            ("WRITE 5000", "missing <n>"),
            ("WRITE 5000 -1", "<n> `-1` is not a number"),
            ("WRITE 5000 10", "no connection on port 5000 (LISTEN first)"),
            ("RESET 5000", "no connection on port 5000 (LISTEN first)"),
            ("RESULT 5000 1", "no connection on port 5000"),
        ];
        for (req, want) in cases {
            assert_eq!(answer(req), Err(want.to_string()), "request `{req}`");
        }
    }
}
