//! The vhost-user relay between the frontend (QEMU, or the harness) and the daemon of the
//! published rust-vmm crates (DESIGN.md, the SET_VRING_ENABLE fact).
//!
//! QEMU (7.2 and later) sends `SET_VRING_ENABLE` with NEED_REPLY many times before its first
//! `SET_FEATURES`; vhost-user-backend 0.24 refuses it until features are acked, and the refusal
//! ends the connection. The relay forwards every message with its file descriptors, except:
//! - a `SET_VRING_ENABLE` before the first `SET_FEATURES` is absorbed: its state is remembered
//!   per vring, and when a reply is requested the relay answers success itself
//!   (flags VERSION|REPLY, 8-byte payload 0);
//! - right after forwarding the first `SET_FEATURES` (when it acks PROTOCOL_FEATURES) the relay
//!   sends the daemon the last absorbed state of each vring, without NEED_REPLY, so the daemon
//!   sends no reply that could reach the frontend.
//!
//! Messages are framed by the vhost-user header (request, flags, size; little-endian u32s).

use crate::sys::{recv_with_fds, MAX_FDS};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const HDR_LEN: usize = 12;
/// Largest payload accepted (vhost's MAX_MSG_SIZE is 4 KiB; GPU messages may be larger).
pub const MAX_PAYLOAD: usize = 64 * 1024;
pub const REQ_SET_FEATURES: u32 = 2;
pub const REQ_SET_VRING_ENABLE: u32 = 18;
pub const FLAG_VERSION: u32 = 0x1;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// One vhost-user message with the descriptors that came with it.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    pub fn new(request: u32, flags: u32, payload: Vec<u8>) -> Message {
        Message {
            request,
            flags,
            payload,
            fds: Vec::new(),
        }
    }

    fn header(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        // Payload length is bounded by MAX_PAYLOAD when read, and by callers when built.
        h[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        let b = self.payload.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64_at(&self, off: usize) -> Option<u64> {
        let b = self.payload.get(off..off + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// Read one whole message. `Ok(None)` on a clean end of stream between messages.
pub fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HDR_LEN {
        let n = recv_with_fds(sock, &mut hdr[got..], &mut fds)?;
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a vhost-user header",
            ));
        }
        got += n;
    }
    let u32_at = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    let (request, flags, size) = (u32_at(0), u32_at(4), u32_at(8) as usize);
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message {request}: payload size {size} > {MAX_PAYLOAD}"),
        ));
    }
    let mut payload = vec![0u8; size];
    let mut got = 0;
    while got < size {
        let n = recv_with_fds(sock, &mut payload[got..], &mut fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a vhost-user payload",
            ));
        }
        got += n;
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} file descriptors on one message", fds.len()),
        ));
    }
    Ok(Some(Message {
        request,
        flags,
        payload,
        fds,
    }))
}

/// Write one message with its descriptors (sent with the first bytes).
pub fn write_message(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let hdr = msg.header();
    let raw: Vec<RawFd> = msg.fds.iter().map(|f| f.as_raw_fd()).collect();
    let total = HDR_LEN + msg.payload.len();
    let sent = loop {
        match sock.send_with_fds(&[&hdr[..], &msg.payload[..]], &raw) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    if sent < total {
        // The descriptors went with the first part; the rest is plain bytes.
        let mut rest = Vec::with_capacity(total - sent);
        rest.extend_from_slice(&hdr[sent.min(HDR_LEN)..]);
        rest.extend_from_slice(&msg.payload[sent.saturating_sub(HDR_LEN)..]);
        (&*sock).write_all(&rest)?;
    }
    Ok(())
}

/// The relay's decisions on the frontend → daemon direction, without I/O (testable).
#[derive(Debug, Default)]
pub struct EnableGate {
    features_seen: bool,
    /// Last absorbed enable state per vring index.
    absorbed: BTreeMap<u32, u32>,
}

/// What to do with one frontend message.
#[derive(Debug)]
pub enum GateAction {
    /// Forward to the daemon unchanged.
    Forward(Message),
    /// Forward, then send these messages (replayed enables) to the daemon.
    ForwardThen(Message, Vec<Message>),
    /// Absorbed; answer the frontend with this reply if one was asked for.
    Absorb { reply: Option<Message> },
}

impl EnableGate {
    pub fn on_frontend_message(&mut self, msg: Message, num_queues: u32) -> GateAction {
        if self.features_seen {
            return GateAction::Forward(msg);
        }
        match msg.request {
            REQ_SET_VRING_ENABLE => {
                let (index, num) = (msg.u32_at(0), msg.u32_at(4));
                let ok = match (index, num) {
                    (Some(i), Some(n)) if i < num_queues && n <= 1 => {
                        self.absorbed.insert(i, n);
                        true
                    }
                    _ => {
                        tracing::warn!(?index, ?num, "early SET_VRING_ENABLE refused");
                        false
                    }
                };
                let reply = (msg.flags & FLAG_NEED_REPLY != 0).then(|| {
                    let status: u64 = if ok { 0 } else { 1 };
                    Message::new(
                        REQ_SET_VRING_ENABLE,
                        FLAG_VERSION | FLAG_REPLY,
                        status.to_le_bytes().to_vec(),
                    )
                });
                GateAction::Absorb { reply }
            }
            REQ_SET_FEATURES => {
                self.features_seen = true;
                let protocol = msg
                    .u64_at(0)
                    .is_some_and(|f| f & PROTOCOL_FEATURES_BIT != 0);
                let absorbed = std::mem::take(&mut self.absorbed);
                if !protocol {
                    // Without PROTOCOL_FEATURES the daemon enables every ring itself and
                    // would refuse SET_VRING_ENABLE.
                    return GateAction::Forward(msg);
                }
                let replay = absorbed
                    .into_iter()
                    .map(|(index, num)| {
                        let mut p = index.to_le_bytes().to_vec();
                        p.extend_from_slice(&num.to_le_bytes());
                        Message::new(REQ_SET_VRING_ENABLE, FLAG_VERSION, p)
                    })
                    .collect();
                GateAction::ForwardThen(msg, replay)
            }
            _ => GateAction::Forward(msg),
        }
    }
}

/// A running relay: two threads, one per direction.
pub struct Relay {
    frontend: UnixStream,
    daemon: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Start relaying between `frontend` and `daemon` for a device with `num_queues` vrings.
    pub fn spawn(frontend: UnixStream, daemon: UnixStream, num_queues: u32) -> io::Result<Relay> {
        let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
        let mut threads = Vec::new();

        // frontend → daemon
        {
            let from = frontend.try_clone()?;
            let to = daemon.try_clone()?;
            let reply_to = to_frontend.clone();
            threads.push(
                thread::Builder::new()
                    .name("relay-fe".into())
                    .spawn(move || {
                        let mut gate = EnableGate::default();
                        if let Err(e) = pump_frontend(&from, &to, &reply_to, &mut gate, num_queues)
                        {
                            tracing::debug!(error = %e, "relay frontend→daemon ended");
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    })?,
            );
        }
        // daemon → frontend
        {
            let from = daemon.try_clone()?;
            let to = to_frontend;
            threads.push(
                thread::Builder::new()
                    .name("relay-be".into())
                    .spawn(move || {
                        let res = (|| -> io::Result<()> {
                            while let Some(msg) = read_message(&from)? {
                                let sock = to.lock().unwrap_or_else(|p| p.into_inner());
                                write_message(&sock, &msg)?;
                            }
                            Ok(())
                        })();
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "relay daemon→frontend ended");
                        }
                        let sock = to.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = sock.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    })?,
            );
        }
        Ok(Relay {
            frontend,
            daemon,
            threads,
        })
    }

    /// Close both sides (the frontend sees a disconnect, the daemon too).
    pub fn shutdown(&self) {
        let _ = self.frontend.shutdown(Shutdown::Both);
        let _ = self.daemon.shutdown(Shutdown::Both);
    }

    /// Wait for both directions to end.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn pump_frontend(
    from: &UnixStream,
    to: &UnixStream,
    reply_to: &Mutex<UnixStream>,
    gate: &mut EnableGate,
    num_queues: u32,
) -> io::Result<()> {
    while let Some(msg) = read_message(from)? {
        match gate.on_frontend_message(msg, num_queues) {
            GateAction::Forward(m) => write_message(to, &m)?,
            GateAction::ForwardThen(m, replay) => {
                write_message(to, &m)?;
                for r in &replay {
                    tracing::debug!(payload = ?r.payload, "replaying absorbed SET_VRING_ENABLE");
                    write_message(to, r)?;
                }
            }
            GateAction::Absorb { reply } => {
                if let Some(r) = reply {
                    let sock = reply_to.lock().unwrap_or_else(|p| p.into_inner());
                    write_message(&sock, &r)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enable(index: u32, num: u32, flags: u32) -> Message {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        Message::new(REQ_SET_VRING_ENABLE, flags, p)
    }

    #[test]
    fn early_enable_is_absorbed_with_success_reply_and_replayed_after_features() {
        let mut g = EnableGate::default();
        for (i, n) in [(0, 1), (1, 1), (2, 0), (0, 0), (0, 1)] {
            match g.on_frontend_message(enable(i, n, FLAG_VERSION | FLAG_NEED_REPLY), 4) {
                GateAction::Absorb { reply: Some(r) } => {
                    assert_eq!(r.flags, FLAG_VERSION | FLAG_REPLY);
                    assert_eq!(r.payload, 0u64.to_le_bytes());
                }
                other => panic!("expected absorb with reply, got {other:?}"),
            }
        }
        let feats = (1u64 << 32 | 1 << 30).to_le_bytes().to_vec();
        match g.on_frontend_message(Message::new(REQ_SET_FEATURES, FLAG_VERSION, feats), 4) {
            GateAction::ForwardThen(m, replay) => {
                assert_eq!(m.request, REQ_SET_FEATURES);
                let states: Vec<(u32, u32, u32)> = replay
                    .iter()
                    .map(|r| (r.u32_at(0).unwrap(), r.u32_at(4).unwrap(), r.flags))
                    .collect();
                assert_eq!(
                    states,
                    vec![
                        (0, 1, FLAG_VERSION),
                        (1, 1, FLAG_VERSION),
                        (2, 0, FLAG_VERSION)
                    ],
                    "last state per vring, no NEED_REPLY"
                );
            }
            other => panic!("expected forward+replay, got {other:?}"),
        }
        // After features everything is forwarded.
        assert!(matches!(
            g.on_frontend_message(enable(3, 1, FLAG_VERSION | FLAG_NEED_REPLY), 4),
            GateAction::Forward(_)
        ));
    }

    #[test]
    fn early_enable_for_unknown_vring_gets_failure_reply_and_no_replay() {
        let mut g = EnableGate::default();
        match g.on_frontend_message(enable(9, 1, FLAG_VERSION | FLAG_NEED_REPLY), 4) {
            GateAction::Absorb { reply: Some(r) } => assert_eq!(r.payload, 1u64.to_le_bytes()),
            other => panic!("expected failure reply, got {other:?}"),
        }
        let feats = (1u64 << 30).to_le_bytes().to_vec();
        match g.on_frontend_message(Message::new(REQ_SET_FEATURES, FLAG_VERSION, feats), 4) {
            GateAction::ForwardThen(_, replay) => assert!(replay.is_empty()),
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn truncated_early_enable_is_refused_not_panicking() {
        let mut g = EnableGate::default();
        let m = Message::new(
            REQ_SET_VRING_ENABLE,
            FLAG_VERSION | FLAG_NEED_REPLY,
            vec![1, 2],
        );
        match g.on_frontend_message(m, 4) {
            GateAction::Absorb { reply: Some(r) } => assert_eq!(r.payload, 1u64.to_le_bytes()),
            other => panic!("expected failure reply, got {other:?}"),
        }
    }
}
