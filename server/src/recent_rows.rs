//! The keys of a library's recent log rows, kept in memory (`RecentRows`).
//!
//! Every pull whose gap looks like a snapshot counts the rows it would really send (the
//! snapshot decision in `tidemark::sync::send`), and when many devices pull at once they
//! all count the same rows: 2,000 concurrent rounds read and decoded a thousand log rows
//! each. A library keeps one run of consecutive rows' keys instead, read from storage once
//! and lent to every count that falls inside it.
//!
//! The run is complete: it holds every row the store shows in `(lo, hi]`. That stays true
//! because rows a store shows never change and none appear below one already shown —
//! SQLite shows committed rows, which one writer numbers in order; PostgreSQL shows rows
//! only up to the persisted-up-to position, below which every row is final (a gap there
//! stays a gap). A read that returns `n` rows after `a` proves the range up to its last
//! row complete; the run grows by appending such reads at its end, starts over where a
//! read lands past it, and drops its oldest rows beyond `CAP`.

use std::future::Future;
use std::sync::Mutex;

use tidemark::error::StoreError;
use tidemark::store::RowKey;

/// Rows kept per library (a few hundred bytes each).
pub const CAP: usize = 8192;

/// See the module doc.
#[derive(Default)]
pub struct RecentRows {
    run: Mutex<Run>,
}

/// `keys` ascending, every shown row in `(lo, hi()]`.
#[derive(Default)]
struct Run {
    lo: u64,
    keys: Vec<RowKey>,
}

impl Run {
    fn hi(&self) -> u64 {
        self.keys.last().map_or(self.lo, |k| k.row)
    }

    /// The rows after `after` the run holds, if it covers `after`.
    fn after(&self, after: u64) -> Option<&[RowKey]> {
        (self.lo <= after).then(|| &self.keys[self.keys.partition_point(|k| k.row <= after)..])
    }

    /// Takes `read`, the rows after `from` up to its last (or all there were): appended
    /// when it continues the run, the new run when it starts past it.
    fn take(&mut self, from: u64, read: Vec<RowKey>) {
        let hi = self.hi();
        if from < self.lo {
            return;
        }
        if from <= hi {
            self.keys.extend(read.into_iter().filter(|k| k.row > hi));
        } else {
            *self = Run { lo: from, keys: read };
        }
        if self.keys.len() > CAP + CAP / 4 {
            let cut = self.keys.len() - CAP;
            self.lo = self.keys[cut - 1].row;
            self.keys.drain(..cut);
        }
    }
}

impl RecentRows {
    /// Passes the first `limit` rows after `after` to `f`: from the run, after reading
    /// what it lacks through `read(after, limit)` (the store's `row_keys_after`).
    pub async fn with_after<R, Fut>(&self, after: u64, limit: usize, read: impl Fn(u64, usize) -> Fut, f: impl FnOnce(&[RowKey]) -> R) -> Result<R, StoreError>
    where
        Fut: Future<Output = Result<Vec<RowKey>, StoreError>>,
    {
        let missing = {
            let run = self.run.lock().unwrap_or_else(|e| e.into_inner());
            match run.after(after) {
                Some(held) if held.len() >= limit => return Ok(f(&held[..limit])),
                Some(held) => Some((run.hi().max(after), limit - held.len())),
                None => None,
            }
        };
        // Before the run: read directly, and keep nothing (the run follows the newest rows).
        let Some((from, more)) = missing else { return Ok(f(&read(after, limit).await?)) };
        let fresh = read(from, more).await?;
        let through = fresh.last().map_or(from, |k| k.row);
        {
            let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
            run.take(from, fresh);
            // Another count may have moved the run meanwhile; use it only if it still
            // covers everything from `after` through what was just read.
            if run.hi() >= through {
                if let Some(held) = run.after(after) {
                    let n = held.partition_point(|k| k.row <= through).min(limit);
                    return Ok(f(&held[..n]));
                }
            }
        }
        Ok(f(&read(after, limit).await?))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use tidemark::clock::Stamp;
    use tidemark::op::OpKey;

    use super::*;

    fn key(row: u64) -> RowKey {
        RowKey { row, op: OpKey { origin: format!("o{row}"), origin_row: row, ts: Stamp::zero() }, from: None }
    }

    /// A log of `rows` (numbers ascending, gaps allowed) that records every read.
    struct Log {
        rows: RefCell<Vec<u64>>,
        reads: RefCell<Vec<(u64, usize)>>,
    }

    impl Log {
        fn new(rows: impl IntoIterator<Item = u64>) -> Log {
            Log { rows: RefCell::new(rows.into_iter().collect()), reads: RefCell::new(Vec::new()) }
        }

        async fn read(&self, after: u64, limit: usize) -> Result<Vec<RowKey>, StoreError> {
            self.reads.borrow_mut().push((after, limit));
            Ok(self.rows.borrow().iter().filter(|r| **r > after).take(limit).map(|r| key(*r)).collect())
        }

        fn rows(&self, cache: &RecentRows, after: u64, limit: usize) -> Vec<u64> {
            futures::executor::block_on(cache.with_after(after, limit, |a, l| self.read(a, l), |k| k.iter().map(|k| k.row).collect()))
                .unwrap()
        }

        fn expected(&self, after: u64, limit: usize) -> Vec<u64> {
            self.rows.borrow().iter().copied().filter(|r| *r > after).take(limit).collect()
        }

        fn reads(&self) -> Vec<(u64, usize)> {
            std::mem::take(&mut *self.reads.borrow_mut())
        }
    }

    #[test]
    fn counts_inside_the_run_read_nothing_and_the_run_grows_only_by_what_it_lacks() {
        let log = Log::new((1..=100).filter(|r| r % 7 != 0));
        let cache = RecentRows::default();
        assert_eq!(log.rows(&cache, 10, 20), log.expected(10, 20));
        assert_eq!(log.reads(), vec![(10, 20)]);
        // Inside the run: no read at all, whatever the start.
        assert_eq!(log.rows(&cache, 10, 5), log.expected(10, 5));
        assert_eq!(log.rows(&cache, 15, 10), log.expected(15, 10));
        assert!(log.reads().is_empty());
        // Past the run's end: only the missing rows are read, from the run's end.
        let hi = *log.expected(10, 20).last().unwrap();
        assert_eq!(log.rows(&cache, 12, 40), log.expected(12, 40));
        let held = log.expected(12, 40).iter().filter(|r| **r <= hi).count();
        assert_eq!(log.reads(), vec![(hi, 40 - held)]);
        // Before the run: read directly.
        assert_eq!(log.rows(&cache, 3, 4), log.expected(3, 4));
        assert_eq!(log.reads(), vec![(3, 4)]);
    }

    #[test]
    fn rows_that_land_later_are_read_at_the_end_and_a_short_read_is_not_taken_for_the_end_forever() {
        let log = Log::new(1..=5);
        let cache = RecentRows::default();
        assert_eq!(log.rows(&cache, 0, 10), vec![1, 2, 3, 4, 5]);
        log.rows.borrow_mut().extend([6, 9]);
        assert_eq!(log.rows(&cache, 2, 10), vec![3, 4, 5, 6, 9]);
        assert_eq!(log.reads(), vec![(0, 10), (5, 7)]);
        // A start past the run makes a new run there.
        log.rows.borrow_mut().extend(20..40);
        assert_eq!(log.rows(&cache, 25, 3), vec![26, 27, 28]);
        assert_eq!(log.rows(&cache, 26, 2), vec![27, 28]);
        assert_eq!(log.rows(&cache, 9, 3), vec![20, 21, 22], "the old run is gone: read directly");
        assert_eq!(log.reads(), vec![(25, 3), (9, 3)]);
    }

    #[test]
    fn the_run_keeps_its_newest_rows_and_answers_exactly_after_dropping_old_ones() {
        let total = (CAP * 2) as u64;
        let log = Log::new(1..=total);
        let cache = RecentRows::default();
        let mut after = 0;
        while after < total {
            assert_eq!(log.rows(&cache, after, 1000), log.expected(after, 1000));
            after += 1000;
        }
        let run = cache.run.lock().unwrap();
        assert!(run.keys.len() <= CAP + CAP / 4, "the run is capped: {}", run.keys.len());
        assert_eq!(run.hi(), total);
        assert_eq!(run.keys.first().unwrap().row, run.lo + 1, "the run stays complete");
        drop(run);
        log.reads();
        assert_eq!(log.rows(&cache, total - 100, 50), log.expected(total - 100, 50));
        assert!(log.reads().is_empty());
        assert_eq!(log.rows(&cache, 5, 3), vec![6, 7, 8]);
        assert_eq!(log.reads(), vec![(5, 3)]);
    }
}
