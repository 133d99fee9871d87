//! A library's recent log rows, kept in memory as their keys and their wire text
//! (`RecentRows`).
//!
//! Every pull whose gap looks like a snapshot counts the rows it would really send (the
//! snapshot decision in `tidemark::sync::send`), and when many devices pull at once they
//! all count, and then send, the same rows: 2,000 concurrent rounds read and decoded a
//! thousand log rows each to count them, and read, decoded and encoded them again to send
//! them. A library keeps one run of consecutive rows instead, read from storage once and
//! lent to every count and every batch that falls inside it: each row's key (what a
//! sender's filter reads) and its text as a batch carries it (`Row::wire_text`, shared).
//!
//! The run is complete: it holds every row the store shows in `(lo, hi]`. That stays true
//! because rows a store shows never change and none appear below one already shown —
//! SQLite shows committed rows, which one writer numbers in order; PostgreSQL shows rows
//! only up to the persisted-up-to position, below which every row is final (a gap there
//! stays a gap). A read that returns `n` rows after `a` proves the range up to its last
//! row complete; the run grows by appending such reads at its end, starts over where a
//! read lands past it, and drops its oldest rows beyond `CAP` rows or `TEXT_CAP` bytes.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tidemark::error::StoreError;
use tidemark::store::{Row, RowKey};

/// Rows kept per library.
pub const CAP: usize = 8192;

/// Bytes of wire text kept per library (rows are a few hundred bytes each; big ones make
/// the run shorter rather than the server bigger).
pub const TEXT_CAP: usize = 4 << 20;

/// Log rows as a store reads them for the run: their keys and, in the same order, their
/// wire text.
#[derive(Default)]
pub struct WireRows {
    pub keys: Vec<RowKey>,
    pub texts: Vec<Arc<str>>,
}

/// A row for the run from its op's text as the store keeps it (the JSON serde writes for
/// the op): its key read from that text, and the text a batch carries (`Row::wire_text`).
pub fn wire_row(row: u64, op: &str, from: Option<String>) -> Result<(RowKey, Arc<str>), StoreError> {
    let text = Row::wire_text(row, op, from.as_deref()).into();
    Ok((RowKey::from_stored(row, op, from)?, text))
}

impl FromIterator<(RowKey, Arc<str>)> for WireRows {
    fn from_iter<I: IntoIterator<Item = (RowKey, Arc<str>)>>(rows: I) -> Self {
        let (keys, texts) = rows.into_iter().unzip();
        WireRows { keys, texts }
    }
}

/// See the module doc.
#[derive(Default)]
pub struct RecentRows {
    run: Mutex<Run>,
}

/// `rows` ascending, every shown row in `(lo, hi()]`; `bytes` their texts' length.
#[derive(Default)]
struct Run {
    lo: u64,
    rows: WireRows,
    bytes: usize,
}

impl Run {
    fn hi(&self) -> u64 {
        self.rows.keys.last().map_or(self.lo, |k| k.row)
    }

    /// The rows after `after` the run holds, if it covers `after`.
    fn after(&self, after: u64) -> Option<(&[RowKey], &[Arc<str>])> {
        let at = self.rows.keys.partition_point(|k| k.row <= after);
        (self.lo <= after).then(|| (&self.rows.keys[at..], &self.rows.texts[at..]))
    }

    /// Takes `read`, the rows after `from` up to its last (or all there were): appended
    /// when it continues the run, the new run when it starts past it.
    fn take(&mut self, from: u64, read: WireRows) {
        let hi = self.hi();
        if from < self.lo {
            return;
        }
        if from > hi {
            *self = Run { lo: from, rows: WireRows::default(), bytes: 0 };
        }
        for (k, t) in read.keys.into_iter().zip(read.texts).filter(|(k, _)| k.row > hi) {
            self.bytes += t.len();
            self.rows.keys.push(k);
            self.rows.texts.push(t);
        }
        if self.rows.keys.len() > CAP + CAP / 4 || self.bytes > TEXT_CAP + TEXT_CAP / 4 {
            let mut cut = self.rows.keys.len().saturating_sub(CAP);
            let mut bytes = self.bytes - self.rows.texts[..cut].iter().map(|t| t.len()).sum::<usize>();
            while bytes > TEXT_CAP && cut < self.rows.keys.len() {
                bytes -= self.rows.texts[cut].len();
                cut += 1;
            }
            if cut > 0 {
                self.lo = self.rows.keys[cut - 1].row;
                self.rows.keys.drain(..cut);
                self.rows.texts.drain(..cut);
                self.bytes = bytes;
            }
        }
    }
}

impl RecentRows {
    /// Passes the first `limit` rows after `after` to `f`: from the run, after reading
    /// what it lacks through `read(after, limit)` (the store's rows with their text).
    pub async fn with_after<R, Fut>(&self, after: u64, limit: usize, read: impl Fn(u64, usize) -> Fut, f: impl FnOnce(&[RowKey], &[Arc<str>]) -> R) -> Result<R, StoreError>
    where
        Fut: Future<Output = Result<WireRows, StoreError>>,
    {
        let missing = {
            let run = self.run.lock().unwrap_or_else(|e| e.into_inner());
            match run.after(after) {
                Some((keys, texts)) if keys.len() >= limit => return Ok(f(&keys[..limit], &texts[..limit])),
                Some((keys, _)) => Some((run.hi().max(after), limit - keys.len())),
                None => None,
            }
        };
        // Before the run: read directly, and keep nothing (the run follows the newest rows).
        let Some((from, more)) = missing else {
            let rows = read(after, limit).await?;
            return Ok(f(&rows.keys, &rows.texts));
        };
        let fresh = read(from, more).await?;
        let through = fresh.keys.last().map_or(from, |k| k.row);
        {
            let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
            run.take(from, fresh);
            // Another count may have moved the run meanwhile; use it only if it still
            // covers everything from `after` through what was just read.
            if run.hi() >= through {
                if let Some((keys, texts)) = run.after(after) {
                    let n = keys.partition_point(|k| k.row <= through).min(limit);
                    return Ok(f(&keys[..n], &texts[..n]));
                }
            }
        }
        let rows = read(after, limit).await?;
        Ok(f(&rows.keys, &rows.texts))
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

    /// A row's text: its number, padded to `size` bytes.
    fn text(row: u64, size: usize) -> Arc<str> {
        let n = row.to_string();
        format!("{n}{}", "-".repeat(size.saturating_sub(n.len()))).into()
    }

    /// A log of `rows` (numbers ascending, gaps allowed) that records every read; each
    /// row's text is `size` bytes.
    struct Log {
        rows: RefCell<Vec<u64>>,
        reads: RefCell<Vec<(u64, usize)>>,
        size: usize,
    }

    impl Log {
        fn new(rows: impl IntoIterator<Item = u64>) -> Log {
            Log { rows: RefCell::new(rows.into_iter().collect()), reads: RefCell::new(Vec::new()), size: 8 }
        }

        async fn read(&self, after: u64, limit: usize) -> Result<WireRows, StoreError> {
            self.reads.borrow_mut().push((after, limit));
            let rows: Vec<u64> = self.rows.borrow().iter().copied().filter(|r| *r > after).take(limit).collect();
            Ok(WireRows { keys: rows.iter().map(|r| key(*r)).collect(), texts: rows.iter().map(|r| text(*r, self.size)).collect() })
        }

        /// The rows `with_after` lends, after checking each comes with its own text.
        fn rows(&self, cache: &RecentRows, after: u64, limit: usize) -> Vec<u64> {
            let lent = |keys: &[RowKey], texts: &[Arc<str>]| {
                assert_eq!(keys.len(), texts.len());
                keys.iter().zip(texts).map(|(k, t)| (k.row, t.clone())).collect::<Vec<_>>()
            };
            let rows = futures::executor::block_on(cache.with_after(after, limit, |a, l| self.read(a, l), lent)).unwrap();
            rows.into_iter().map(|(r, t)| {
                assert_eq!(t, text(r, self.size), "row {r}'s own text");
                r
            }).collect()
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
        assert!(run.rows.keys.len() <= CAP + CAP / 4, "the run is capped: {}", run.rows.keys.len());
        assert_eq!(run.hi(), total);
        assert_eq!(run.rows.keys.first().unwrap().row, run.lo + 1, "the run stays complete");
        drop(run);
        log.reads();
        assert_eq!(log.rows(&cache, total - 100, 50), log.expected(total - 100, 50));
        assert!(log.reads().is_empty());
        assert_eq!(log.rows(&cache, 5, 3), vec![6, 7, 8]);
        assert_eq!(log.reads(), vec![(5, 3)]);
    }

    #[test]
    fn big_rows_make_the_run_shorter_not_the_server_bigger() {
        // Rows of 64 KiB: 100 of them are 6.4 MiB of text, past TEXT_CAP.
        let log = Log { size: 64 << 10, ..Log::new(1..=100) };
        let cache = RecentRows::default();
        for after in (0..100).step_by(10) {
            assert_eq!(log.rows(&cache, after, 10), log.expected(after, 10));
        }
        let run = cache.run.lock().unwrap();
        assert!(run.bytes <= TEXT_CAP + TEXT_CAP / 4, "the run's text is capped: {}", run.bytes);
        assert_eq!(run.bytes, run.rows.texts.iter().map(|t| t.len()).sum::<usize>());
        assert_eq!((run.hi(), run.rows.keys.first().unwrap().row), (100, run.lo + 1), "the run keeps the newest rows, complete");
        assert!(run.rows.keys.len() < 100);
        let kept = run.lo;
        drop(run);
        log.reads();
        // What it keeps is lent without a read; what it dropped is read directly.
        assert_eq!(log.rows(&cache, kept, 5), log.expected(kept, 5));
        assert!(log.reads().is_empty());
        assert_eq!(log.rows(&cache, 0, 5), vec![1, 2, 3, 4, 5]);
        assert_eq!(log.reads(), vec![(0, 5)]);
    }
}
