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
//!
//! Pull passes are admitted (`Admission`): a client's `start` of a pull waits for one of a
//! fixed number of places before the server reads a row for it, and the pass keeps its
//! place until its `end`. Thousands of clients pulling at once are then served a group at
//! a time, first come first served — they finish one group after another instead of all at
//! the end (taking turns batch by batch would finish everyone at the end), and the server
//! holds only that many passes' rows and frames at once. A pass gives its place back early
//! when the client keeps it waiting (`GRACE` for an answer, or for a frame to be taken),
//! and takes a new one when the client is back; so clients that stop reading hold places
//! for at most `GRACE` at a time. A turn waits at most `ADMISSION_WAIT` for a place and then
//! goes ahead without one. While a turn waits, the client's protocol pings are answered
//! (its deadline counts the server's silence), and it is not poked (`Transport::waiting`):
//! the pull it waits for takes the rows that land meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket};
use tidemark::error::SyncError;
use tidemark::sync::{Direction, Message, Transport};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::quota::{Book, Refusal};

/// How many pull passes a server runs at once; later ones wait for a place.
pub const PULLS_AT_ONCE: usize = 32;

/// The longest a turn waits for a place before it goes ahead without one.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(30);

/// How long a pass keeps its place while the client keeps it waiting.
pub const GRACE: Duration = Duration::from_secs(2);

/// The places for the server's turns in pull passes, shared by every connection.
#[derive(Clone, Debug)]
pub struct Admission(Arc<Semaphore>);

impl Admission {
    pub fn new(places: usize) -> Admission {
        Admission(Arc::new(Semaphore::new(places.max(1))))
    }
}

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
    /// Where pull passes wait their turn, if they do.
    pub admission: Option<Admission>,
    /// The place of the server's turn under way.
    place: Option<OwnedSemaphorePermit>,
    /// Messages that arrived while a turn waited for its place, in order.
    queued: VecDeque<Message>,
    /// A turn waiting for its place: the message that asked for it, the place's queue
    /// position and when to stop waiting. Kept here, not in `recv`'s future: the engine
    /// cuts `recv` short whenever it pokes the client, and the message and the position in
    /// the queue must survive that. (Shared with `admit`'s future, which also reads the
    /// socket through `self`.)
    waiting: Arc<std::sync::Mutex<Option<Waiting>>>,
}

struct Waiting {
    msg: Message,
    place: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
    until: tokio::time::Instant,
}

impl WsTransport {
    pub fn new(socket: WebSocket, max_frame: usize, idle: Duration) -> WsTransport {
        WsTransport {
            socket,
            max_frame,
            idle,
            last_heard: Instant::now(),
            last_ping: None,
            refused: None,
            fault: None,
            quota: None,
            admission: None,
            place: None,
            queued: VecDeque::new(),
            waiting: Arc::default(),
        }
    }

    fn protocol(&mut self, code: &'static str, message: String) -> SyncError {
        self.fault = Some(Fault { code, message: message.clone() });
        SyncError::Protocol(message)
    }

    /// Sends a close frame and waits briefly for the client's, so the close is clean. When
    /// the client closed first, the WebSocket library has queued its answer (the client's
    /// code echoed) and refuses another close frame: that answer is flushed instead, or the
    /// client would see the connection drop (1006) rather than close.
    pub async fn close(mut self, code: u16, reason: &str) {
        // Close reasons are limited to 123 bytes by the WebSocket protocol.
        let mut reason = reason.to_string();
        while reason.len() > 120 {
            reason.pop();
        }
        let frame = Frame::Close(Some(CloseFrame { code, reason: reason.into() }));
        if self.socket.send(frame).await.is_err() {
            let _ = tokio::time::timeout(Duration::from_secs(2), futures::SinkExt::flush(&mut self.socket)).await;
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
        let send = tokio::time::timeout(self.idle, self.socket.send(Frame::Text(msg.encode().into())));
        tokio::pin!(send);
        let sent = match tokio::time::timeout(GRACE, &mut send).await {
            Ok(sent) => sent,
            // A client slow to take the frame keeps others waiting no longer.
            Err(_) => {
                self.place = None;
                send.await
            }
        };
        // The pull pass is over: its place goes to the next.
        if matches!(msg, Message::End { .. } | Message::Error { .. }) {
            self.place = None;
        }
        match sent {
            Err(_) => Err(SyncError::Connection(format!("the client read nothing for {} s", self.idle.as_secs()))),
            Ok(r) => r.map_err(|e| SyncError::Connection(e.to_string())),
        }
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        if self.waiting.lock().expect("waiting lock").is_none() {
            let msg = match self.queued.pop_front() {
                Some(msg) => msg,
                None if self.place.is_some() => match tokio::time::timeout(GRACE, self.read()).await {
                    Ok(msg) => msg?,
                    // A client slow to answer keeps others waiting no longer.
                    Err(_) => {
                        self.place = None;
                        self.read().await?
                    }
                },
                None => self.read().await?,
            };
            match (&self.admission, sends_next(&msg) && self.place.is_none()) {
                (Some(admission), true) => {
                    let place = Box::pin(admission.0.clone().acquire_owned());
                    *self.waiting.lock().expect("waiting lock") = Some(Waiting { msg, place, until: tokio::time::Instant::now() + ADMISSION_WAIT });
                }
                _ => return Ok(msg),
            }
        }
        self.admit().await?;
        Ok(self.waiting.lock().expect("waiting lock").take().expect("a turn admitted").msg)
    }

    fn waiting(&self) -> bool {
        self.waiting.lock().expect("waiting lock").is_some()
    }
}

/// Whether `msg` makes the server send rows next: it starts a pull, answers the pull's
/// preflight, or acknowledges a batch (only a pass's sender receives the last two). A pass
/// that still has its place goes on; one that gave it back waits for a new one.
fn sends_next(msg: &Message) -> bool {
    matches!(msg, Message::Start { direction: Direction::Pull, .. } | Message::Point { .. } | Message::Ack { .. })
}

impl WsTransport {
    /// Waits (until the turn's `until`) for a place for the server's turn, answering the
    /// client's pings meanwhile and keeping anything else it sends for `recv`. Cut short,
    /// it leaves the turn in `waiting`, still in the queue.
    async fn admit(&mut self) -> Result<(), SyncError> {
        let waiting = self.waiting.clone();
        let until = waiting.lock().expect("waiting lock").as_ref().expect("a turn waiting").until;
        let place = || {
            std::future::poll_fn(|cx| waiting.lock().expect("waiting lock").as_mut().expect("a turn waiting").place.as_mut().poll(cx))
        };
        loop {
            tokio::select! {
                // The semaphore is never closed.
                got = place() => {
                    self.place = got.ok();
                    return Ok(());
                }
                // Go ahead without a place.
                () = tokio::time::sleep_until(until) => return Ok(()),
                msg = self.read() => match msg? {
                    Message::Ping {} => self.send(&Message::Pong {}).await?,
                    other => self.queued.push_back(other),
                },
            }
        }
    }

    /// The next protocol message from the socket, with the transport's deadlines.
    async fn read(&mut self) -> Result<Message, SyncError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::WebSocketUpgrade;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Wire;

    fn text(m: &Message) -> Wire {
        Wire::Text(m.encode().into())
    }

    /// The engine cuts `recv` short whenever it pokes the client. A pull's `start` whose turn
    /// is waiting for a place must survive that (same message, same place in the queue),
    /// the client's pings are answered meanwhile, and the turn goes once the place is free.
    #[tokio::test]
    async fn a_waiting_turn_cut_short_keeps_its_message_and_answers_pings() {
        let admission = Admission::new(1);
        let held = admission.0.clone().acquire_owned().await.unwrap();
        let (done, got) = tokio::sync::oneshot::channel();
        let done = Arc::new(std::sync::Mutex::new(Some(done)));
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |socket| async move {
                    let mut t = WsTransport::new(socket, 1 << 20, Duration::from_secs(30));
                    t.admission = Some(admission);
                    let cut = tokio::time::timeout(Duration::from_millis(400), t.recv()).await;
                    let msg = t.recv().await;
                    let _ = done.lock().unwrap().take().unwrap().send((cut.is_err(), msg, Instant::now()));
                })
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
        let start = Message::Start { session: "s1".into(), direction: Direction::Pull, per_diff: 10, max_diffs: 1 };
        ws.send(text(&start)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(text(&Message::Ping {})).await.unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("a pong while the turn waits").unwrap().unwrap();
        assert_eq!(Message::decode(pong.to_text().unwrap()).unwrap(), Message::Pong {});
        // Past the cut: the turn is waiting again, in its second `recv`.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let freed = Instant::now();
        drop(held);
        let (was_cut, msg, at) = tokio::time::timeout(Duration::from_secs(3), got).await.unwrap().unwrap();
        assert!(was_cut, "the first recv waited for the place and was cut short");
        assert_eq!(msg.unwrap(), start, "the same message, after the cut");
        assert!(at >= freed, "the turn went only once the place was free");
    }
}
