//! Per-client quotas (DESIGN §5, "Bounded metadata and input": passes and connections per
//! client): how many sync connections one client may hold at once, and how many passes and
//! snapshots the server runs for it per minute.
//!
//! A *client* is who the server can tell apart: with `--secret`, the token's user (all of a
//! user's devices together); without one, the remote IP address — except on loopback, where
//! one address speaks for many clients (a reverse proxy, local tools and benchmarks), and
//! the replica's db id is used instead. Servers that share the secret (`peers::PEER_USER`)
//! are not limited. Connections over the cap are refused with `TOO_MANY_CONNECTIONS`;
//! passes and snapshots over their rate with `RATE_LIMITED` (both close with 1013, "try
//! again later"; clients retry after their backoff). Rates are token buckets: a full
//! minute's allowance may be spent at once, then it refills evenly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits, from the command line (0 turns one off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Most sync connections one client holds at once.
    pub connections: usize,
    /// Most passes (push or pull) the server runs for one client per minute.
    pub passes_per_minute: u32,
    /// Most snapshots the server sends one client per minute.
    pub snapshots_per_minute: u32,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas { connections: 64, passes_per_minute: 3_000, snapshots_per_minute: 10 }
    }
}

/// Who a connection's quotas are counted against.
pub fn client_key(user: Option<&str>, ip: Option<IpAddr>, db_id: &str) -> String {
    match (user, ip) {
        (Some(u), _) => format!("user:{u}"),
        (None, Some(ip)) if !ip.is_loopback() && !ip.to_canonical().is_loopback() => format!("ip:{}", ip.to_canonical()),
        _ => format!("db:{db_id}"),
    }
}

/// Most clients whose buckets are remembered; beyond it, full buckets are forgotten (a
/// full bucket is what a new client gets anyway).
const MAX_TRACKED: usize = 100_000;

/// The server's quota book: open connections and rate buckets, by client key.
#[derive(Default)]
pub struct Book {
    quotas: Quotas,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: HashMap<String, usize>,
    passes: HashMap<String, Bucket>,
    snapshots: HashMap<String, Bucket>,
}

/// A token bucket holding up to `per_minute` tokens, refilled evenly over a minute.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token if there is one; otherwise how long until there is.
    fn take(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_minute) / 60.0;
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(f64::from(per_minute));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn full(&self, per_minute: u32, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * f64::from(per_minute) / 60.0 >= f64::from(per_minute)
    }
}

/// Why a quota refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Book {
    pub fn new(quotas: Quotas) -> Book {
        Book { quotas, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection of `key`; the returned guard uncounts it when dropped.
    pub fn connect(self: &Arc<Book>, key: &str) -> Result<Connection, Refusal> {
        let mut st = self.state();
        let open = st.open.entry(key.to_string()).or_insert(0);
        if self.quotas.connections > 0 && *open >= self.quotas.connections {
            return Err(Refusal {
                code: "TOO_MANY_CONNECTIONS",
                message: format!("this client already holds {open} sync connections, the most it may hold at once"),
            });
        }
        *open += 1;
        Ok(Connection { book: self.clone(), key: key.to_string() })
    }

    /// Spends one pass of `key`'s allowance.
    pub fn pass(&self, key: &str) -> Result<(), Refusal> {
        self.spend(key, "passes", self.quotas.passes_per_minute, |st| &mut st.passes)
    }

    /// Spends one snapshot of `key`'s allowance.
    pub fn snapshot(&self, key: &str) -> Result<(), Refusal> {
        self.spend(key, "snapshots", self.quotas.snapshots_per_minute, |st| &mut st.snapshots)
    }

    fn spend(&self, key: &str, what: &str, per_minute: u32, map: impl Fn(&mut State) -> &mut HashMap<String, Bucket>) -> Result<(), Refusal> {
        if per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut st = self.state();
        let buckets = map(&mut st);
        if buckets.len() >= MAX_TRACKED {
            buckets.retain(|_, b| !b.full(per_minute, now));
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket { tokens: f64::from(per_minute), at: now });
        bucket.take(per_minute, now).map_err(|wait| Refusal {
            code: "RATE_LIMITED",
            message: format!("this client is over its {per_minute} {what} a minute; retry in {} s", wait.as_secs().max(1)),
        })
    }
}

/// One counted connection; uncounted when dropped.
pub struct Connection {
    book: Arc<Book>,
    key: String,
}

impl Connection {
    /// The client the connection is counted against.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut st = self.book.state();
        if let Some(n) = st.open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_and_released() {
        let book = Arc::new(Book::new(Quotas { connections: 2, ..Quotas::default() }));
        let a = book.connect("user:a").unwrap();
        let _b = book.connect("user:a").unwrap();
        assert_eq!(book.connect("user:a").err().map(|r| r.code), Some("TOO_MANY_CONNECTIONS"));
        assert!(book.connect("user:b").is_ok(), "another client is not affected");
        drop(a);
        assert!(book.connect("user:a").is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn rates_allow_a_minute_at_once_then_refuse() {
        let book = Book::new(Quotas { snapshots_per_minute: 3, ..Quotas::default() });
        for _ in 0..3 {
            book.snapshot("db:x").unwrap();
        }
        assert_eq!(book.snapshot("db:x").err().map(|r| r.code), Some("RATE_LIMITED"));
        assert!(book.snapshot("db:y").is_ok());
        let off = Book::new(Quotas { snapshots_per_minute: 0, ..Quotas::default() });
        assert!((0..1000).all(|_| off.snapshot("db:x").is_ok()), "0 turns the limit off");
    }

    #[test]
    fn keys() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(client_key(Some("alice"), Some(far), "d1"), "user:alice");
        assert_eq!(client_key(None, Some(far), "d1"), "ip:203.0.113.9");
        assert_eq!(client_key(None, Some(lo), "d1"), "db:d1");
        assert_eq!(client_key(None, Some(mapped), "d1"), "db:d1");
        assert_eq!(client_key(None, None, "d1"), "db:d1");
    }
}
