//! What one instance knows about one library's row stream: every writer's position, its own
//! unfinished row ids, and the **persisted-up-to** position readers may be shown (DESIGN §12).
//!
//! This is the bookkeeping of Synapse's `MultiWriterIdGenerator`
//! (`synapse/storage/util/id_generators.py`) ported to Rust, without any I/O, so
//! `positions` can drive it from the database and the rules stay in one place:
//! - a writer's **position** `W` promises that every row id `<= W` it allocated is finished
//!   (committed or rolled back) and that it will never allocate one `<= W` again;
//! - `persisted_up_to` is the minimum over writers' positions (our own only while we have
//!   something in flight: any id we allocate later is above every id seen so far), stepped
//!   forward through gap-free runs of ids known to be finished (`known`);
//! - an idle writer's token is the newest id it has seen, so it never holds readers back.
//!
//! Differences from Synapse: positions start at 0 and ids at 1 (Synapse starts at 1 and 2),
//! so "no position" is told apart by `Option` rather than by zero; writers can be removed
//! (a dead or departed writer, see `positions`); and the tracker can be *held* — while the
//! instance may have missed news of a writer (its LISTEN connection is back after a gap, and
//! the table has not been re-read since), evidence is collected but the persisted-up-to
//! position does not move.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

#[derive(Debug)]
pub(crate) struct Tracker {
    instance: String,
    writer: bool,
    /// Every known writer's position (ours too when we are a writer).
    positions: BTreeMap<String, i64>,
    /// Each writer's incarnation (`stream_positions.joined`, new each time it joins after
    /// being dropped), so news about an earlier incarnation cannot undo a later one.
    joined: BTreeMap<String, i64>,
    /// Ids we allocated whose transaction has not finished yet.
    unfinished: BTreeSet<i64>,
    /// Allocations under way, keyed by the newest id seen when each started (a multiset):
    /// ids they return may be above that, so our position must not pass it meanwhile.
    fetching: BTreeMap<i64, usize>,
    /// Our finished ids above our position (smaller ones are still unfinished).
    finished: BTreeSet<i64>,
    persisted: i64,
    /// Ids known finished above `persisted`, to step it through gap-free runs.
    known: BinaryHeap<Reverse<i64>>,
    /// The newest id seen allocated by anyone (our allocations, others' positions).
    max_seen: i64,
    /// Our token: our position, or more when we have nothing in flight.
    max_local: i64,
    held: bool,
    /// A writer was removed since `take_removed` last asked.
    removed: bool,
    /// When each writer's entry was last confirmed, in `stamp` units (see `remove_absent`).
    learned: BTreeMap<String, u64>,
    stamp: u64,
}

impl Tracker {
    pub(crate) fn new(instance: &str, writer: bool) -> Tracker {
        Tracker {
            instance: instance.to_string(),
            writer,
            positions: BTreeMap::new(),
            joined: BTreeMap::new(),
            unfinished: BTreeSet::new(),
            fetching: BTreeMap::new(),
            finished: BTreeSet::new(),
            persisted: 0,
            known: BinaryHeap::new(),
            max_seen: 0,
            max_local: 0,
            held: false,
            removed: false,
            learned: BTreeMap::new(),
            stamp: 0,
        }
    }

    // ----- start-up (Synapse's `_load_current_ids`) -----

    /// Start-up, step 1: the writers' positions as stored in `stream_positions`. Returns the
    /// position above which committed rows must be read for step 2 (the smallest), or `None`
    /// when no writer has a position (then step 2 is [`Tracker::load_max_row`]).
    pub(crate) fn load_positions(
        &mut self,
        stored: impl IntoIterator<Item = (String, i64, i64)>,
    ) -> Option<i64> {
        for (instance, row, joined) in stored {
            self.learned.insert(instance.clone(), self.stamp);
            self.joined.insert(instance.clone(), joined);
            self.positions.insert(instance, row);
        }
        let min = self.positions.values().min().copied();
        if let Some(min) = min {
            self.persisted = min;
        }
        min
    }

    /// Start-up, step 2: the committed row ids above the smallest position, ascending. They
    /// are finished, so the persisted-up-to position steps through their gap-free runs.
    pub(crate) fn load_rows(&mut self, ids: &[i64]) {
        for &id in ids {
            self.add_persisted(Some(id));
        }
    }

    /// Start-up, step 2 when no writer has a position: no writer ever joined, so nothing is
    /// in flight and every stored row is persisted.
    pub(crate) fn load_max_row(&mut self, max_row: i64) {
        self.persisted = self.persisted.max(max_row);
    }

    /// Start-up, step 3. A writer starts at the newest finished position known — the largest
    /// stored position or the persisted-up-to position — never 0: it has nothing in flight,
    /// and every id it allocates from now on is above every id allocated so far. Returns that
    /// start position for a writer (to be stored), `None` for a reader.
    pub(crate) fn finish_load(&mut self) -> Option<i64> {
        let top = self
            .positions
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.persisted);
        self.max_seen = top;
        self.max_local = top;
        if self.writer {
            self.positions.insert(self.instance.clone(), top);
            Some(top)
        } else {
            None
        }
    }

    // ----- our own allocations -----

    /// An allocation starts: until [`Tracker::end_fetch`], our position stays at or below the
    /// newest id seen now. Returns the key to end it with.
    pub(crate) fn begin_fetch(&mut self) -> i64 {
        let key = self.max_seen;
        *self.fetching.entry(key).or_default() += 1;
        key
    }

    /// An allocation ends: `ids` are now unfinished (none when it failed or was cancelled).
    pub(crate) fn end_fetch(&mut self, key: i64, ids: &[i64]) {
        self.unfinished.extend(ids.iter().copied());
        if let Some(&last) = ids.iter().max() {
            self.max_seen = self.max_seen.max(last);
        }
        if let Some(count) = self.fetching.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.fetching.remove(&key);
            }
        }
        if ids.is_empty() {
            // Nothing new is in flight: our position may move now (Synapse waits for the next
            // finish; doing it here keeps an idle writer's token current).
            self.mark_finished(&[]);
        }
    }

    /// Our ids whose transaction ended (committed or rolled back): our position advances to
    /// the largest finished id below every unfinished one (`_mark_ids_as_finished`).
    pub(crate) fn mark_finished(&mut self, ids: &[i64]) {
        for id in ids {
            self.unfinished.remove(id);
            self.finished.insert(*id);
        }
        let new_position = if self.in_flight() {
            let fetch_floor = self.fetching.keys().next().map(|k| k + 1);
            let min_unfinished = match (self.unfinished.first().copied(), fetch_floor) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => unreachable!("in flight"),
            };
            let below: Vec<i64> = self.finished.range(..min_unfinished).copied().collect();
            for id in &below {
                self.finished.remove(id);
            }
            below.last().copied()
        } else {
            let top = self.finished.last().copied();
            self.finished.clear();
            top
        };
        if let Some(new_position) = new_position {
            let current = self.positions.get(&self.instance).copied().unwrap_or(0);
            self.positions
                .insert(self.instance.clone(), current.max(new_position));
            self.max_local = self.max_local.max(current).max(new_position);
        }
        if ids.is_empty() {
            self.add_persisted(None);
        }
        for &id in ids {
            self.add_persisted(Some(id));
        }
    }

    fn in_flight(&self) -> bool {
        !self.unfinished.is_empty() || !self.fetching.is_empty()
    }

    // ----- other writers -----

    /// Another writer's position, told by hand (Synapse's `advance`): see [`Tracker::observe`].
    #[cfg(test)]
    pub(crate) fn advance(&mut self, instance: &str, row: i64) {
        self.observe(instance, row, None);
    }

    /// Another writer's position, announced or read from the table, with the incarnation it
    /// belongs to when known. Positions only move forward; a writer we did not know joins the
    /// minimum; news about an incarnation older than the one we know is ignored.
    pub(crate) fn observe(&mut self, instance: &str, row: i64, joined: Option<i64>) {
        if self.note(instance, row, joined) {
            self.add_persisted(None);
        }
    }

    /// Several writers' positions from one read of the table (or one allocation's), taken
    /// together: the persisted-up-to position is worked out once all of them are in. One at
    /// a time, a writer the read shows at an advanced position could move it past the
    /// in-flight ids of a writer the same read shows joining, before that one is known.
    pub(crate) fn observe_all(&mut self, read: impl IntoIterator<Item = (String, i64, Option<i64>)>) {
        let mut any = false;
        for (instance, row, joined) in read {
            any |= self.note(&instance, row, joined);
        }
        if any {
            self.add_persisted(None);
        }
    }

    /// `observe` without working out the persisted-up-to position. Whether it took the news.
    fn note(&mut self, instance: &str, row: i64, joined: Option<i64>) -> bool {
        if instance == self.instance {
            return false;
        }
        if let (Some(&known), Some(joined)) = (self.joined.get(instance), joined) {
            if joined < known {
                return false;
            }
        }
        if let Some(joined) = joined {
            self.joined.insert(instance.to_string(), joined);
        }
        self.stamp += 1;
        self.learned.insert(instance.to_string(), self.stamp);
        let entry = self.positions.entry(instance.to_string()).or_insert(row);
        *entry = (*entry).max(row);
        self.max_seen = self.max_seen.max(row);
        self.known.push(Reverse(row));
        true
    }

    /// Writers found in `stream_positions` by an allocating transaction *after* its ids were
    /// drawn: any writer whose ids could be below ours had joined by then. Only writers (or
    /// incarnations) we did not know are taken; known ones keep what we were told.
    pub(crate) fn learn_new(&mut self, stored: impl IntoIterator<Item = (String, i64, i64)>) {
        let new: Vec<(String, i64, Option<i64>)> = stored
            .into_iter()
            .filter(|(instance, _, joined)| match self.joined.get(instance) {
                _ if !self.positions.contains_key(instance) => true,
                Some(known) => joined > known,
                None => false,
            })
            .map(|(instance, row, joined)| (instance, row, Some(joined)))
            .collect();
        self.observe_all(new);
    }

    /// A writer that is gone for good (it left, or was found dead with nothing in flight):
    /// it no longer holds the minimum — unless we already know a later incarnation of it.
    pub(crate) fn remove(&mut self, instance: &str, joined: Option<i64>) {
        if instance == self.instance {
            return;
        }
        if let (Some(&known), Some(joined)) = (self.joined.get(instance), joined) {
            if known > joined {
                return;
            }
        }
        self.joined.remove(instance);
        self.learned.remove(instance);
        if self.positions.remove(instance).is_some() {
            self.removed = true;
            self.add_persisted(None);
        }
    }

    /// Whether a writer was removed since the last call. Its rows that committed after the
    /// last position it announced (it died between a commit and storing its position) are
    /// finished, but nobody will announce them: the caller reads the committed rows above
    /// the persisted-up-to position and hands them to `load_rows`, so they do not stay
    /// hidden until some other writer's rows pass them.
    pub(crate) fn take_removed(&mut self) -> bool {
        std::mem::take(&mut self.removed)
    }

    /// Asks `take_removed` to say so again (the read it led to failed).
    pub(crate) fn keep_removed(&mut self) {
        self.removed = true;
    }

    /// The current stamp, taken before a table read is issued (see [`Tracker::remove_absent`]).
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp
    }

    /// After a table read issued at `issued`: writers missing from it were deleted from the
    /// table (they left or were fenced) — unless we learned of them after the read was issued,
    /// in which case the read may simply predate their joining. Returns those removed.
    pub(crate) fn remove_absent(&mut self, present: &BTreeSet<String>, issued: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .positions
            .keys()
            .filter(|w| **w != self.instance && !present.contains(*w))
            .filter(|w| self.learned.get(*w).is_none_or(|&at| at <= issued))
            .cloned()
            .collect();
        for w in &gone {
            self.remove(w, None);
        }
        gone
    }

    /// Whether the persisted-up-to position is held (`set_held`).
    pub(crate) fn held(&self) -> bool {
        self.held
    }

    /// Holds (or releases) the persisted-up-to position: see the module doc.
    pub(crate) fn set_held(&mut self, held: bool) {
        if self.held != held {
            self.held = held;
            if !held {
                self.add_persisted(None);
            }
        }
    }

    // ----- the persisted-up-to position (`_add_persisted_position`) -----

    fn add_persisted(&mut self, id: Option<i64>) {
        if let Some(id) = id {
            self.known.push(Reverse(id));
        }
        let ours = self.positions.get(&self.instance).copied();
        let others = self
            .positions
            .iter()
            .filter(|(name, _)| **name != self.instance)
            .map(|(_, &row)| row)
            .min();
        // Our own position counts only while we have something in flight: anything we
        // allocate later is above every position seen so far.
        let mut min = others.or(ours);
        if let Some(ours) = ours {
            if self.in_flight() {
                min = Some(min.map_or(ours, |m| m.min(ours)));
            }
        }
        if !self.held {
            if let Some(min) = min {
                self.persisted = self.persisted.max(min);
            }
        }
        self.max_local = self.max_local.max(self.persisted);
        if !self.in_flight() {
            self.max_local = self.max_local.max(self.max_seen);
        }
        if self.held {
            return;
        }
        while let Some(&Reverse(next)) = self.known.peek() {
            if next <= self.persisted {
                self.known.pop();
            } else if next == self.persisted + 1 {
                self.known.pop();
                self.persisted += 1;
            } else {
                break;
            }
        }
    }

    // ----- reading -----

    /// Every row id at or below this has finished: the bound on what clients are shown.
    pub(crate) fn persisted_up_to(&self) -> i64 {
        self.persisted
    }

    /// Every known writer's position (`get_positions`).
    pub(crate) fn positions(&self) -> BTreeMap<String, i64> {
        self.positions.clone()
    }

    /// `positions` as announced: ours with the idle advance (`token_for_writer`), which is
    /// what `stream_positions` holds and the other instances read — `positions` keeps ours
    /// as of our last write, as Synapse's `get_positions` does. For the status, so an
    /// operator reads the same figure for a writer whichever instance answers.
    pub(crate) fn announced_positions(&self) -> BTreeMap<String, i64> {
        let mut positions = self.positions.clone();
        if let Some(ours) = positions.get_mut(&self.instance) {
            *ours = (*ours).max(self.max_local);
        }
        positions
    }

    /// The newest position we can vouch for for `instance` (`get_current_token_for_writer`):
    /// ours is our token; a writer we do not know is taken to start at the persisted-up-to
    /// position (a new writer wrote nothing below it).
    pub(crate) fn token_for_writer(&self, instance: &str) -> i64 {
        if instance == self.instance {
            return self.max_local;
        }
        self.positions
            .get(instance)
            .copied()
            .unwrap_or(self.persisted)
            .max(self.persisted)
    }

    /// Our own position without the idle advance (`get_minimal_local_current_token`).
    pub(crate) fn minimal_local_token(&self) -> i64 {
        self.positions
            .get(&self.instance)
            .copied()
            .unwrap_or(self.persisted)
    }
}

#[cfg(test)]
mod simulation;

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirrors Synapse's `test_get_persisted_upto_position` without a database: the same
    /// steps, through the tracker alone.
    #[test]
    fn persisted_up_to_steps_through_gap_free_runs_only() {
        let mut t = Tracker::new("worker", false);
        let min = t.load_positions([("first".into(), 3, 1), ("second".into(), 5, 2)]);
        assert_eq!(min, Some(3));
        t.load_rows(&[5]);
        assert_eq!(t.finish_load(), None);
        assert_eq!(t.persisted_up_to(), 3);
        t.advance("first", 6);
        assert_eq!(t.persisted_up_to(), 6);
        t.advance("second", 9);
        assert_eq!(t.persisted_up_to(), 6, "7 and 8 unseen");
        t.advance("first", 8);
        assert_eq!(t.persisted_up_to(), 9);
    }

    #[test]
    fn a_held_tracker_collects_evidence_but_does_not_move_until_released() {
        let mut t = Tracker::new("me", true);
        t.load_positions([("other".into(), 2, 1)]);
        assert_eq!(t.finish_load(), Some(2));
        t.set_held(true);
        t.advance("other", 5);
        assert_eq!(t.persisted_up_to(), 2);
        t.set_held(false);
        assert_eq!(t.persisted_up_to(), 5);
    }

    /// One read of the table that shows a writer past an id and another writer joining
    /// below it (that id in flight) never moves the position past the joiner's start,
    /// whatever order the read lists them in; so does one allocation's.
    #[test]
    fn writers_from_one_read_are_taken_together() {
        let mut t = Tracker::new("me", false);
        t.load_positions([("a".into(), 3, 1)]);
        assert_eq!(t.finish_load(), None);
        t.observe_all([("a".into(), 5, Some(1)), ("c".into(), 3, Some(2))]);
        assert_eq!(t.persisted_up_to(), 3, "c may hold 4 in flight");
        t.observe("c", 4, Some(2));
        assert_eq!(t.persisted_up_to(), 5);

        let mut t = Tracker::new("me", true);
        t.load_positions([("a".into(), 3, 1)]);
        t.finish_load();
        t.learn_new([("a".into(), 5, 1), ("c".into(), 3, 2), ("d".into(), 3, 3)]);
        assert_eq!(t.persisted_up_to(), 3);
    }

    /// An idle writer's own entry in the status moves with the newest row it has seen,
    /// while `positions` (Synapse's `get_positions`) keeps its last write.
    #[test]
    fn our_announced_position_includes_the_idle_advance() {
        let mut t = Tracker::new("me", true);
        t.load_positions([("me".into(), 1, 1), ("other".into(), 1, 1)]);
        t.finish_load();
        t.advance("other", 3);
        assert_eq!(t.positions().get("me"), Some(&1));
        assert_eq!(t.announced_positions(), BTreeMap::from([("me".to_string(), 3), ("other".to_string(), 3)]));
    }

    #[test]
    fn a_cancelled_fetch_releases_our_token() {
        let mut t = Tracker::new("me", true);
        t.load_positions([("other".into(), 2, 1)]);
        t.finish_load();
        let key = t.begin_fetch();
        t.advance("other", 4);
        assert_eq!(t.token_for_writer("me"), 2, "an allocation is under way");
        t.end_fetch(key, &[]);
        assert_eq!(
            t.token_for_writer("me"),
            4,
            "idle again: the newest id seen"
        );
    }

    #[test]
    fn news_of_an_earlier_incarnation_is_ignored() {
        let mut t = Tracker::new("me", false);
        t.load_positions([("w".into(), 4, 7)]);
        t.finish_load();
        t.remove("w", Some(6));
        assert_eq!(
            t.positions().get("w"),
            Some(&4),
            "the drop was of incarnation 6; we know 7"
        );
        t.observe("w", 9, Some(6));
        assert_eq!(t.positions().get("w"), Some(&4));
        t.learn_new([("w".to_string(), 9, 7)]);
        assert_eq!(
            t.positions().get("w"),
            Some(&4),
            "a known incarnation keeps what we were told"
        );
        t.remove("w", Some(7));
        assert!(t.positions().is_empty());
        t.learn_new([("w".to_string(), 9, 8)]);
        assert_eq!(
            t.positions().get("w"),
            Some(&9),
            "a new incarnation is learned"
        );
    }

    #[test]
    fn removing_a_writer_learned_after_a_read_was_issued_is_refused() {
        let mut t = Tracker::new("me", false);
        t.load_positions([("a".into(), 1, 1)]);
        t.finish_load();
        let issued = t.stamp();
        t.advance("b", 1);
        let present = BTreeSet::new();
        assert_eq!(t.remove_absent(&present, issued), vec!["a".to_string()]);
        assert!(t.positions().contains_key("b"));
    }
}
