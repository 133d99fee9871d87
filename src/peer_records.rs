//! Every peer record of a replica, ordered by their newest stamps (`PeerRecords`).
//!
//! What a pass derives from all the records — the table a sender forwards
//! (`sync::send`), the marks a receiver answers with (`PeerRecords::marks`) — takes the records
//! whose ops were merged most recently: newest stamp first, ties by db id, records without
//! a stamp last. A server holds a record per client, thousands, and starts a pass for
//! every round of each of them: a store that keeps its records in memory keeps this order
//! with them, updated record by record as commits write them, instead of every pass sorting
//! all of them. A store that reads its records each time builds it then.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::clock::Stamp;
use crate::peer::{Mark, PeerRecord, Point, TableEntry, MAX_MARKS};

/// See the module doc.
#[derive(Clone, Debug, Default)]
pub struct PeerRecords {
    records: BTreeMap<String, PeerRecord>,
    /// Every record's (newest stamp, db id), newest first, with what the marks and the
    /// table take from it: taking the first few then reads nothing else (a lookup in
    /// `records` per record taken was a seventh of a server's CPU under 2,000 clients).
    by_newest: BTreeMap<(Reverse<Option<Stamp>>, String), Ranked>,
}

/// What a pass's marks and forwarded table read of a record (`PeerRecords::ranked`).
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// `PeerRecord::incoming`.
    pub incoming: Point,
    /// The record's entry in a forwarded table, as its JSON text: the entry of
    /// `PeerRecord::in_history` with the largest row (the last of those), if any. Made
    /// once as the record is written: a server forwards the same entries in every pass of
    /// every client, and building and encoding 256 of them per pass was a sixth of its CPU
    /// under 2,000 clients.
    pub forward: Option<Arc<str>>,
}

impl Ranked {
    fn of(id: &str, record: &PeerRecord) -> Ranked {
        let forward = record.in_history.iter().max_by_key(|e| e.row).map(|e| {
            let entry = TableEntry { db_id: id.to_string(), row: e.row, session: e.session.clone() };
            serde_json::to_string(&entry).expect("table entries serialize").into()
        });
        Ranked { incoming: record.incoming, forward }
    }
}

impl PeerRecords {
    pub fn new(records: BTreeMap<String, PeerRecord>) -> PeerRecords {
        let by_newest = crate::sort::map_from(records.iter().map(|(id, r)| ((Reverse(r.newest.clone()), id.clone()), Ranked::of(id, r))));
        PeerRecords { records, by_newest }
    }

    pub fn records(&self) -> &BTreeMap<String, PeerRecord> {
        &self.records
    }

    pub fn get(&self, id: &str) -> Option<&PeerRecord> {
        self.records.get(id)
    }

    /// Sets the record of `id`.
    pub fn insert(&mut self, id: String, record: PeerRecord) {
        if let Some(old) = self.records.get(&id) {
            if old.newest != record.newest {
                self.by_newest.remove(&(Reverse(old.newest.clone()), id.clone()));
            }
        }
        self.by_newest.insert((Reverse(record.newest.clone()), id.clone()), Ranked::of(&id, &record));
        self.records.insert(id, record);
    }

    pub fn remove(&mut self, id: &str) -> Option<PeerRecord> {
        let old = self.records.remove(id)?;
        self.by_newest.remove(&(Reverse(old.newest.clone()), id.to_string()));
        Some(old)
    }

    /// Every record's db id, newest stamp and `Ranked` part, the record with the newest
    /// stamp first (ties by db id; no stamp last).
    pub fn ranked(&self) -> impl Iterator<Item = (&String, Option<&Stamp>, &Ranked)> {
        self.by_newest.iter().map(|((Reverse(newest), id), r)| (id, newest.as_ref(), r))
    }

    /// The marks a replica can vouch for (`peer`'s module doc): origins with a point and a
    /// stamp, at most `MAX_MARKS`, the most recently written first (the likeliest to
    /// matter).
    pub fn marks(&self) -> Vec<Mark> {
        self.ranked().filter_map(|(id, newest, r)| mark(id, r.incoming, newest)).take(MAX_MARKS).collect()
    }

    /// The mark of origin `id` alone, as `marks` would give it (a receiver bound to `id`
    /// takes only `id`'s ops, so no other mark can spare its sender a row).
    pub fn mark_of(&self, id: &str) -> Option<Mark> {
        let r = self.records.get(id)?;
        mark(id, r.incoming, r.newest.as_ref())
    }
}

/// The mark of a record: only an origin with a point and a stamp has one.
fn mark(id: &str, incoming: Point, newest: Option<&Stamp>) -> Option<Mark> {
    if incoming <= 0 {
        return None;
    }
    Some(Mark { origin: id.to_string(), row: incoming, stamp: newest?.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Entry;
    use proptest::prelude::*;

    /// A record with a stamp of `newest` (if any), and points and sessions of `rows`.
    fn record(newest: Option<u64>, rows: u8) -> PeerRecord {
        let entry = |row: u8| Entry { session: format!("s{row}"), row: Point::from(row % 3), transitive: false };
        PeerRecord {
            newest: newest.map(|w| Stamp { version: 1, wall: w, counter: 0, node: "n".into() }),
            incoming: Point::from(rows % 4) - 1,
            in_history: (0..rows % 5).map(entry).collect(),
            ..PeerRecord::new()
        }
    }

    /// The order `ranked` promises, by sorting.
    fn sorted(records: &BTreeMap<String, PeerRecord>) -> Vec<String> {
        let mut all: Vec<(&String, &PeerRecord)> = records.iter().collect();
        all.sort_by(|a, b| b.1.newest.cmp(&a.1.newest).then(a.0.cmp(b.0)));
        all.into_iter().map(|(id, _)| id.clone()).collect()
    }

    proptest! {
        /// After any sequence of writes and removals the records are the last written and
        /// the order is theirs, newest first, exactly as sorting them gives.
        #[test]
        fn the_order_follows_every_write_and_removal(ops in proptest::collection::vec((0u8..12, proptest::option::of(0u64..6), any::<u8>(), any::<bool>()), 0..80)) {
            let mut book = PeerRecords::default();
            let mut plain = BTreeMap::new();
            for (id, newest, rows, remove) in ops {
                let id = format!("p{id}");
                if remove {
                    prop_assert_eq!(book.remove(&id).is_some(), plain.remove(&id).is_some());
                } else {
                    book.insert(id.clone(), record(newest, rows));
                    plain.insert(id, record(newest, rows));
                }
                let order: Vec<String> = book.ranked().map(|(id, _, _)| id.clone()).collect();
                prop_assert_eq!(&order, &sorted(&plain));
                // What `ranked` lends is each record's, in the same order.
                let ranked: Vec<(String, Option<Stamp>, Ranked)> = book.ranked().map(|(id, n, r)| (id.clone(), n.cloned(), r.clone())).collect();
                let want: Vec<(String, Option<Stamp>, Ranked)> = order.iter().map(|id| (id.clone(), plain[id].newest.clone(), Ranked::of(id, &plain[id]))).collect();
                prop_assert_eq!(ranked, want);
                prop_assert_eq!(book.records(), &plain);
            }
            // `mark_of` gives each origin's entry of `marks` (all of them fit here).
            let marks = book.marks();
            for id in plain.keys() {
                prop_assert_eq!(book.mark_of(id), marks.iter().find(|m| m.origin == *id).cloned());
            }
            let rebuilt: Vec<String> = PeerRecords::new(plain.clone()).ranked().map(|(id, _, _)| id.clone()).collect();
            prop_assert_eq!(rebuilt, sorted(&plain));
        }
    }
}
