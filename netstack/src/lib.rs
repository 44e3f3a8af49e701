//! chimney-netstack: a sans-io Ethernet/ARP/ND/IPv4/IPv6/TCP engine.
//!
//! Frames and a monotonic time go in, frames, timer deadlines and events come out; there are
//! no threads, sockets or clock reads inside (DESIGN rule 4). The same engine serves the host
//! stack and the offload target (DESIGN rule 5): a connection exports as chimney state objects
//! (spec digest §2.4–2.6, [`state`]) and imports into another engine to continue.
//!
//! Entry points: [`Engine`] (`handle_frame`, `poll_transmit`, `poll_timeout`, `handle_timeout`,
//! `connect`/`listen`, `send`/`recv`/`close`/`abort`, `export`/`import`), [`impair::Impairment`]
//! (seeded wire impairment), [`frame::parse_frame`] (checked frame parser).
#![forbid(unsafe_code)]

pub mod buffer;
pub mod engine;
pub mod frame;
pub mod impair;
pub mod seq;
pub mod state;
pub mod tcp;
pub mod time;
pub mod timer;

pub use engine::{
    ConnHandle, Engine, EngineConfig, EngineError, EngineStats, Event, FourTuple, Gso, TcpSettings,
    Transmit, TxOffload,
};
pub use frame::FrameError;
pub use state::*;
pub use time::{Instant, Tick, TickClock};
