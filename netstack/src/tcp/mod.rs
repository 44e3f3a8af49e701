//! TCP: the connection state machine and its parts.

pub mod rtt;
pub mod scoreboard;
pub mod tcb;
