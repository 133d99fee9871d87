//! The simulated network: connections whose frames (the real wire format) wait in
//! flight until the scheduler delivers them — in order, or, on a hostile connection,
//! duplicated, reordered or lost. A lost frame on an ordered stream stalls it until a
//! timeout cuts the connection; a cut connection fails both ends' next call.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use tidemark::error::SyncError;
use tidemark::sync::{Message, Transport};

use super::rng::Rng;

/// One connection between two endpoints (side 0 and side 1).
#[derive(Default)]
pub struct Conn {
    /// Frames sent toward each side, not yet delivered.
    pub flight: [VecDeque<String>; 2],
    /// Frames delivered to each side, not yet read.
    pub inbox: [VecDeque<String>; 2],
    /// Cut (a crash, a timeout, a lost frame): both ends fail at once.
    pub cut: bool,
    /// Each side's end went away: frames it sent are still delivered, then the other
    /// side reads the end of the stream.
    pub gone: [bool; 2],
    /// May duplicate and reorder frames (a transport WebSocket is not).
    pub hostile: bool,
    /// Frames each side received (a pass that never ends shows here).
    pub received: [u64; 2],
}

#[derive(Default)]
pub struct Net {
    pub conns: Vec<Conn>,
}

pub type Shared = Rc<RefCell<Net>>;

impl Net {
    pub fn open(&mut self, hostile: bool) -> usize {
        self.conns.push(Conn { hostile, ..Conn::default() });
        self.conns.len() - 1
    }

    pub fn cut(&mut self, id: usize) {
        let c = &mut self.conns[id];
        c.cut = true;
        c.flight = Default::default();
    }

    /// Connections with a frame in flight.
    pub fn pending(&self) -> Vec<usize> {
        (0..self.conns.len()).filter(|&i| !self.conns[i].cut && self.conns[i].flight.iter().any(|q| !q.is_empty())).collect()
    }

    /// Connections neither cut nor closed by both ends.
    pub fn open_conns(&self) -> Vec<usize> {
        (0..self.conns.len()).filter(|&i| !self.conns[i].cut && !self.conns[i].gone.iter().all(|g| *g)).collect()
    }

    /// Whether `side` of connection `id` can read something now (a frame or the end).
    pub fn readable(&self, id: usize, side: usize) -> bool {
        let c = &self.conns[id];
        !c.inbox[side].is_empty() || c.cut || (c.gone[1 - side] && c.flight[side].is_empty())
    }

    /// Delivers one frame of connection `id` (which must have one in flight). On a
    /// hostile connection it may be duplicated, overtaken or lost.
    pub fn deliver(&mut self, id: usize, rng: &mut Rng) {
        let c = &mut self.conns[id];
        let sides: Vec<usize> = (0..2).filter(|&s| !c.flight[s].is_empty()).collect();
        let side = *rng.pick(&sides);
        let q = &mut c.flight[side];
        let at = if c.hostile && q.len() > 1 && rng.chance(1, 4) { rng.below(q.len() as u64) as usize } else { 0 };
        let frame = q.remove(at).expect("a frame in flight");
        if frames_traced() {
            eprintln!("frame on connection {id} to side {side}: {frame}");
        }
        if c.hostile && rng.chance(1, 12) {
            return; // lost: the stream stalls until a timeout cuts it
        }
        if c.hostile && rng.chance(1, 8) {
            c.inbox[side].push_back(frame.clone());
        }
        c.inbox[side].push_back(frame);
    }
}

/// One end of a simulated connection.
pub struct End {
    pub net: Shared,
    pub conn: usize,
    pub side: usize,
}

impl End {
    pub fn pair(net: &Shared, hostile: bool) -> (End, End) {
        let conn = net.borrow_mut().open(hostile);
        (End { net: net.clone(), conn, side: 0 }, End { net: net.clone(), conn, side: 1 })
    }
}

impl Drop for End {
    /// An endpoint that goes away closes its side of the connection (the socket closes
    /// after the frames it sent).
    fn drop(&mut self) {
        self.net.borrow_mut().conns[self.conn].gone[self.side] = true;
    }
}

thread_local! {
    /// The endpoint the task being polled is waiting on, if it waits for a frame.
    pub static BLOCKED: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
}

impl Transport for End {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        super::store::yield_now().await;
        let mut net = self.net.borrow_mut();
        let c = &mut net.conns[self.conn];
        if c.cut || c.gone[1 - self.side] {
            return Err(SyncError::Connection("connection cut".into()));
        }
        c.flight[1 - self.side].push_back(msg.encode());
        Ok(())
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        let (conn, side) = (self.conn, self.side);
        let text = poll_fn(|_| {
            let mut net = self.net.borrow_mut();
            let readable = net.readable(conn, side);
            let c = &mut net.conns[conn];
            if let Some(t) = c.inbox[side].pop_front() {
                c.received[side] += 1;
                return Poll::Ready(Ok(t));
            }
            if readable {
                return Poll::Ready(Err(SyncError::Connection("connection closed".into())));
            }
            BLOCKED.with(|b| b.set(Some((conn, side))));
            Poll::Pending
        })
        .await?;
        Message::decode(&text).map_err(SyncError::Protocol)
    }
}

/// Whether `TIDEMARK_SIM_FRAMES` is set: every frame taken off the wire is printed (before
/// the network loses or duplicates it), to trace a failing seed message by message.
fn frames_traced() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TIDEMARK_SIM_FRAMES").is_some())
}
