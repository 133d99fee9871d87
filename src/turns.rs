//! Call order for one replica's writes and the reads after them: a write asked for after
//! another commits after it, and a read asked for after a write sees it — awaited or not,
//! as with IndexedDB's own transactions.
//!
//! Why it is needed: a write opens its transaction when its future first runs, and a
//! single write first tries to commit without reading (`Store::commit_expected`); when
//! that attempt is refused (another write got in first) it is made again, reading, in a
//! later transaction. Without turns, `put(b)` then `patch(b)` asked for together could
//! commit the patch first (and fail `NOT_FOUND`), and a `get` asked for after them could
//! read ahead of both.
//!
//! Tickets are taken when the call is made (`Turns::write_ticket`, `Turns::asked`), in
//! call order, before any future runs; waiting happens in the futures.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The writes asked for and finished so far, shared by a replica and its tickets.
#[derive(Default, Clone)]
pub struct Turns(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// Tickets handed out: the next write's number.
    asked: u64,
    /// Every write numbered below this has finished.
    finished: u64,
    /// Finished out of turn (a ticket dropped before its turn came: the write was
    /// abandoned); counted once the writes before them finish.
    early: Vec<u64>,
    waiting: Vec<Waker>,
}

impl State {
    fn finish(&mut self, n: u64) {
        if n != self.finished {
            self.early.push(n);
            return;
        }
        self.finished += 1;
        while let Some(i) = self.early.iter().position(|&e| e == self.finished) {
            self.early.swap_remove(i);
            self.finished += 1;
        }
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }
}

impl Turns {
    /// A place in line for a write asked for now.
    pub fn write_ticket(&self) -> WriteTicket {
        let mut s = self.0.lock().expect("turns lock");
        let n = s.asked;
        s.asked += 1;
        WriteTicket { turns: self.clone(), n }
    }

    /// How many writes have been asked for: a read asked for now waits for them
    /// (`Turns::finished`).
    pub fn asked(&self) -> u64 {
        self.0.lock().expect("turns lock").asked
    }

    /// Whether every write asked for has finished: a read may go to storage at once.
    pub fn idle(&self) -> bool {
        let s = self.0.lock().expect("turns lock");
        s.finished == s.asked
    }

    /// Settles once the first `count` writes asked for have finished.
    pub fn finished(&self, count: u64) -> impl Future<Output = ()> + 'static {
        Wait { turns: self.clone(), count }
    }
}

/// A write's place in line; dropping it (the write committed, failed, or was given up)
/// lets the next one go.
pub struct WriteTicket {
    turns: Turns,
    n: u64,
}

impl WriteTicket {
    /// Settles when every write asked for before this one has finished.
    pub fn turn(&self) -> impl Future<Output = ()> + 'static {
        self.turns.finished(self.n)
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.turns.0.lock().expect("turns lock").finish(self.n);
    }
}

struct Wait {
    turns: Turns,
    count: u64,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.turns.0.lock().expect("turns lock");
        if s.finished >= self.count {
            return Poll::Ready(());
        }
        s.waiting.push(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn ready(f: &mut (impl Future<Output = ()> + Unpin)) -> bool {
        f.now_or_never().is_some()
    }

    #[test]
    fn writes_take_their_turns_in_the_order_they_were_asked_for() {
        let turns = Turns::default();
        let (a, b, c) = (turns.write_ticket(), turns.write_ticket(), turns.write_ticket());
        assert!(ready(&mut Box::pin(a.turn())));
        let mut b_turn = Box::pin(b.turn());
        let mut c_turn = Box::pin(c.turn());
        assert!(!ready(&mut b_turn) && !ready(&mut c_turn));
        drop(a);
        assert!(ready(&mut b_turn));
        assert!(!ready(&mut c_turn), "c waits for b too");
        drop(b);
        assert!(ready(&mut c_turn));
        assert!(!turns.idle());
        drop(c);
        assert!(turns.idle());
    }

    #[test]
    fn a_read_waits_for_the_writes_asked_before_it_and_no_others() {
        let turns = Turns::default();
        let a = turns.write_ticket();
        let mut read = Box::pin(turns.finished(turns.asked()));
        let later = turns.write_ticket();
        assert!(!ready(&mut read));
        drop(a);
        assert!(ready(&mut read), "the write asked for after the read does not hold it");
        assert!(ready(&mut Box::pin(later.turn())));
    }

    #[test]
    fn a_ticket_given_up_before_its_turn_holds_nobody_up() {
        let turns = Turns::default();
        let (a, b, c) = (turns.write_ticket(), turns.write_ticket(), turns.write_ticket());
        let mut c_turn = Box::pin(c.turn());
        drop(b);
        assert!(!ready(&mut c_turn), "a still writes");
        drop(a);
        assert!(ready(&mut c_turn));
        drop(c);
        assert!(turns.idle());
        assert!(ready(&mut Box::pin(turns.finished(turns.asked()))));
    }

    #[test]
    fn waiting_futures_are_woken_when_their_turn_comes() {
        let turns = Turns::default();
        let a = turns.write_ticket();
        let b = turns.write_ticket();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut pool = futures::executor::LocalPool::new();
        let spawn = |name: &'static str, f: Pin<Box<dyn Future<Output = ()>>>| {
            let order = order.clone();
            futures::task::LocalSpawnExt::spawn_local(&pool.spawner(), async move {
                f.await;
                order.lock().unwrap().push(name);
            })
            .unwrap();
        };
        spawn("b", Box::pin(b.turn()));
        spawn("read", Box::pin(turns.finished(2)));
        pool.run_until_stalled();
        assert!(order.lock().unwrap().is_empty());
        drop(a);
        pool.run_until_stalled();
        assert_eq!(*order.lock().unwrap(), vec!["b"]);
        drop(b);
        pool.run_until_stalled();
        assert_eq!(*order.lock().unwrap(), vec!["b", "read"]);
    }
}
