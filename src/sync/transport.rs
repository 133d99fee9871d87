//! How protocol messages travel. The pass logic only needs "send a message" and "receive
//! the next one"; WebSockets (browser and server) and in-memory pipes (tests) provide it.

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::message::Message;
use crate::error::SyncError;

#[allow(async_fn_in_trait)]
pub trait Transport {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError>;
    async fn recv(&mut self) -> Result<Message, SyncError>;

    /// Whether a message from the peer has arrived but is held back until the server
    /// has a place for the pass it asks for (a server's admission of pull passes): the
    /// peer is in a pass the engine has not seen begin. A poke then waits as during a pass
    /// (`drive::serve`).
    fn waiting(&self) -> bool {
        false
    }
}

/// One end of an in-memory connection. Frames go through `encode`/`decode`, so tests
/// exercise the same wire format as the network.
pub struct Pipe {
    tx: mpsc::UnboundedSender<String>,
    rx: mpsc::UnboundedReceiver<String>,
    /// Fails the connection after this many sends (to test passes cut short).
    pub cut_after: Option<usize>,
    sent: usize,
}

/// Two connected ends.
pub fn pipe() -> (Pipe, Pipe) {
    let (a_tx, a_rx) = mpsc::unbounded();
    let (b_tx, b_rx) = mpsc::unbounded();
    (Pipe { tx: a_tx, rx: b_rx, cut_after: None, sent: 0 }, Pipe { tx: b_tx, rx: a_rx, cut_after: None, sent: 0 })
}

impl Transport for Pipe {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        if self.cut_after.is_some_and(|n| self.sent >= n) {
            self.tx.close_channel();
            return Err(SyncError::Connection("connection cut".into()));
        }
        self.sent += 1;
        self.tx.send(msg.encode()).await.map_err(|_| SyncError::Connection("peer went away".into()))
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        let text = self.rx.next().await.ok_or_else(|| SyncError::Connection("peer went away".into()))?;
        Message::decode(&text).map_err(SyncError::Protocol)
    }
}
