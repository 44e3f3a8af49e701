//! Bookkeeping for requests on the data ring: what is in flight, what completed, which
//! indications must be returned and which receive buffers reposted. Every record with a
//! status other than SUCCESS is an error of the run (a benchmark of a failing path would
//! measure the wrong thing).

use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::{DeviceHandle, NdisStatus};

use crate::error::{BenchError, Result};
use crate::rig::Rig;

#[derive(Debug, Default)]
pub struct Pump {
    pub sends_in_flight: usize,
    pub posted: usize,
    /// Bytes of completed (acknowledged, C-142) sends.
    pub sent_bytes: u64,
    pub send_ops: u64,
    pub recv_bytes: u64,
    /// Receive completions + indications.
    pub recv_ops: u64,
    /// Handles whose send completed (for per-connection refills), in order.
    pub send_done: Vec<DeviceHandle>,
    /// Handles whose posted receive completed (to repost).
    pub recv_done: Vec<DeviceHandle>,
    /// Indications to return: (handle, indication id).
    pub to_return: Vec<(DeviceHandle, u64)>,
    next_id: u64,
    records: Vec<DataRecord>,
}

impl Pump {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn send(&mut self, rig: &mut Rig, req: &mut DataRequest) -> Result<()> {
        let id = self.next_id();
        if let DataRequest::Send { request_id, .. } = req {
            *request_id = id;
        }
        rig.submit(req)?;
        self.sends_in_flight += 1;
        Ok(())
    }

    pub fn post(&mut self, rig: &mut Rig, handle: DeviceHandle, capacity: u32) -> Result<()> {
        let request_id = self.next_id();
        rig.submit(&DataRequest::PostReceive {
            handle,
            request_id,
            capacity,
        })?;
        self.posted += 1;
        Ok(())
    }

    /// Return every indication taken so far.
    pub fn return_indications(&mut self, rig: &mut Rig) -> Result<()> {
        for (handle, indication_id) in std::mem::take(&mut self.to_return) {
            rig.submit(&DataRequest::ReceiveReturn {
                handle,
                indication_id,
            })?;
        }
        Ok(())
    }

    /// Read what the device returned (waiting up to `wait` if nothing is there) and book it.
    pub fn collect(&mut self, rig: &mut Rig, wait: std::time::Duration) -> Result<()> {
        let mut records = std::mem::take(&mut self.records);
        rig.records(wait, &mut records)?;
        for r in records.drain(..) {
            self.book(r)?;
        }
        self.records = records;
        Ok(())
    }

    fn book(&mut self, r: DataRecord) -> Result<()> {
        let bad = |r: &DataRecord| BenchError::Unexpected {
            what: "data ring".into(),
            detail: format!(
                "{:?} status {:?} handle {:?} request {} bytes {}",
                r.kind, r.status, r.handle, r.request_id, r.bytes
            ),
        };
        if r.status != NdisStatus::SUCCESS {
            return Err(bad(&r));
        }
        let handle = r.handle.ok_or_else(|| bad(&r))?;
        match r.kind {
            DataRxKind::SendComplete => {
                self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
                self.sent_bytes += u64::from(r.bytes);
                self.send_ops += 1;
                self.send_done.push(handle);
            }
            DataRxKind::ReceiveComplete => {
                self.posted = self.posted.saturating_sub(1);
                self.recv_bytes += r.data.len() as u64;
                self.recv_ops += 1;
                self.recv_done.push(handle);
            }
            DataRxKind::ReceiveIndicate => {
                self.recv_bytes += r.data.len() as u64;
                self.recv_ops += 1;
                self.to_return.push((handle, r.request_id));
            }
            DataRxKind::ForwardComplete => {}
            _ => return Err(bad(&r)),
        }
        Ok(())
    }

    /// Keep pair 0 drained and hand segments of offloaded connections that still came up
    /// pair 0 to the device (C-197).
    pub fn service_pair0(&mut self, rig: &mut Rig) -> Result<()> {
        rig.stack.poll(std::time::Duration::ZERO)?;
        for (handle, data) in rig.stack.take_forwards() {
            let request_id = self.next_id();
            rig.submit(&DataRequest::Forward {
                handle,
                request_id,
                data,
            })?;
        }
        Ok(())
    }
}
