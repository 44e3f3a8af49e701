//! Invalidate (digest §3.4, C-097..C-103).

use super::table::ObjectTable;
use super::{check_tree, OpError};
use chimney_abi::event::{tcp_event, upload_reason};
use chimney_abi::{BlockResult, Event, EventClass, Layer, NdisStatus, RefBlock, Tree};
use std::convert::Infallible;

impl ObjectTable {
    /// Mark the referenced objects invalid (C-098, C-099) and keep them until terminated
    /// (C-102). Every TCP connection that is invalid itself or depends on an invalid path or
    /// neighbor stops sending (C-100, `tcp_may_send`) and gets one upload request,
    /// `TcpIndicateRetrieve` / `InvalidState` (C-101), returned here as events to indicate
    /// after the completion. Status SUCCESS per block (C-103).
    pub fn invalidate(
        &mut self,
        tree: &Tree<RefBlock>,
    ) -> Result<(Vec<BlockResult<Infallible>>, Vec<Event>), OpError> {
        check_tree(tree)?;
        for (i, b) in tree.blocks.iter().enumerate() {
            if let RefBlock::Object(h) = b.body {
                self.check_ref(i as u32, b.state_type.layer(), h)?;
            }
        }
        for b in &tree.blocks {
            let RefBlock::Object(h) = b.body else {
                continue;
            };
            match h.layer() {
                Some(Layer::Neighbor) => {
                    if let Some(o) = self.neighbors.get_mut(h) {
                        o.invalid = true;
                    }
                }
                Some(Layer::Path) => {
                    if let Some(o) = self.paths.get_mut(h) {
                        o.invalid = true;
                    }
                }
                Some(Layer::Tcp) => {
                    if let Some(o) = self.tcp.get_mut(h) {
                        o.invalid = true;
                    }
                }
                None => {}
            }
        }
        let mut events = Vec::new();
        for h in self.tcp_handles() {
            if self.tcp_may_send(h) {
                continue;
            }
            let Some(t) = self.tcp.get_mut(h) else {
                continue;
            };
            if t.retrieve_requested {
                continue; // one request per connection
            }
            t.retrieve_requested = true;
            events.push(Event {
                sequence: 0,
                class: EventClass::TcpEvent,
                status: NdisStatus::SUCCESS,
                handle: Some(h),
                host_context: t.host_context(),
                code: tcp_event::RETRIEVE,
                info: upload_reason::INVALID_STATE,
                payload: Vec::new(),
            });
        }
        let results = tree
            .blocks
            .iter()
            .map(|b| BlockResult {
                state_type: b.state_type,
                status: NdisStatus::SUCCESS,
                handle: None,
                state: None,
            })
            .collect();
        Ok((results, events))
    }
}
