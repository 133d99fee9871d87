//! Hybrid logical clock: the timestamps that order every write.
//!
//! A stamp is (schema version, wall ms, counter, node). The schema version comes first so
//! that everything written under a newer schema orders after everything written under an
//! older one: migration output (stamped at the new version with wall 0) then lands after
//! every op of the old version and before any real write of the new one (DESIGN §6).
//! Wall time keeps stamps close to real time so last-writer-wins feels right to people;
//! the counter keeps them strictly increasing on one replica even when the wall clock
//! stalls or jumps back; the node (the writer's db id) breaks ties deterministically.
//!
//! Stamps travel and are stored as one fixed-width string whose byte order equals the
//! stamp order, so storage engines and JS can compare them without parsing.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Hex digits of the schema version part.
const VERSION_DIGITS: usize = 4;
/// Hex digits of the wall-clock part: enough for ms timestamps until the year 2527.
const WALL_DIGITS: usize = 11;
/// Hex digits of the counter part.
const COUNTER_DIGITS: usize = 5;
/// Largest counter before the clock borrows a millisecond from the future.
pub const MAX_COUNTER: u32 = (1 << (4 * COUNTER_DIGITS)) - 1;
/// Largest wall time a stamp can encode.
pub const MAX_WALL: u64 = (1 << (4 * WALL_DIGITS)) - 1;
/// Most hex digits version, wall and counter can take (each at most 16: a u64's).
const HEAD_MAX: usize = 3 * 16;
/// Stamps whose encoding fits this many bytes are serialized from the stack (room for
/// the head too).
const INLINE: usize = 128;
const _: () = assert!(INLINE >= HEAD_MAX);

/// One point in hybrid-logical time.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Stamp {
    pub version: u32,
    pub wall: u64,
    pub counter: u32,
    pub node: String,
}

impl Stamp {
    /// The smallest stamp: older than anything a clock produces.
    pub fn zero() -> Stamp {
        Stamp { version: 0, wall: 0, counter: 0, node: String::new() }
    }

    /// Fixed-width lowercase hex of version, wall and counter, then the node. Written by
    /// hand, not with `format!`: every row a server sends encodes its stamp.
    pub fn encode(&self) -> String {
        let mut head = [0u8; HEAD_MAX];
        let n = self.encode_head(&mut head);
        let mut out = String::with_capacity(n + self.node.len());
        out.push_str(std::str::from_utf8(&head[..n]).expect("hex digits"));
        out.push_str(&self.node);
        out
    }

    /// Writes the hex digits of version, wall and counter at the start of `out` (at least
    /// `HEAD_MAX` bytes); returns how many.
    fn encode_head(&self, out: &mut [u8]) -> usize {
        let mut n = 0;
        let mut hex = |value: u64, digits: usize| {
            // At least `digits`, more if the value needs them (as `{:0w$x}` would).
            let digits = digits.max((64 - value.leading_zeros() as usize).div_ceil(4));
            for i in (0..digits).rev() {
                out[n] = b"0123456789abcdef"[((value >> (4 * i)) & 0xf) as usize];
                n += 1;
            }
        };
        hex(u64::from(self.version), VERSION_DIGITS);
        hex(self.wall, WALL_DIGITS);
        hex(u64::from(self.counter), COUNTER_DIGITS);
        n
    }

    pub fn parse(s: &str) -> Option<Stamp> {
        let head = VERSION_DIGITS + WALL_DIGITS + COUNTER_DIGITS;
        if s.len() < head || !s.is_char_boundary(head) {
            return None;
        }
        let hex = |t: &str| t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let (v, w, c) = (&s[..VERSION_DIGITS], &s[VERSION_DIGITS..VERSION_DIGITS + WALL_DIGITS], &s[VERSION_DIGITS + WALL_DIGITS..head]);
        if !hex(v) || !hex(w) || !hex(c) {
            return None;
        }
        Some(Stamp {
            version: u32::from_str_radix(v, 16).ok()?,
            wall: u64::from_str_radix(w, 16).ok()?,
            counter: u32::from_str_radix(c, 16).ok()?,
            node: s[head..].to_string(),
        })
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.version, self.wall, self.counter, &self.node).cmp(&(other.version, other.wall, other.counter, &other.node))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Serialized as `encode` gives, without building a `String` for it when it is short (as a
/// node id is): every stored and sent row and register carries stamps, and a reset or a
/// server's pass writes tens of thousands of them.
impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; INLINE];
        let n = self.encode_head(&mut buf);
        if n + self.node.len() > INLINE {
            return s.serialize_str(&self.encode());
        }
        buf[n..n + self.node.len()].copy_from_slice(self.node.as_bytes());
        s.serialize_str(std::str::from_utf8(&buf[..n + self.node.len()]).expect("hex digits and a str"))
    }
}

/// Read from the text in place when the deserializer can lend it (JSON without escapes),
/// so the only allocation is the node's.
impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Stamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a timestamp string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Stamp, E> {
                Stamp::parse(s).ok_or_else(|| E::custom(format!("invalid timestamp {s:?}")))
            }
        }
        d.deserialize_str(Text)
    }
}

/// The clock of one replica. It only ever hands out stamps larger than any it has seen.
/// Its stamps carry the schema version the replica writes under.
#[derive(Clone, Debug)]
pub struct Clock {
    node: String,
    last: Stamp,
}

impl Clock {
    /// A clock for `node` writing under schema `version`, resuming after `last` (the newest
    /// stamp the replica stored).
    pub fn new(node: impl Into<String>, version: u32, last: Option<Stamp>) -> Clock {
        let node = node.into();
        let mut last = last.unwrap_or_else(|| Stamp { version, wall: 0, counter: 0, node: node.clone() });
        last.version = version;
        Clock { node, last }
    }

    pub fn last(&self) -> &Stamp {
        &self.last
    }

    /// A fresh stamp for a local write, given the wall clock `now_ms` (which may be skewed
    /// or go backwards: the stamp never does). None when no larger stamp can be encoded
    /// (the clock is at the end of time): the write must fail rather than reuse a stamp.
    /// Received stamps are bounded by `maxClockSkew`, so only a corrupt store gets here.
    pub fn tick(&mut self, now_ms: u64) -> Option<Stamp> {
        let now = now_ms.min(MAX_WALL);
        let next = if now > self.last.wall {
            Stamp { version: self.last.version, wall: now, counter: 0, node: self.node.clone() }
        } else {
            self.successor(self.last.wall, self.last.counter)?
        };
        self.last = next.clone();
        Some(next)
    }

    /// Takes note of a stamp seen on a remote op, so later local stamps order after it.
    pub fn observe(&mut self, remote: &Stamp) {
        if remote.wall > self.last.wall
            || (remote.wall == self.last.wall && remote.counter > self.last.counter)
        {
            self.last = Stamp { version: self.last.version, wall: remote.wall, counter: remote.counter, node: self.node.clone() };
        }
    }

    fn successor(&self, wall: u64, counter: u32) -> Option<Stamp> {
        if counter >= MAX_COUNTER {
            // Counter exhausted within one millisecond: borrow the next millisecond.
            (wall < MAX_WALL).then(|| Stamp { version: self.last.version, wall: wall + 1, counter: 0, node: self.node.clone() })
        } else {
            Some(Stamp { version: self.last.version, wall, counter: counter + 1, node: self.node.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_encodes_as_fixed_width_hex_then_its_node() {
        for (version, wall, counter) in [(0, 0, 0), (1, 1_764_000_000_000, 17), (0xffff, MAX_WALL, MAX_COUNTER), (0x1_0000, 5, 5)] {
            let s = Stamp { version, wall, counter, node: "ab12".into() };
            assert_eq!(s.encode(), format!("{version:04x}{wall:011x}{counter:05x}ab12"));
        }
    }

    /// Serialized from the stack when short, as `encode` when long; read back from lent
    /// text, from text with escapes (serde_json then hands over a copy) and from a
    /// `Value`; anything else refused.
    #[test]
    fn a_stamp_serializes_as_its_encoding_and_reads_back_from_any_text() {
        for node in ["ab12".to_string(), "n".repeat(INLINE - 19), "n".repeat(INLINE - 20), "é".repeat(200)] {
            let s = Stamp { version: 0xffff, wall: MAX_WALL, counter: MAX_COUNTER, node };
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.encode()));
            assert_eq!(serde_json::from_str::<Stamp>(&json).unwrap(), s);
            assert_eq!(serde_json::from_value::<Stamp>(serde_json::Value::String(s.encode())).unwrap(), s);
        }
        let s = Stamp { version: 1, wall: 2, counter: 3, node: "ab".into() };
        let escaped = format!("\"{}\\u0061b\"", &s.encode()[..20]);
        assert_eq!(serde_json::from_str::<Stamp>(&escaped).unwrap(), s);
        assert!(serde_json::from_str::<Stamp>("\"0001zz\"").is_err());
        assert!(serde_json::from_str::<Stamp>("17").is_err());
    }

    #[test]
    fn encoding_round_trips_and_sorts_like_stamps() {
        let a = Stamp { version: 1, wall: 1_700_000_000_000, counter: 3, node: "ab12".into() };
        let b = Stamp { version: 1, wall: 1_700_000_000_000, counter: 12, node: "0000".into() };
        let newer_schema = Stamp { version: 2, wall: 0, counter: 0, node: "".into() };
        assert_eq!(Stamp::parse(&a.encode()), Some(a.clone()));
        assert!(a < b && b < newer_schema);
        assert!(a.encode() < b.encode() && b.encode() < newer_schema.encode());
        assert_eq!(Stamp::parse("zz"), None);
        assert_eq!(Stamp::parse("00010000000000g00000ab"), None);
    }

    #[test]
    fn tick_survives_a_clock_that_jumps_back() {
        let mut c = Clock::new("n1", 1, None);
        let a = c.tick(1000).unwrap();
        let b = c.tick(500).unwrap();
        let d = c.tick(1000).unwrap();
        assert!(a < b && b < d);
        assert_eq!(b.wall, 1000);
    }

    #[test]
    fn observe_orders_later_local_writes_after_remote_ones() {
        let mut c = Clock::new("n1", 1, None);
        c.tick(10).unwrap();
        let remote = Stamp { version: 1, wall: 99_999, counter: 7, node: "zz".into() };
        c.observe(&remote);
        let next = c.tick(10).unwrap();
        assert!(next > remote);
        assert_eq!(next.node, "n1");
    }

    #[test]
    fn counter_overflow_borrows_a_millisecond() {
        let mut c = Clock::new("n", 1, Some(Stamp { version: 1, wall: 5, counter: MAX_COUNTER, node: "n".into() }));
        let s = c.tick(5).unwrap();
        assert_eq!((s.wall, s.counter), (6, 0));
    }

    #[test]
    fn a_clock_at_the_end_of_time_refuses_instead_of_repeating() {
        let mut c = Clock::new("n", 1, Some(Stamp { version: 1, wall: MAX_WALL, counter: MAX_COUNTER - 1, node: "n".into() }));
        let last = c.tick(5).unwrap();
        assert_eq!((last.wall, last.counter), (MAX_WALL, MAX_COUNTER));
        assert_eq!(c.tick(5), None);
        assert_eq!(c.tick(u64::MAX), None);
        assert_eq!(c.last(), &last);
    }
}
