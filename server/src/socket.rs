//! `WsTransport`: the engine's `Transport` over an axum WebSocket.
//!
//! Protocol messages are JSON text frames. Everything else a client might put on the wire
//! (binary frames, invalid UTF-8, frames over the size limit, undecodable JSON) becomes a
//! `SyncError::Protocol` — never a panic — and the transport remembers *why* (`fault`), so
//! the connection can tell the client with the right error code before closing. Silence is
//! detected with WebSocket pings (browsers answer them by themselves; the protocol's own
//! `ping` is for the other direction): a client that sends nothing for `idle` is dropped,
//! and a send that cannot complete within `idle` (a client that stopped reading) fails.
//! The deadlines live in the transport, not in one `recv` call, so a `recv` cut short
//! (the server pokes between messages) does not restart them.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket};
use tidemark::error::SyncError;
use tidemark::sync::{Message, Transport};

use crate::quota::{Book, Refusal};
use std::sync::Arc;

/// Why the transport failed, as a protocol error to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub code: &'static str,
    pub message: String,
}

pub struct WsTransport {
    socket: WebSocket,
    max_frame: usize,
    idle: Duration,
    last_heard: Instant,
    /// When the last WebSocket ping went out.
    last_ping: Option<Instant>,
    /// The code of the `Message::Error` that went out, if one did (the engine refused
    /// something itself), so the connection sends no second error and closes with the
    /// close code that goes with it.
    pub refused: Option<String>,
    /// The last transport-level fault, if any.
    pub fault: Option<Fault>,
    /// The client's pass and snapshot allowances, when it has any (`quota`): each `start`
    /// it sends spends a pass, each snapshot the server begins to send it spends a snapshot.
    pub quota: Option<(Arc<Book>, String)>,
}

impl WsTransport {
    pub fn new(socket: WebSocket, max_frame: usize, idle: Duration) -> WsTransport {
        WsTransport { socket, max_frame, idle, last_heard: Instant::now(), last_ping: None, refused: None, fault: None, quota: None }
    }

    fn protocol(&mut self, code: &'static str, message: String) -> SyncError {
        self.fault = Some(Fault { code, message: message.clone() });
        SyncError::Protocol(message)
    }

    /// Sends a close frame and waits briefly for the client's, so the close is clean.
    pub async fn close(mut self, code: u16, reason: &str) {
        // Close reasons are limited to 123 bytes by the WebSocket protocol.
        let mut reason = reason.to_string();
        while reason.len() > 120 {
            reason.pop();
        }
        let frame = Frame::Close(Some(CloseFrame { code, reason: reason.into() }));
        if self.socket.send(frame).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(f)) = self.socket.recv().await {
                if matches!(f, Frame::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// Spends one of the client's allowances on `msg` if it costs one (a `start` it sent,
    /// a snapshot about to be sent to it); over the allowance, a fault to answer with.
    fn spend(&mut self, msg: &Message) -> Result<(), SyncError> {
        let Some((book, key)) = &self.quota else { return Ok(()) };
        let spent = match msg {
            Message::Start { .. } => book.pass(key),
            Message::Begin { snapshot: true, .. } => book.snapshot(key),
            _ => Ok(()),
        };
        spent.map_err(|Refusal { code, message }| self.protocol(code, message))
    }

    /// Maps a socket error to a transport error, recognizing the ones worth answering.
    fn socket_error(&mut self, e: axum::Error) -> SyncError {
        let text = e.to_string();
        match e.into_inner().downcast::<tungstenite::Error>().map(|b| *b) {
            Ok(tungstenite::Error::Capacity(c)) => {
                self.protocol("FRAME_TOO_LARGE", format!("{c}; the limit is {} bytes: send smaller batches (perDiff)", self.max_frame))
            }
            Ok(tungstenite::Error::Utf8(_)) => self.protocol("SYNC_PROTOCOL", "a text frame is not valid UTF-8".into()),
            Ok(tungstenite::Error::Protocol(p)) => self.protocol("SYNC_PROTOCOL", format!("WebSocket protocol violation: {p}")),
            _ => SyncError::Connection(text),
        }
    }
}

impl Transport for WsTransport {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        if let Message::Error { code, .. } = msg {
            self.refused = Some(code.clone());
        }
        self.spend(msg)?;
        match tokio::time::timeout(self.idle, self.socket.send(Frame::Text(msg.encode().into()))).await {
            Err(_) => Err(SyncError::Connection(format!("the client read nothing for {} s", self.idle.as_secs()))),
            Ok(r) => r.map_err(|e| SyncError::Connection(e.to_string())),
        }
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        let ping_every = (self.idle / 3).max(Duration::from_millis(100));
        loop {
            let now = Instant::now();
            let dead_at = self.last_heard + self.idle;
            if now >= dead_at {
                self.fault = Some(Fault { code: "TIMEOUT", message: format!("no message for {} s", self.idle.as_secs()) });
                return Err(SyncError::Connection("idle timeout".into()));
            }
            let ping_at = self.last_ping.map_or(self.last_heard, |p| p.max(self.last_heard)) + ping_every;
            if now >= ping_at {
                // Any answer (a pong) counts as a sign of life.
                self.last_ping = Some(now);
                let _ = tokio::time::timeout(ping_every, self.socket.send(Frame::Ping(Default::default()))).await;
                continue;
            }
            let frame = match tokio::time::timeout_at(ping_at.min(dead_at).into(), self.socket.recv()).await {
                Err(_) => continue,
                Ok(None) => return Err(SyncError::Connection("the client went away".into())),
                Ok(Some(Err(e))) => return Err(self.socket_error(e)),
                Ok(Some(Ok(f))) => f,
            };
            self.last_heard = Instant::now();
            match frame {
                Frame::Text(text) => {
                    if text.len() > self.max_frame {
                        let m = format!("a frame of {} bytes is over the limit of {} bytes", text.len(), self.max_frame);
                        return Err(self.protocol("FRAME_TOO_LARGE", m));
                    }
                    let msg = Message::decode(text.as_str()).map_err(|m| self.protocol("SYNC_PROTOCOL", m))?;
                    self.spend(&msg)?;
                    return Ok(msg);
                }
                Frame::Binary(_) => {
                    return Err(self.protocol("SYNC_PROTOCOL", "binary frames are not part of the protocol: send JSON text frames".into()))
                }
                Frame::Ping(_) | Frame::Pong(_) => continue,
                Frame::Close(_) => return Err(SyncError::Connection("the client closed the connection".into())),
            }
        }
    }
}
