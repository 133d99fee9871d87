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
use std::collections::{BTreeMap, BTreeSet};

use crate::clock::Stamp;
use crate::peer::{Mark, PeerRecord, MAX_MARKS};

/// See the module doc.
#[derive(Clone, Debug, Default)]
pub struct PeerRecords {
    records: BTreeMap<String, PeerRecord>,
    /// Every record's (newest stamp, db id), newest first.
    by_newest: BTreeSet<(Reverse<Option<Stamp>>, String)>,
}

impl PeerRecords {
    pub fn new(records: BTreeMap<String, PeerRecord>) -> PeerRecords {
        let by_newest = records.iter().map(|(id, r)| (Reverse(r.newest.clone()), id.clone())).collect();
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
        self.by_newest.insert((Reverse(record.newest.clone()), id.clone()));
        self.records.insert(id, record);
    }

    pub fn remove(&mut self, id: &str) -> Option<PeerRecord> {
        let old = self.records.remove(id)?;
        self.by_newest.remove(&(Reverse(old.newest.clone()), id.to_string()));
        Some(old)
    }

    /// Every record, the one with the newest stamp first (ties by db id; no stamp last).
    pub fn newest_first(&self) -> impl Iterator<Item = (&String, &PeerRecord)> {
        self.by_newest.iter().map(|(_, id)| (id, &self.records[id]))
    }

    /// The marks a replica can vouch for (`peer`'s module doc): origins with a point and a
    /// stamp, at most `MAX_MARKS`, the most recently written first (the likeliest to
    /// matter).
    pub fn marks(&self) -> Vec<Mark> {
        self.newest_first()
            .filter(|(_, r)| r.incoming > 0)
            .filter_map(|(id, r)| Some(Mark { origin: id.clone(), row: r.incoming, stamp: r.newest.clone()? }))
            .take(MAX_MARKS)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(newest: Option<u64>) -> PeerRecord {
        PeerRecord { newest: newest.map(|w| Stamp { version: 1, wall: w, counter: 0, node: "n".into() }), ..PeerRecord::new() }
    }

    /// The order `newest_first` promises, by sorting.
    fn sorted(records: &BTreeMap<String, PeerRecord>) -> Vec<String> {
        let mut all: Vec<(&String, &PeerRecord)> = records.iter().collect();
        all.sort_by(|a, b| b.1.newest.cmp(&a.1.newest).then(a.0.cmp(b.0)));
        all.into_iter().map(|(id, _)| id.clone()).collect()
    }

    proptest! {
        /// After any sequence of writes and removals the records are the last written and
        /// the order is theirs, newest first, exactly as sorting them gives.
        #[test]
        fn the_order_follows_every_write_and_removal(ops in proptest::collection::vec((0u8..12, proptest::option::of(0u64..6), any::<bool>()), 0..80)) {
            let mut book = PeerRecords::default();
            let mut plain = BTreeMap::new();
            for (id, newest, remove) in ops {
                let id = format!("p{id}");
                if remove {
                    prop_assert_eq!(book.remove(&id).is_some(), plain.remove(&id).is_some());
                } else {
                    book.insert(id.clone(), record(newest));
                    plain.insert(id, record(newest));
                }
                let order: Vec<String> = book.newest_first().map(|(id, _)| id.clone()).collect();
                prop_assert_eq!(order, sorted(&plain));
                prop_assert_eq!(book.records(), &plain);
            }
            let rebuilt: Vec<String> = PeerRecords::new(plain.clone()).newest_first().map(|(id, _)| id.clone()).collect();
            prop_assert_eq!(rebuilt, sorted(&plain));
        }
    }
}
