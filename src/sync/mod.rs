//! The replication protocol (DESIGN §5), implemented once for every pair of replicas.
//!
//! - `message`: the wire messages; `frame`: their envelope, written and read;
//!   `transport`: how messages travel.
//! - `pass`: what both roles share (caps, reports, the snapshot and idle rules, `Step`).
//! - `send` / `receive`: the two roles of a pass, as sans-IO state machines.
//! - `apply`: what a receiver stores, atomically with the points it justifies.
//! - `session`: a client's round (push then pull) and a server's connection.
//! - `drive`: running the machines over a transport.
//! - `live`: the connection driver (reconnect, backoff, polling) every link uses.

pub mod apply;
pub mod drive;
pub mod frame;
pub mod live;
pub mod message;
pub mod pass;
pub mod receive;
pub mod reset;
pub mod send;
pub mod session;
pub mod transport;

pub use crate::peer::{PeerRecord, Point};
pub use message::{Direction, Message};
pub use pass::{Limits, PassReport, Progress};
pub use transport::Transport;
