//! The driver side of one data queue pair (pairs 2..: rx `2p`, tx `2p + 1`), the second
//! chimney interface (DESIGN.md rule 1; docs/ring-abi.md §16). Each request is one chain of
//! device-readable buffers from a staging slot; rx buffers stay posted and carry
//! `DataRecord`s in the control ring's framing.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use chimney_abi::data_io::{DataRecord, DataRequest};
use chimney_abi::framing::FRAGMENT_HEADER_LEN;
use chimney_abi::{DecodeError, Reassembler};

use crate::platform::{DmaRegion, Platform, PlatformError};
use crate::virtqueue::{Buffer, Virtqueue, VirtqueueError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataConfig {
    pub rx_buffers: u16,
    pub rx_buffer_len: usize,
    /// Requests in flight at once.
    pub tx_slots: usize,
    /// Largest request record (header + data).
    pub tx_slot_len: usize,
    pub max_record_len: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            rx_buffers: 64,
            rx_buffer_len: 16 << 10,
            tx_slots: 32,
            tx_slot_len: 64 << 10,
            max_record_len: (1 << 20) + 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("data queue {queue}: {source}")]
    Queue { queue: u16, source: VirtqueueError },
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("all {0} data tx slots are in flight")]
    NoFreeSlot(usize),
    #[error("data record of {len} bytes exceeds the {max}-byte slot")]
    TooLong { len: usize, max: usize },
    #[error("data rx: bad record from the device: {0}")]
    BadRecord(DecodeError),
    #[error("data queue {queue}: token {token} names no buffer")]
    UnknownToken { queue: u16, token: u64 },
    #[error("config: {0}")]
    Config(&'static str),
}

#[derive(Debug)]
pub struct DataChannel {
    rx: Virtqueue,
    tx: Virtqueue,
    rx_bufs: Vec<DmaRegion>,
    slots: Vec<(DmaRegion, bool)>,
    reassembler: Reassembler,
    records: VecDeque<DataRecord>,
    cfg: DataConfig,
}

impl DataChannel {
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        rx: Virtqueue,
        tx: Virtqueue,
        cfg: DataConfig,
    ) -> Result<Self, DataError> {
        if cfg.rx_buffer_len < chimney_abi::MIN_RX_BUFFER || cfg.rx_buffer_len > u32::MAX as usize {
            return Err(DataError::Config("rx_buffer_len out of range"));
        }
        if cfg.rx_buffers == 0 || cfg.rx_buffers > rx.size() || cfg.tx_slots == 0 {
            return Err(DataError::Config("rx_buffers / tx_slots out of range"));
        }
        let mut ch = DataChannel {
            rx,
            tx,
            rx_bufs: Vec::new(),
            slots: Vec::new(),
            reassembler: Reassembler::new(cfg.max_record_len),
            records: VecDeque::new(),
            cfg,
        };
        for _ in 0..cfg.rx_buffers {
            ch.rx_bufs.push(platform.alloc_dma(cfg.rx_buffer_len, 64)?);
        }
        for _ in 0..cfg.tx_slots {
            ch.slots
                .push((platform.alloc_dma(cfg.tx_slot_len, 64)?, false));
        }
        for i in 0..ch.rx_bufs.len() {
            ch.post_rx(platform, i)?;
        }
        ch.rx.kick(platform).map_err(|e| ch.rx_err(e))?;
        Ok(ch)
    }

    fn rx_err(&self, source: VirtqueueError) -> DataError {
        DataError::Queue {
            queue: self.rx.index(),
            source,
        }
    }
    fn tx_err(&self, source: VirtqueueError) -> DataError {
        DataError::Queue {
            queue: self.tx.index(),
            source,
        }
    }

    fn post_rx<P: Platform + ?Sized>(&mut self, platform: &P, i: usize) -> Result<(), DataError> {
        let b = self.rx_bufs[i];
        let r = self.rx.add(
            platform,
            &[],
            &[Buffer {
                addr: b.addr,
                len: b.len as u32,
            }],
            i as u64,
        );
        r.map_err(|e| self.rx_err(e))?;
        Ok(())
    }

    /// Largest data a SEND/FORWARD record of this channel can carry.
    pub fn max_data(&self) -> usize {
        self.cfg
            .tx_slot_len
            .saturating_sub(chimney_abi::data_io::DATA_HEADER_LEN)
            .min(chimney_abi::data_io::MAX_SEND_DATA)
    }

    /// Encode and publish one request (kick included).
    pub fn submit<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        req: &DataRequest,
    ) -> Result<(), DataError> {
        self.reclaim(platform)?;
        let bytes = req.encode();
        if bytes.len() > self.cfg.tx_slot_len {
            return Err(DataError::TooLong {
                len: bytes.len(),
                max: self.cfg.tx_slot_len,
            });
        }
        let slot = self
            .slots
            .iter()
            .position(|s| !s.1)
            .ok_or(DataError::NoFreeSlot(self.slots.len()))?;
        let buf = self.slots[slot].0;
        platform.write(buf.addr, &bytes)?;
        let r = self.tx.add(
            platform,
            &[Buffer {
                addr: buf.addr,
                len: bytes.len() as u32,
            }],
            &[],
            slot as u64,
        );
        r.map_err(|e| self.tx_err(e))?;
        self.slots[slot].1 = true;
        self.tx.kick(platform).map_err(|e| self.tx_err(e))?;
        Ok(())
    }

    /// Free slots whose chains the device returned.
    fn reclaim<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<(), DataError> {
        loop {
            let u = self.tx.pop_used(platform).map_err(|e| self.tx_err(e))?;
            let Some(u) = u else { return Ok(()) };
            let q = self.tx.index();
            let s = usize::try_from(u.token)
                .ok()
                .filter(|s| *s < self.slots.len())
                .ok_or(DataError::UnknownToken {
                    queue: q,
                    token: u.token,
                })?;
            self.slots[s].1 = false;
        }
    }

    /// Read what the device returned; records queue up for `next_record`. A bad record is
    /// reported after its buffer was reposted; call again to continue.
    pub fn poll<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<(), DataError> {
        self.reclaim(platform)?;
        let mut result = Ok(());
        let mut reposted = false;
        loop {
            let u = match self.rx.pop_used(platform) {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e @ VirtqueueError::UsedLenTooLarge { token, .. }) => {
                    if let Some(i) = usize::try_from(token)
                        .ok()
                        .filter(|i| *i < self.rx_bufs.len())
                    {
                        self.post_rx(platform, i)?;
                        reposted = true;
                    }
                    if result.is_ok() {
                        result = Err(self.rx_err(e));
                    }
                    continue;
                }
                Err(e) => return Err(self.rx_err(e)),
            };
            let q = self.rx.index();
            let i = usize::try_from(u.token)
                .ok()
                .filter(|i| *i < self.rx_bufs.len())
                .ok_or(DataError::UnknownToken {
                    queue: q,
                    token: u.token,
                })?;
            let mut data = alloc::vec![0u8; u.len as usize];
            platform.read(self.rx_bufs[i].addr, &mut data)?;
            self.post_rx(platform, i)?;
            reposted = true;
            let pushed = if data.is_empty() {
                Ok(None)
            } else if data.len() < FRAGMENT_HEADER_LEN {
                Err(DecodeError::Truncated {
                    field: chimney_abi::Field::new("fragment"),
                    need: FRAGMENT_HEADER_LEN,
                    have: data.len(),
                })
            } else {
                self.reassembler.push(&data)
            };
            match pushed.and_then(|r| r.map(|rec| DataRecord::decode(&rec)).transpose()) {
                Ok(Some(rec)) => self.records.push_back(rec),
                Ok(None) => {}
                Err(e) => {
                    if result.is_ok() {
                        result = Err(DataError::BadRecord(e));
                    }
                }
            }
        }
        if reposted {
            self.rx.kick(platform).map_err(|e| self.rx_err(e))?;
        }
        result
    }

    pub fn next_record(&mut self) -> Option<DataRecord> {
        self.records.pop_front()
    }

    /// Arm the rx notification and wait up to `timeout` for the device; true if something
    /// may have arrived.
    pub fn wait<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        timeout: Duration,
    ) -> Result<(), DataError> {
        if !self
            .rx
            .enable_callbacks(platform)
            .map_err(|e| self.rx_err(e))?
        {
            platform.wait(self.rx.index(), timeout)?;
        }
        Ok(())
    }

    pub fn has_records(&self) -> bool {
        !self.records.is_empty()
    }
}
