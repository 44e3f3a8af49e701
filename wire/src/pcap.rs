//! Ethernet pcap capture (classic pcap, microsecond timestamps), flushed on drop.

use crate::{Result, WireError};
use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::DataLink;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Snapshot length: whole GSO super-frames fit.
const SNAPLEN: u32 = 262_144;

/// A pcap file of Ethernet frames. `record` takes `&self` (internally locked) so one writer
/// can be shared by the threads of a device. Frames go in without the virtio-net header.
pub struct PcapWriter {
    inner: Mutex<pcap_file::pcap::PcapWriter<SharedFile>>,
    file: SharedFile,
}

impl std::fmt::Debug for PcapWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapWriter").finish_non_exhaustive()
    }
}

impl PcapWriter {
    /// Create (truncate) `path` and write the pcap header.
    pub fn create(path: &Path) -> Result<PcapWriter> {
        let file = File::create(path)
            .map_err(|e| WireError::io(format!("create pcap {}", path.display()), e))?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        };
        let shared = SharedFile(Arc::new(Mutex::new(BufWriter::new(file))));
        let w =
            pcap_file::pcap::PcapWriter::with_header(shared.clone(), header).map_err(|source| {
                WireError::Pcap {
                    op: "write header",
                    source,
                }
            })?;
        Ok(PcapWriter {
            inner: Mutex::new(w),
            file: shared,
        })
    }

    /// Record one Ethernet frame with the current wall-clock time.
    pub fn record(&self, frame: &[u8]) -> Result<()> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.record_at(ts, frame)
    }

    /// Record one Ethernet frame with an explicit timestamp (since the Unix epoch).
    pub fn record_at(&self, ts: std::time::Duration, frame: &[u8]) -> Result<()> {
        let cut = frame.len().min(SNAPLEN as usize);
        let orig_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let packet = PcapPacket::new(ts, orig_len, &frame[..cut]);
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .write_packet(&packet)
            .map_err(|source| WireError::Pcap {
                op: "write packet",
                source,
            })?;
        Ok(())
    }

    /// Flush buffered packets to the file.
    pub fn flush(&self) -> Result<()> {
        // Hold the packet lock so no packet is half-written while we flush.
        let _guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.file
            .clone()
            .flush()
            .map_err(|e| WireError::io("flush pcap", e))
    }
}

/// The file behind the pcap writer, shared so `flush` can reach it (pcap-file's writer has
/// no `get_mut`).
#[derive(Clone)]
struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

impl Drop for PcapWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "could not flush pcap file");
        }
    }
}
