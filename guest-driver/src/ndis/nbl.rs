//! `NET_BUFFER_LIST` → `NET_BUFFER` → MDL chains in portable Rust (digest §2.12, §3.6–3.9).
//! A chain of NBLs is a `Vec` in chain order; ownership moves with the call (the miniport
//! owns the NBLs from the handler call until it completes them).

use alloc::vec::Vec;

use super::NdisStatus;

/// One MDL: a run of bytes (locked, unmapped in NDIS; plain bytes here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mdl {
    pub data: Vec<u8>,
}

/// One `NET_BUFFER`: an MDL chain and the window of it that holds data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetBuffer {
    pub mdls: Vec<Mdl>,
    /// Offset of the first data byte in the MDL chain (`DataOffset`).
    pub data_offset: usize,
    /// Bytes of data from `data_offset` on (`DataLength`).
    pub data_length: usize,
}

impl NetBuffer {
    /// A buffer whose data is `bytes` in one MDL.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        NetBuffer {
            mdls: alloc::vec![Mdl {
                data: bytes.to_vec()
            }],
            data_offset: 0,
            data_length: bytes.len(),
        }
    }

    /// An empty receive buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        NetBuffer {
            mdls: alloc::vec![Mdl {
                data: alloc::vec![0; capacity]
            }],
            data_offset: 0,
            data_length: capacity,
        }
    }

    /// The data bytes (clamped to what the MDLs hold).
    pub fn data(&self) -> Vec<u8> {
        self.mdls
            .iter()
            .flat_map(|m| m.data.iter().copied())
            .skip(self.data_offset)
            .take(self.data_length)
            .collect()
    }

    /// `NdisAdvanceNetBufferDataStart(nb, n, FALSE, NULL)`: drop `n` bytes from the front.
    pub fn advance_data_start(&mut self, n: usize) {
        let n = n.min(self.data_length);
        self.data_offset += n;
        self.data_length -= n;
    }
}

/// `NET_BUFFER_LIST_INFO` slots the chimney uses (§2.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NblInfo {
    /// `TcpOffloadBytesTransferred`: bytes sent+acked / placed, set at completion.
    pub tcp_offload_bytes_transferred: u32,
    /// `TcpReceiveNoPush`: posted buffer in non-push mode.
    pub tcp_receive_no_push: bool,
    /// `TcpReceiveBytesTransferred`: bytes the host already put in a posted buffer.
    pub tcp_receive_bytes_transferred: u32,
}

/// One `NET_BUFFER_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetBufferList {
    /// Host's tag to recognise its NBL on completion (stands for the NBL's address).
    pub id: u64,
    pub net_buffers: Vec<NetBuffer>,
    /// Per-NBL completion status (`NET_BUFFER_LIST.Status`).
    pub status: NdisStatus,
    pub info: NblInfo,
    pub miniport_reserved: [u64; 2],
    pub protocol_reserved: [u64; 4],
}

impl Default for NetBufferList {
    fn default() -> Self {
        NetBufferList {
            id: 0,
            net_buffers: Vec::new(),
            status: NdisStatus::SUCCESS,
            info: NblInfo::default(),
            miniport_reserved: [0; 2],
            protocol_reserved: [0; 4],
        }
    }
}

impl NetBufferList {
    /// An NBL with one NB holding `bytes`.
    pub fn with_data(id: u64, bytes: &[u8]) -> Self {
        NetBufferList {
            id,
            net_buffers: alloc::vec![NetBuffer::from_bytes(bytes)],
            ..Default::default()
        }
    }

    /// Total data bytes over all NBs.
    pub fn data_length(&self) -> usize {
        self.net_buffers.iter().map(|nb| nb.data_length).sum()
    }
}
