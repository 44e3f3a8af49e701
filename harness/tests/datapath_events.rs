//! Issue 4, "Must show" 3 (the peer-provoked events): on an offloaded connection the Linux
//! peer's FIN raises TcpIndicateDisconnect after the data before it was delivered (C-191),
//! its RST raises TcpIndicateAbort and fails outstanding sends with REQUEST_ABORTED (C-192);
//! each with the connection's handle and host context; after the terminate completed no
//! event names the connection (C-114). Needs root.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant as StdInstant};

use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::event::tcp_event;
use chimney_abi::{Event, NdisStatus};
use chimney_harness::control_session::ControlSession;
use chimney_harness::device_process::DeviceOptions;
use chimney_harness::host_stack::HostStack;
use chimney_harness::{TestBed, TestBedConfig, VmmConfig};
use chimney_miniport::data::{DataChannel, DataConfig};
use chimney_miniport::NicQueues;
use chimney_netstack::EngineConfig;
use chimney_wire::{GUEST_IPV4, GUEST_IPV6, PEER_IPV4};

const PORT: u16 = 5401;
const CONTEXT: u64 = 0x7000;

struct Rig {
    _bed: TestBed,
    stack: HostStack,
    session: ControlSession,
    data: DataChannel,
    platform: std::sync::Arc<chimney_harness::VmmPlatform>,
    /// TCP, path, neighbor handles of the offloaded connection.
    handles: [chimney_abi::DeviceHandle; 3],
}

fn rig() -> (Rig, std::net::TcpStream) {
    let cfg = TestBedConfig {
        device: DeviceOptions {
            queue_pairs: 3,
            ..DeviceOptions::default()
        },
        vmm: VmmConfig {
            ram_bytes: 64 << 20,
            queue_pairs: 3,
            event_idx: true,
        },
        ..TestBedConfig::default()
    };
    let mut bed = TestBed::start(&cfg).expect("namespace + device + VMM");
    let platform = bed.vmm.platform().clone();
    let rx = bed.vmm.create_queue(0, 256).expect("rx 0");
    let tx = bed.vmm.create_queue(1, 256).expect("tx 1");
    let nic = NicQueues::new(&*platform, rx, tx, 2048).expect("pair 0");
    let mac = chimney_device::DeviceConfig::default().mac;
    let stack = HostStack::new(
        platform.clone(),
        nic,
        EngineConfig::new(mac, Some(GUEST_IPV4), Some(GUEST_IPV6)),
    )
    .expect("host stack");
    let (session, _) = ControlSession::ready(&mut bed.vmm, 256).expect("control");
    let drx = bed.vmm.create_queue(4, 256).expect("rx 4");
    let dtx = bed.vmm.create_queue(5, 256).expect("tx 5");
    let data = DataChannel::new(&*platform, drx, dtx, DataConfig::default()).expect("data");
    let (tx_sock, rx_sock) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    bed.ns
        .spawn("events-peer", move || -> std::io::Result<()> {
            let l = TcpListener::bind(SocketAddr::new(PEER_IPV4.into(), PORT))?;
            let _ = ready_tx.send(());
            let (s, _) = l.accept()?;
            let _ = tx_sock.send(s);
            Ok(())
        })
        .expect("peer");
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listening");
    let mut r = Rig {
        _bed: bed,
        stack,
        session,
        data,
        platform,
        handles: [chimney_abi::DeviceHandle(0); 3],
    };
    let c = r
        .stack
        .engine
        .connect(r.stack.now(), SocketAddr::new(PEER_IPV4.into(), PORT), None)
        .expect("connect");
    let started = StdInstant::now();
    while r.stack.engine.state(c).ok() != Some(chimney_netstack::TcpConnectionState::Established) {
        r.stack.poll(Duration::from_millis(5)).expect("poll");
        assert!(started.elapsed() < Duration::from_secs(10), "no connection");
    }
    let sock = rx_sock
        .recv_timeout(Duration::from_secs(10))
        .expect("accepted");
    let (handles, _) = r
        .stack
        .offload(&mut r.session, c, CONTEXT)
        .expect("offload");
    r.handles = handles;
    (r, sock)
}

impl Rig {
    /// Data records and events until `done` says so (or 20 s pass: a failure).
    fn run_until(
        &mut self,
        mut done: impl FnMut(&[DataRecord], &[Event]) -> bool,
    ) -> (Vec<DataRecord>, Vec<Event>) {
        let mut recs = Vec::new();
        let mut evs = Vec::new();
        let started = StdInstant::now();
        while !done(&recs, &evs) {
            self.data.poll(&*self.platform).expect("data poll");
            while let Some(r) = self.data.next_record() {
                recs.push(r);
            }
            let p = self.session.platform_arc();
            self.session.channel.poll(&*p).expect("control poll");
            while let Some(e) = self.session.channel.next_event() {
                evs.push(e);
            }
            self.data
                .wait(&*self.platform, Duration::from_millis(10))
                .expect("wait");
            self.stack.poll(Duration::ZERO).expect("poll");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waited in vain; records {recs:?} events {evs:?}"
            );
        }
        (recs, evs)
    }

    fn terminate_and_check_silence(&mut self) {
        let [tcp, path, neighbor] = self.handles;
        let term = |h, st| chimney_abi::Block {
            state_type: st,
            next: None,
            dependent: None,
            host_context: 0,
            body: chimney_abi::TerminateBlock::Object {
                handle: h,
                return_delegated: true,
            },
        };
        let mut blocks = vec![
            term(neighbor, chimney_abi::OffloadStateType::Neighbor),
            term(path, chimney_abi::OffloadStateType::Ip4),
            term(tcp, chimney_abi::OffloadStateType::Tcp),
        ];
        blocks[0].dependent = Some(1);
        blocks[1].dependent = Some(2);
        let c = self
            .session
            .call(chimney_abi::RequestBody::Terminate(chimney_abi::Tree {
                blocks,
            }))
            .expect("terminate");
        assert_eq!(c.status, NdisStatus::SUCCESS);
        // Anything already queued came before the completion; drain it, then nothing more
        // may name the connection (C-114).
        let p = self.session.platform_arc();
        self.session.channel.poll(&*p).expect("poll");
        while self.session.channel.next_event().is_some() {}
        for _ in 0..20 {
            self.session.channel.poll(&*p).expect("poll");
            if let Some(e) = self.session.channel.next_event() {
                assert_ne!(e.handle, Some(tcp), "event after terminate: {e:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn peer_fin_raises_disconnect_after_the_data_before_it_c191() {
    let (mut r, mut sock) = rig();
    let tcp = r.handles[0];
    let msg = b"the last words before the FIN";
    sock.write_all(msg).expect("peer write");
    sock.shutdown(std::net::Shutdown::Write).expect("peer FIN");
    let (recs, evs) = r.run_until(|_, evs| !evs.is_empty());
    let got: Vec<u8> = recs
        .iter()
        .filter(|d| d.kind == DataRxKind::ReceiveIndicate)
        .flat_map(|d| d.data.clone())
        .collect();
    assert_eq!(got, msg, "data before the FIN, delivered before the event");
    assert_eq!(
        evs.iter()
            .map(|e| (e.handle, e.host_context, e.code))
            .collect::<Vec<_>>(),
        vec![(Some(tcp), CONTEXT + 2, tcp_event::DISCONNECT)]
    );
    r.terminate_and_check_silence();
    drop(sock);
}

#[test]
fn peer_rst_raises_abort_and_fails_outstanding_sends_c192() {
    let (mut r, sock) = rig();
    let tcp = r.handles[0];
    // More than the peer's receive window: the peer does not read, then resets, so the
    // last sends are still outstanding at the RST.
    const SENDS: u64 = 160;
    for i in 0..SENDS {
        let req = DataRequest::Send {
            handle: tcp,
            request_id: i,
            data: vec![0x42; 60_000],
        };
        loop {
            match r.data.submit(&*r.platform, &req) {
                Ok(()) => break,
                Err(chimney_miniport::data::DataError::NoFreeSlot(_)) => {
                    r.data.poll(&*r.platform).expect("poll");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("submit: {e}"),
            }
        }
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct on the peer socket's own descriptor;
    // linger 0 makes close() send an RST.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(sock);
    let sends = |recs: &[DataRecord]| {
        recs.iter()
            .filter(|d| d.kind == DataRxKind::SendComplete)
            .count() as u64
    };
    let (recs, evs) = r.run_until(|recs, evs| !evs.is_empty() && sends(recs) == SENDS);
    assert_eq!(
        evs.iter()
            .map(|e| (e.handle, e.host_context, e.code))
            .collect::<Vec<_>>(),
        vec![(Some(tcp), CONTEXT + 2, tcp_event::ABORT)]
    );
    // In request order: acknowledged ones SUCCESS, then (from the RST on) REQUEST_ABORTED.
    let statuses: Vec<NdisStatus> = recs
        .iter()
        .filter(|d| d.kind == DataRxKind::SendComplete)
        .map(|d| d.status)
        .collect();
    let first_abort = statuses
        .iter()
        .position(|s| *s == NdisStatus::REQUEST_ABORTED)
        .expect("outstanding sends fail with REQUEST_ABORTED after the RST");
    assert!(
        statuses[first_abort..]
            .iter()
            .all(|s| *s == NdisStatus::REQUEST_ABORTED),
        "a send succeeded after the abort: {statuses:?}"
    );
    assert!(
        statuses[..first_abort]
            .iter()
            .all(|s| *s == NdisStatus::SUCCESS),
        "{statuses:?}"
    );
    r.terminate_and_check_silence();
}
