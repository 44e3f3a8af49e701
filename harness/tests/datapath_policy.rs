//! Issue 4, vendor policy through the real device (docs/vendor-guide.md): send failures by
//! count and by connection complete with the configured status and never reach the wire,
//! the other sends arrive byte-exact (C-142 for those); completion delays with a seeded
//! random part hold send completions but keep them in request order within the connection
//! (C-140) and still complete every send. Needs root.

mod datapath_rig;

use chimney_abi::data_io::DataRxKind;
use chimney_abi::NdisStatus;
use datapath_rig::{pattern, Rig, RigOptions};

#[test]
fn send_failures_by_count_for_the_first_connection_complete_with_the_policy_status() {
    let policy = "[[fail]]\noperation = \"send\"\nstatus = \"REQUEST_ABORTED\"\nfirst = 2\n\
                  connection = 1\n";
    let mut rig = Rig::start(RigOptions {
        policy: Some(policy.into()),
        ..RigOptions::default()
    });
    let seed = 0x9011;
    println!("seed {seed:#x}");
    let chunks: Vec<Vec<u8>> = (0..6).map(|i| pattern(seed + i, 10_000)).collect();
    let mut ids = Vec::new();
    for c in &chunks {
        ids.extend(rig.send(c, c.len()));
    }
    rig.until(
        "six send completions",
        std::time::Duration::from_secs(20),
        |r| {
            r.records
                .iter()
                .filter(|d| d.kind == DataRxKind::SendComplete)
                .count()
                == 6
        },
    );
    let got: Vec<(u64, NdisStatus)> = rig
        .records
        .iter()
        .filter(|d| d.kind == DataRxKind::SendComplete)
        .map(|d| (d.request_id, d.status))
        .collect();
    let want: Vec<(u64, NdisStatus)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                *id,
                if i < 2 {
                    NdisStatus::REQUEST_ABORTED
                } else {
                    NdisStatus::SUCCESS
                },
            )
        })
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want, "send completions (request id, status)");
    // The peer got exactly the four accepted sends.
    let expect: Vec<u8> = chunks[2..].concat();
    let mut buf = vec![0u8; expect.len()];
    use std::io::Read;
    rig.peer
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    rig.peer.read_exact(&mut buf).expect("peer read");
    assert!(
        buf == expect,
        "peer stream = the sends the policy let through"
    );
}

#[test]
fn delayed_send_completions_keep_request_order_within_the_connection_c140() {
    let policy = "seed = 5\n[completion]\nsend_delay_ms = 20\njitter_ms = 80\n";
    let mut rig = Rig::start(RigOptions {
        policy: Some(policy.into()),
        ..RigOptions::default()
    });
    let d = pattern(0xde1a, 2 << 20);
    assert!(rig.send_and_peer_reads(&d, 32 << 10) == d, "data");
    let ids: Vec<u64> = rig
        .records
        .iter()
        .filter(|r| r.kind == DataRxKind::SendComplete)
        .map(|r| {
            assert_eq!(r.status, NdisStatus::SUCCESS, "{r:?}");
            r.request_id
        })
        .collect();
    assert_eq!(ids.len(), 64, "every send completed");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "completions out of request order: {ids:?}"
    );
}
