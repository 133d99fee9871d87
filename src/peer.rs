//! What one replica remembers about one peer: sync points and the session histories that
//! make them safe (DESIGN §5, "Identity and positions" and "Fast-forward and safety").
//!
//! Points only move forward. A point is trusted for a pass only through a session both
//! sides still remember: a peer restored from a backup has forgotten the sessions created
//! after the backup, so it is never fast-forwarded past rows it lost.
//!
//! # Per-origin high-water marks
//!
//! A replica's *mark* for an origin X is what it can prove it holds of X's own writes: it
//! has merged every op X wrote with `originRow <= row`, and the newest stamp among X's
//! ops it merged is `stamp`. `row` is `incoming[X]` — a replica that merged X's log up to
//! row n (directly, by snapshot, or vouched for by a complete pass's forwarded table) has
//! merged every op X wrote at rows up to n, whatever path they took. `stamp` is kept per
//! record (`newest`), raised in the same commit that merges X's ops. A sender skips an op
//! of X only if it is within both: its origin row `<= row` and its stamp `<= stamp`. The
//! stamp is what keeps a restored X safe: X restored from a backup keeps its db id and
//! reuses row numbers, but its new ops carry newer stamps than any it wrote before.

use serde::{Deserialize, Serialize};

use crate::clock::Stamp;

/// A position in some replica's row space; −1 means "nothing yet".
pub type Point = i64;

/// How many (session, row) entries are kept per peer and direction.
pub const HISTORY: usize = 8;

/// One remembered session: the pass `session` established `row`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub session: String,
    pub row: Point,
    /// Learned from a third replica's table rather than from a pass with this peer; used
    /// only once the peer confirms it still remembers the session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transitive: bool,
}

/// One row of a sender's `incoming` table, forwarded after a complete pass (`end`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableEntry {
    pub db_id: String,
    pub row: Point,
    pub session: String,
}

/// One replica's record of one peer (keyed by the peer's db id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRecord {
    /// `incoming[peer]`: the last row of the peer's row space merged here.
    #[serde(default = "none")]
    pub incoming: Point,
    /// Sessions that produced incoming points, in the order they were first noted.
    #[serde(default)]
    pub in_history: Vec<Entry>,
    /// `outgoing[peer]`: the last own row the peer acknowledged (status and lag only).
    #[serde(default = "none")]
    pub outgoing: Point,
    /// Sessions in which this replica sent rows to the peer, with the last acked row.
    #[serde(default)]
    pub out_history: Vec<Entry>,
    /// The newest stamp of the ops this peer wrote (as their origin) merged here: the
    /// stamp half of its per-origin mark (see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<Stamp>,
    /// Server bookkeeping, absent elsewhere: on a server that checks tokens, the user the
    /// peer's db id is bound to (only that user's connections may use it: origins are bound
    /// to identity, DESIGN §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Server bookkeeping, absent elsewhere: when the record was last written (ms since the
    /// epoch), for pruning by a size policy. Losing a record costs only a re-send or a
    /// snapshot (no session in common means starting from the beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
}

/// Most marks a preflight answer carries, and accepts (DESIGN §5: bounded metadata).
pub const MAX_MARKS: usize = 256;

/// One origin's high-water mark, as a receiver reports it in its preflight answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub origin: String,
    pub row: Point,
    pub stamp: Stamp,
}

fn none() -> Point {
    -1
}

impl PeerRecord {
    pub fn new() -> PeerRecord {
        PeerRecord { incoming: -1, outgoing: -1, ..Default::default() }
    }

    /// Max-merges an incoming point: a smaller point changes nothing.
    pub fn merge_incoming(&mut self, row: Point) {
        self.incoming = self.incoming.max(row);
    }

    /// Raises the newest stamp merged of this peer's own ops.
    pub fn note_newest(&mut self, stamp: &Stamp) {
        if self.newest.as_ref().is_none_or(|n| n < stamp) {
            self.newest = Some(stamp.clone());
        }
    }

    pub fn merge_outgoing(&mut self, row: Point) {
        self.outgoing = self.outgoing.max(row);
    }

    /// Records that `session` has carried this peer's rows up to `row` here.
    pub fn note_incoming(&mut self, session: &str, row: Point, transitive: bool) {
        self.merge_incoming(row);
        note(&mut self.in_history, session, row, transitive);
    }

    /// Records that the peer acknowledged own rows up to `row` in `session`.
    pub fn note_outgoing(&mut self, session: &str, row: Point) {
        note(&mut self.out_history, session, row, false);
    }

    /// The newest incoming entry whose session the peer still remembers, given the peer's
    /// own (session, row) list for us; the point is the smaller of the two rows, since
    /// each side only vouches for what it recorded.
    pub fn common_point(&self, peer_sessions: &[Entry]) -> Option<(Point, String)> {
        self.in_history
            .iter()
            .filter(|e| !e.transitive)
            .filter_map(|e| {
                peer_sessions.iter().find(|p| p.session == e.session).map(|p| (e.row.min(p.row), e.session.clone()))
            })
            .max_by_key(|(row, _)| *row)
    }

    /// The newest session this replica sent under to the peer, if any.
    pub fn newest_out(&self) -> Option<&Entry> {
        self.out_history.iter().max_by_key(|e| e.row)
    }

    pub fn newest_in(&self) -> Option<&Entry> {
        self.in_history.iter().filter(|e| !e.transitive).max_by_key(|e| e.row)
    }
}

/// Notes that `session` reached `row`: rows only grow, a direct entry stays direct, and a
/// new session goes last. A full history drops the entry added first — never the one just
/// added. (It used to drop the lowest rows: after a peer's restore, or beside forwarded
/// entries of higher rows, that was the entry just added, so every new pass with that peer
/// lost its point and a capped pass restarted from the same place forever —
/// model/README.md §5 item 2. This is the model's `note` with its `history_evicts_oldest`
/// rule on.)
fn note(history: &mut Vec<Entry>, session: &str, row: Point, transitive: bool) {
    if let Some(e) = history.iter_mut().find(|e| e.session == session) {
        e.row = e.row.max(row);
        e.transitive &= transitive;
    } else {
        history.push(Entry { session: session.to_string(), row, transitive });
    }
    if history.len() > HISTORY {
        let drop = history.len() - HISTORY;
        history.drain(..drop);
    }
}

/// A fresh random session id.
pub fn new_session() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the platform has a random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str, row: Point) -> Entry {
        Entry { session: s.into(), row, transitive: false }
    }

    #[test]
    fn points_only_move_forward() {
        let mut p = PeerRecord::new();
        for row in [5, 4, -1] {
            p.merge_incoming(row);
        }
        assert_eq!(p.incoming, 5);
        p.note_incoming("s", 3, false);
        assert_eq!(p.incoming, 5);
    }

    #[test]
    fn common_point_falls_back_to_what_both_remember() {
        let mut p = PeerRecord::new();
        p.note_incoming("a", 10, false);
        p.note_incoming("b", 20, false);
        p.note_incoming("c", 30, false);
        // The peer was restored from a backup taken during session b, at its row 15.
        let remembered = [e("a", 10), e("b", 15)];
        assert_eq!(p.common_point(&remembered), Some((15, "b".into())));
        assert_eq!(p.common_point(&[]), None);
        assert_eq!(p.common_point(&[e("c", 30), e("a", 10)]), Some((30, "c".into())));
    }

    #[test]
    fn transitive_entries_never_count_as_direct() {
        let mut p = PeerRecord::new();
        p.note_incoming("x", 50, true);
        assert_eq!(p.incoming, 50);
        assert_eq!(p.common_point(&[e("x", 50)]), None);
    }

    /// P5 (model/README.md §5 item 2): after the peer's restore, the session of a new pass
    /// notes a row below every entry of a full history; it must survive, or the next pass
    /// cannot find its point and a capped pass restarts from the same place forever.
    #[test]
    fn no_pass_loops_forever_when_the_entry_just_noted_has_the_lowest_row() {
        let mut p = PeerRecord::new();
        for i in 0..HISTORY {
            p.note_incoming(&format!("before{i}"), 100 + i as Point, false);
        }
        // The peer, restored to its row 40, pushes rows 41..50 in a new session.
        p.note_incoming("after", 50, false);
        assert_eq!(p.in_history.len(), HISTORY);
        assert!(p.in_history.iter().any(|e| e.session == "after" && e.row == 50), "{:?}", p.in_history);
        assert!(!p.in_history.iter().any(|e| e.session == "before0"), "the entry noted longest ago goes");
        // Its next pass finds the point where the last one ended.
        assert_eq!(p.common_point(&[e("after", 50)]), Some((50, "after".into())));
        // Noting a session again updates it where it is; the next new one drops the
        // oldest again.
        p.note_incoming("after", 55, false);
        p.note_incoming("next", 60, false);
        assert_eq!(p.in_history.last().map(|e| (e.session.as_str(), e.row)), Some(("next", 60)));
        assert!(p.in_history.iter().any(|e| e.session == "after" && e.row == 55));
        assert!(!p.in_history.iter().any(|e| e.session == "before1"));
    }

    #[test]
    fn history_is_short() {
        let mut p = PeerRecord::new();
        for i in 0..20 {
            p.note_outgoing(&format!("s{i}"), i);
        }
        assert_eq!(p.out_history.len(), HISTORY);
        assert_eq!(p.newest_out().unwrap().session, "s19");
    }
}
