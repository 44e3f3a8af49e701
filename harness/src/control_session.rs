//! The control queue pair (rx 2 / tx 3) on the in-process VMM: the guest-driver's
//! `ControlChannel` running over `VmmPlatform`, with the first exchanges (NEGOTIATE,
//! SET_PARAMETERS) that every state-manipulation request needs.

use std::sync::Arc;
use std::time::Duration;

use chimney_abi::queues::{CONTROL_RX, CONTROL_TX};
use chimney_abi::{
    Completion, CompletionBody, NdisStatus, Negotiate, NegotiateResult, OffloadParameters,
    RequestBody, ABI_MIN_VERSION, ABI_VERSION,
};
use chimney_miniport::{ControlChannel, ControlConfig, ControlError};

use crate::error::{HarnessError, Result};
use crate::frontend::Vmm;
use crate::vmm_platform::VmmPlatform;

/// Generous bound for one completion: a broken device fails the run instead of hanging it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ControlSession {
    pub channel: ControlChannel,
    platform: Arc<VmmPlatform>,
    event_idx: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for ControlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSession")
            .field("outstanding", &self.channel.outstanding())
            .finish()
    }
}

impl ControlSession {
    /// Create control rx/tx queues of `queue_size` entries and hand them to the device.
    pub fn open(vmm: &mut Vmm, queue_size: u16, cfg: ControlConfig) -> Result<ControlSession> {
        let rx = vmm.create_queue(CONTROL_RX, queue_size)?;
        let tx = vmm.create_queue(CONTROL_TX, queue_size)?;
        let platform = vmm.platform().clone();
        let channel = ControlChannel::new(&*platform, rx, tx, cfg)?;
        Ok(ControlSession {
            channel,
            platform,
            event_idx: vmm.event_idx(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn platform(&self) -> &VmmPlatform {
        &self.platform
    }

    /// A shared handle on the platform (to use it while the channel is borrowed mutably).
    pub fn platform_arc(&self) -> Arc<VmmPlatform> {
        self.platform.clone()
    }

    /// Send a request and wait for its completion (any status).
    pub fn call(&mut self, body: RequestBody) -> Result<Completion> {
        let id = self.channel.submit(&*self.platform, body)?;
        self.wait(id)
    }

    /// Wait for the completion of an already submitted request. A timeout is explained
    /// when the ring state shows why (a device that never re-armed notifications).
    pub fn wait(&mut self, request_id: u64) -> Result<Completion> {
        match self
            .channel
            .wait_completion(&*self.platform, request_id, self.timeout)
        {
            Ok(c) => Ok(c),
            Err(e @ ControlError::TimedOut { .. }) => Err(self.explain_timeout(e)),
            Err(e) => Err(e.into()),
        }
    }

    fn explain_timeout(&self, e: ControlError) -> HarnessError {
        let tx = self.channel.tx_queue();
        if let Ok((avail, event)) = tx.notification_state(&*self.platform) {
            let event_idx = self.event_idx;
            // The driver skips the kick when avail_event was not crossed (virtio 1.x
            // §2.7.10); a device that never writes avail_event never hears of request 2+.
            if event_idx && avail.wrapping_sub(event) > 1 {
                return HarnessError::Protocol(format!(
                    "{e}: control tx has avail.idx {avail} but the device's avail_event is \
                     still {event}: with VIRTIO_RING_F_EVENT_IDX the device must re-arm \
                     notifications (Queue::enable_notification) after draining the queue, \
                     else the driver does not kick it again"
                ));
            }
        }
        e.into()
    }

    /// The next event indication (waits up to the session timeout).
    pub fn next_event(&mut self) -> Result<chimney_abi::Event> {
        Ok(self.channel.wait_event(&*self.platform, self.timeout)?)
    }

    /// Send raw request bytes (split into descriptors at `splits`) and wait for the answer.
    pub fn call_bytes(&mut self, bytes: &[u8], splits: &[usize]) -> Result<Completion> {
        let id = self.channel.allocate_request_id();
        let mut bytes = bytes.to_vec();
        // Put our id into the header if there is one, so the completion correlates.
        if bytes.len() >= 16 {
            bytes[8..16].copy_from_slice(&id.to_le_bytes());
        }
        self.channel
            .submit_bytes(&*self.platform, id, &bytes, splits)?;
        self.wait(id)
    }

    /// NEGOTIATE for the versions this harness speaks; SUCCESS required.
    pub fn negotiate(&mut self) -> Result<NegotiateResult> {
        let c = self.call(RequestBody::Negotiate(Negotiate {
            min_version: ABI_MIN_VERSION,
            max_version: ABI_VERSION,
        }))?;
        match (c.status, &c.body) {
            (NdisStatus::SUCCESS, CompletionBody::Negotiate(n)) => Ok(*n),
            _ => Err(HarnessError::Protocol(format!(
                "NEGOTIATE: expected SUCCESS with a negotiate body, got {c:?}"
            ))),
        }
    }

    /// SET_PARAMETERS; SUCCESS required.
    pub fn set_parameters(&mut self, p: OffloadParameters) -> Result<()> {
        let c = self.call(RequestBody::SetParameters(p))?;
        match (c.status, &c.body) {
            (NdisStatus::SUCCESS, CompletionBody::SetParameters) => Ok(()),
            _ => Err(HarnessError::Protocol(format!(
                "SET_PARAMETERS: expected SUCCESS, got {c:?}"
            ))),
        }
    }

    /// Open + negotiate + default parameters: ready for state manipulation.
    pub fn ready(vmm: &mut Vmm, queue_size: u16) -> Result<(ControlSession, NegotiateResult)> {
        let mut s = ControlSession::open(vmm, queue_size, ControlConfig::default())?;
        let n = s.negotiate()?;
        s.set_parameters(OffloadParameters::default())?;
        Ok((s, n))
    }
}
