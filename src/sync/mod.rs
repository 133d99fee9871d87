//! The replication protocol (DESIGN §5), implemented once for every pair of replicas:
//! `peer` (points and session histories), `message` (the wire format), `transport`,
//! `pass` (the sender and receiver roles), `apply` (what a receiver stores, atomically
//! with its points) and `session` (a client's round: push then pull).

pub mod apply;
pub mod message;
pub mod pass;
pub mod peer;
pub mod transport;

pub use message::{Direction, Message};
pub use pass::{Limits, PassReport, Progress};
pub use peer::{PeerRecord, Point};
pub use transport::Transport;
pub mod session;
