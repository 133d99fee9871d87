//! Pages of text made from a store's documents, and their count, shared by every reader
//! while no document changes (`DocPages`).
//!
//! A server sends the same snapshot pages to every client that joins or falls far behind;
//! when thousands pull at once, each reading and converting the same thousand documents
//! was most of its work. A store shared by many readers (a server's library) owns one of
//! these, brackets every write with `writing`, and the sender keeps the pages it made
//! (`sync::send`), keyed by where they start and how long they are — and the number of
//! documents, which every snapshot announces first (its `total`): counting them was a
//! read of its own per pull.
//!
//! A page is only ever handed out while it is as new as any state a reader could have seen:
//! writes are counted when they start and when they finish (a seqlock with many writers),
//! pages are kept only if no write started while they were read, and used only while no
//! write is under way and none finished since. A write's data may be visible before its
//! commit returns, so a reader that saw any of it did so while it was under way, and every
//! page it can get afterwards was read after that write finished.
//!
//! Where other processes write the same documents (several servers on one PostgreSQL
//! database) the counts see only this one's writes. A store of that kind says which rows it
//! shows readers (`following_rows`, `shown`): every row up to the shown one is committed,
//! with the document states it wrote, so a page begun after row `r` was shown holds every
//! change up to `r`, and it is handed out only to a snapshot that ends at or below `r`.
//! A snapshot needs no more: it claims the rows up to its end, and newer document states
//! are harmless (merging takes them as they are).

use std::sync::{Arc, Mutex, MutexGuard};

/// A document's (collection, id): `store::DocKey`, spelled out so this module stays
/// below the store contract that names it.
type DocKey = (String, String);

/// A page's documents as text, and the key of its last (where the next page starts).
pub type Page = (Arc<[String]>, DocKey);

/// Pages kept at once: a joining client reads pages in order, and concurrent ones mostly
/// the same few.
const KEPT: usize = 8;

/// See the module doc.
#[derive(Default)]
pub struct DocPages {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    started: u64,
    finished: u64,
    /// The newest row shown to readers, where the store reports it (`following_rows`).
    shown: Option<u64>,
    /// (start, length, the row shown when it was begun (or `u64::MAX`), page), all read
    /// while no write was under way and none had finished since `finished` took its
    /// current value.
    pages: Vec<(Option<DocKey>, usize, u64, Page)>,
    /// (the row shown when it was begun, the number of documents), kept as pages are.
    count: Option<(u64, u64)>,
}

impl State {
    /// No write is under way: what is kept serves readers.
    fn settled(&self) -> bool {
        self.started == self.finished
    }

    /// No write started since `seen`: what was made since may be kept.
    fn unchanged_since(&self, seen: Seen) -> bool {
        self.started == seen.0 && self.finished == seen.0
    }
}

/// Marks a write under way until dropped (finished, failed or cancelled alike).
pub struct Writing<'a>(&'a DocPages);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.lock().finished += 1;
    }
}

/// Where the document state stood when a page was begun (`DocPages::begin`): writes
/// finished, and the newest row shown.
#[derive(Clone, Copy, Debug)]
pub struct Seen(u64, u64);

impl DocPages {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pages for a store where other processes write too: each is handed out only to a
    /// snapshot ending at or below the row shown when it was begun (see the module doc).
    pub fn following_rows() -> DocPages {
        DocPages { state: Mutex::new(State { shown: Some(0), ..State::default() }) }
    }

    /// Every row up to `row` is committed and shown to readers (`following_rows`).
    pub fn shown(&self, row: u64) {
        let mut s = self.lock();
        if let Some(shown) = &mut s.shown {
            *shown = (*shown).max(row);
        }
    }

    /// Call before anything that may change documents; hold the result until it is done.
    pub fn writing(&self) -> Writing<'_> {
        let mut s = self.lock();
        s.started += 1;
        s.pages.clear();
        s.count = None;
        Writing(self)
    }

    /// The page of `limit` documents after `after` for a snapshot ending at row `end`, if
    /// one was kept for the current state.
    pub fn get(&self, after: Option<&DocKey>, limit: usize, end: u64) -> Option<Page> {
        let s = self.lock();
        if !s.settled() {
            return None;
        }
        s.pages.iter().find(|(a, n, shown, _)| a.as_ref() == after && *n == limit && *shown >= end).map(|(_, _, _, p)| p.clone())
    }

    /// Call before reading a page to keep; `None` while a write is under way.
    pub fn begin(&self) -> Option<Seen> {
        let s = self.lock();
        s.settled().then_some(Seen(s.finished, s.shown.unwrap_or(u64::MAX)))
    }

    /// The number of documents for a snapshot ending at row `end`, if one was kept for
    /// the current state (as `get` hands out pages).
    pub fn count(&self, end: u64) -> Option<u64> {
        let s = self.lock();
        if !s.settled() {
            return None;
        }
        s.count.filter(|(shown, _)| *shown >= end).map(|(_, n)| n)
    }

    /// Keeps a count of the documents made since `begin` returned `seen`, unless a write
    /// started meanwhile (as `keep` keeps pages).
    pub fn keep_count(&self, seen: Seen, n: u64) {
        let mut s = self.lock();
        if !s.unchanged_since(seen) || s.count.is_some_and(|(shown, _)| shown >= seen.1) {
            return;
        }
        s.count = Some((seen.1, n));
    }

    /// Keeps a page read since `begin` returned `seen`, unless a write started meanwhile.
    pub fn keep(&self, seen: Seen, after: Option<&DocKey>, limit: usize, page: Page) {
        let mut s = self.lock();
        if !s.unchanged_since(seen) {
            return;
        }
        // A page of the same place begun later replaces this one: it serves every
        // snapshot this one would, and newer ones.
        if let Some(i) = s.pages.iter().position(|(a, n, _, _)| a.as_ref() == after && *n == limit) {
            if s.pages[i].2 >= seen.1 {
                return;
            }
            s.pages.remove(i);
        }
        if s.pages.len() >= KEPT {
            s.pages.remove(0);
        }
        s.pages.push((after.cloned(), limit, seen.1, page));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> Page {
        (vec![text.to_string()].into(), ("c".into(), text.into()))
    }

    #[test]
    fn a_page_is_kept_and_shared_until_a_write_starts() {
        let pages = DocPages::default();
        let seen = pages.begin().unwrap();
        pages.keep(seen, None, 10, page("a"));
        assert_eq!(pages.get(None, 10, 0).unwrap().0[0], "a");
        assert!(pages.get(None, 11, 0).is_none(), "keyed by length");
        assert!(pages.get(Some(&("c".into(), "a".into())), 10, 0).is_none(), "keyed by start");
        let w = pages.writing();
        assert!(pages.get(None, 10, 0).is_none(), "a write drops the pages");
        assert!(pages.begin().is_none(), "nothing is kept while a write is under way");
        drop(w);
        assert!(pages.get(None, 10, 0).is_none());
        let seen = pages.begin().unwrap();
        pages.keep(seen, None, 10, page("b"));
        assert_eq!(pages.get(None, 10, 0).unwrap().0[0], "b");
    }

    #[test]
    fn the_count_is_kept_and_dropped_as_pages_are() {
        let pages = DocPages::following_rows();
        pages.shown(5);
        let seen = pages.begin().unwrap();
        pages.keep_count(seen, 7);
        assert_eq!(pages.count(5), Some(7));
        assert_eq!(pages.count(6), None, "a snapshot ending past the row shown when it was begun counts its own");
        // One begun before a write that ended meanwhile is not kept.
        let seen = pages.begin().unwrap();
        let w = pages.writing();
        assert_eq!(pages.count(5), None, "a write drops the count");
        drop(w);
        pages.keep_count(seen, 8);
        assert_eq!(pages.count(0), None);
        let seen = pages.begin().unwrap();
        pages.keep_count(seen, 9);
        assert_eq!(pages.count(5), Some(9));
        // An older one does not replace a newer.
        let old = pages.begin().unwrap();
        pages.shown(9);
        let new = pages.begin().unwrap();
        pages.keep_count(new, 10);
        pages.keep_count(old, 11);
        assert_eq!(pages.count(9), Some(10));
    }

    #[test]
    fn a_page_read_across_a_write_is_not_kept() {
        let pages = DocPages::default();
        // Started and finished while the page was read.
        let seen = pages.begin().unwrap();
        drop(pages.writing());
        pages.keep(seen, None, 10, page("old"));
        assert!(pages.get(None, 10, 0).is_none());
        // Started while it was read, still under way.
        let seen = pages.begin().unwrap();
        let w = pages.writing();
        pages.keep(seen, None, 10, page("old"));
        drop(w);
        assert!(pages.get(None, 10, 0).is_none());
        // Two writers: one finishing does not make the other's data stable.
        let (w1, w2) = (pages.writing(), pages.writing());
        drop(w1);
        assert!(pages.begin().is_none() && pages.get(None, 10, 0).is_none());
        drop(w2);
        assert!(pages.begin().is_some());
    }

    #[test]
    fn following_rows_a_page_serves_only_snapshots_ending_at_or_below_the_row_shown_when_begun() {
        let pages = DocPages::following_rows();
        pages.shown(5);
        let seen = pages.begin().unwrap();
        // Another process's rows 6..=9 become shown while the page is read: it may hold
        // their documents or not, so it serves snapshots up to row 5 only.
        pages.shown(9);
        pages.keep(seen, None, 10, page("at 5"));
        assert_eq!(pages.get(None, 10, 5).unwrap().0[0], "at 5");
        assert_eq!(pages.get(None, 10, 3).unwrap().0[0], "at 5");
        assert!(pages.get(None, 10, 6).is_none(), "a snapshot ending past the row shown when the page was begun reads its own");
        assert!(pages.get(None, 10, 9).is_none());
        // Shown never moves back.
        pages.shown(2);
        let seen = pages.begin().unwrap();
        pages.keep(seen, None, 10, page("at 9"));
        assert_eq!(pages.get(None, 10, 9).unwrap().0[0], "at 9", "the newer page replaced the older");
        assert_eq!(pages.get(None, 10, 5).unwrap().0[0], "at 9");
        // An older page of the same place does not replace a newer one.
        let pages2 = DocPages::following_rows();
        pages2.shown(4);
        let old = pages2.begin().unwrap();
        pages2.shown(8);
        let new = pages2.begin().unwrap();
        pages2.keep(new, None, 10, page("at 8"));
        pages2.keep(old, None, 10, page("at 4"));
        assert_eq!(pages2.get(None, 10, 8).unwrap().0[0], "at 8");
        // Its own writes still drop the pages, as without rows.
        drop(pages.writing());
        assert!(pages.get(None, 10, 0).is_none());
    }

    #[test]
    fn without_following_rows_a_page_serves_every_snapshot() {
        let pages = DocPages::default();
        pages.shown(3);
        let seen = pages.begin().unwrap();
        pages.keep(seen, None, 10, page("a"));
        assert_eq!(pages.get(None, 10, u64::MAX).unwrap().0[0], "a");
    }

    #[test]
    fn at_most_kept_pages_stay_the_newest() {
        let pages = DocPages::default();
        for i in 0..KEPT + 3 {
            let seen = pages.begin().unwrap();
            pages.keep(seen, None, i, page(&i.to_string()));
        }
        assert!(pages.get(None, 0, 0).is_none() && pages.get(None, 2, 0).is_none());
        assert_eq!(pages.get(None, KEPT + 2, 0).unwrap().0[0], (KEPT + 2).to_string());
        assert_eq!(pages.get(None, 3, 0).unwrap().0[0], "3");
    }
}
