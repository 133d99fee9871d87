//! The writer of one SQLite file: a thread of its own that owns the write connection, so no
//! SQLite write (and no fsync) ever runs on the async runtime, and that **groups commits**.
//!
//! Commits queue up on a channel. The writer opens one transaction, and for each commit in
//! the queue: a savepoint; read what the commit names and compute what it writes — here, when
//! the engine's closure owns what it uses (`Store::commit_owned`: a pass's pushes and
//! bookkeeping), or else on the caller's task, handing it what was read and waiting for its
//! answer (`Compute`); write it and release the savepoint — or roll back to it, if the engine
//! refused, the caller went away or a write failed, which leaves the other commits of the
//! group untouched. Then ONE `COMMIT` (one
//! fsync) for the whole group, and only then is each caller told its commit is done. A commit
//! is thus still all-or-nothing and durable before it is acknowledged; a group that fails to
//! commit fails every commit in it, and nobody has been told otherwise. Later commits of a
//! group read what earlier ones wrote (same connection): they commit together or not at all.
//!
//! While several clients' commits keep coming (the last group held more than one commit and
//! ended less than `BUSY` ago), a group that begins with bookkeeping alone (a commit that
//! reads no document: a pass's peer records, which a pull writes as its batches are
//! acknowledged and as it ends) waits up to `BOOKKEEPING_DELAY` for more commits to join it
//! before it begins: when thousands of clients pull, their acknowledgements arrive a few at
//! a time, and each group is one fsync and a write of the same record pages. A commit that
//! reads documents (rows pushed, local writes) ends the wait at once, and is never held back
//! itself; a lone client's pass (groups of one) and a quiet server never wait.
//!
//! Other work that needs the write connection (sealing, a generation swap) runs between
//! groups, as a job.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tidemark::error::{Error, StoreError};
use tidemark::store::{Commit, DocKey, Loaded};
use tokio::sync::oneshot;

use super::{backend, lock, read_doc, read_head, read_peer, write_commit, Peers};

/// Most commits in one group.
const MAX_GROUP: usize = 512;

/// The longest a group of bookkeeping waits for more commits before it begins.
const BOOKKEEPING_DELAY: Duration = Duration::from_millis(2);

/// How recently the last group (of more than one commit) must have ended for a group of
/// bookkeeping to wait.
const BUSY: Duration = Duration::from_millis(10);

/// One commit, as the caller hands it to the writer.
pub(crate) struct CommitJob {
    pub(crate) keys: Vec<DocKey>,
    pub(crate) peers: Vec<String>,
    /// Where what the commit read becomes what it writes.
    pub(crate) compute: Compute,
    /// The outcome, once the group committed: the commit as written.
    pub(crate) done: oneshot::Sender<Result<Commit, Error>>,
}

/// Where a commit's writes are computed from what it read.
pub(crate) enum Compute {
    /// On the caller's task (`Store::commit`: its closure may borrow): what the commit read
    /// is sent there, and the writer waits for the answer (dropped: nothing).
    Caller { loaded: oneshot::Sender<Result<Loaded, StoreError>>, answer: oneshot::Receiver<Commit> },
    /// Here, on the writer thread (`Store::commit_owned`), with no wait for a task that a
    /// busy runtime has not scheduled yet. The commit is checked against the head it read,
    /// as the caller's path does.
    Here(Box<dyn FnOnce(Loaded) -> Result<Commit, Error> + Send>),
}

impl Compute {
    /// Tells the caller the commit failed before anything was computed.
    fn fail(self, done: oneshot::Sender<Result<Commit, Error>>, e: StoreError) {
        if let Compute::Caller { loaded, .. } = self {
            let _ = loaded.send(Err(e.clone()));
        }
        let _ = done.send(Err(e.into()));
    }

    /// What to write, given what the commit read; `None` when the caller went away (the
    /// outcome is then nobody's to hear), `Some(Err)` when `f` or the check refused.
    fn run(self, read: Loaded) -> Option<Result<Commit, Error>> {
        match self {
            Compute::Caller { loaded, answer } => {
                loaded.send(Ok(read)).ok()?;
                answer.blocking_recv().ok().map(Ok)
            }
            Compute::Here(f) => {
                let head = read.head.clone();
                // A panic in `f` fails this commit, not the writer every commit needs.
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(read)))
                    .unwrap_or_else(|_| Err(StoreError::Backend("a commit's computation panicked".into()).into()));
                Some(made.and_then(|c| c.check(head.as_ref()).map(|()| c).map_err(Error::from)))
            }
        }
    }
}

/// Work for the writer thread.
pub(crate) enum Job {
    Commit(CommitJob),
    /// Runs with the write connection between groups (it may replace the connection).
    Exclusive(Exclusive),
}

/// Work that needs the write connection to itself.
pub(crate) type Exclusive = Box<dyn FnOnce(&mut Connection) + Send>;

/// The writer thread of one file; dropping it ends the thread once the queue is empty and
/// waits for it (so the file is closed when this returns).
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer; it keeps `peers` (the store's in-memory records) up to date.
    pub(crate) fn start(conn: Connection, name: String, peers: Peers) -> Result<Writer, StoreError> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("sqlite-writer {name}"))
            .spawn(move || run(conn, queue, peers))
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread) })
    }

    pub(crate) fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.as_ref().and_then(|j| j.send(job).ok()).ok_or(StoreError::Closed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut conn: Connection, queue: mpsc::Receiver<Job>, peers: Peers) {
    // When the last group ended, and how many commits it held.
    let mut last_group: Option<(Instant, usize)> = None;
    while let Ok(job) = queue.recv() {
        let first = match job {
            Job::Exclusive(f) => {
                f(&mut conn);
                continue;
            }
            Job::Commit(c) => c,
        };
        let busy = last_group.is_some_and(|(t, n)| n > 1 && t.elapsed() < BUSY);
        let (joined, mut after) = if busy && first.keys.is_empty() { gather(&queue, BOOKKEEPING_DELAY) } else { (Vec::new(), None) };
        let mut group: Vec<(oneshot::Sender<Result<Commit, Error>>, Commit)> = Vec::new();
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE") {
            first.compute.fail(first.done, e.clone());
            for c in joined {
                c.compute.fail(c.done, e.clone());
            }
            if let Some(f) = after {
                f(&mut conn);
            }
            continue;
        }
        group.extend(one(&conn, first));
        for c in joined {
            group.extend(one(&conn, c));
        }
        while after.is_none() && group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(Job::Commit(c)) => group.extend(one(&conn, c)),
                Ok(Job::Exclusive(f)) => {
                    after = Some(f);
                    break;
                }
                Err(_) => break,
            }
        }
        let size = group.len();
        match exec(&conn, "COMMIT") {
            Ok(()) => {
                // In commit order, before anyone hears of it: a later commit of the same
                // record wins, and a pass that starts after an acknowledged commit sees it.
                {
                    let mut cached = lock(&peers);
                    for (_, commit) in &group {
                        for (id, rec) in &commit.peers {
                            cached.insert(id.clone(), rec.clone());
                        }
                    }
                }
                for (done, commit) in group {
                    let _ = done.send(Ok(commit));
                }
            }
            Err(e) => {
                let _ = exec(&conn, "ROLLBACK");
                for (done, _) in group {
                    let _ = done.send(Err(e.clone().into()));
                }
            }
        }
        last_group = Some((Instant::now(), size));
        if let Some(f) = after {
            f(&mut conn);
        }
    }
}

/// The commits that join a group begun by bookkeeping, arriving within `delay`: until one
/// that reads documents (which joins and ends the wait), a job for the connection (which
/// ends it, to run after the group), or `MAX_GROUP`.
fn gather(queue: &mpsc::Receiver<Job>, delay: Duration) -> (Vec<CommitJob>, Option<Exclusive>) {
    let until = Instant::now() + delay;
    let mut joined = Vec::new();
    while joined.len() + 1 < MAX_GROUP {
        match queue.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Job::Commit(c)) => {
                let reads_documents = !c.keys.is_empty();
                joined.push(c);
                if reads_documents {
                    break;
                }
            }
            Ok(Job::Exclusive(f)) => return (joined, Some(f)),
            Err(_) => break,
        }
    }
    (joined, None)
}

/// One commit inside the open group transaction, under a savepoint. Returns what to report
/// once the group commits; `None` when it was rolled back (its caller already knows why, or
/// went away).
fn one(conn: &Connection, job: CommitJob) -> Option<(oneshot::Sender<Result<Commit, Error>>, Commit)> {
    let CommitJob { keys, peers, compute, done } = job;
    if let Err(e) = exec(conn, "SAVEPOINT c") {
        compute.fail(done, e);
        return None;
    }
    let undo = || {
        let _ = exec(conn, "ROLLBACK TO c").and_then(|()| exec(conn, "RELEASE c"));
    };
    let read = (|| {
        Ok::<_, StoreError>(Loaded {
            head: read_head(conn)?,
            docs: keys.iter().map(|(c, id)| read_doc(conn, c, id)).collect::<Result<_, _>>()?,
            peers: peers.iter().map(|p| read_peer(conn, p)).collect::<Result<_, _>>()?,
        })
    })();
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            undo();
            compute.fail(done, e);
            return None;
        }
    };
    let commit = match compute.run(read) {
        Some(Ok(commit)) => commit,
        refused => {
            undo();
            if let Some(Err(e)) = refused {
                let _ = done.send(Err(e));
            }
            return None;
        }
    };
    match write_commit(conn, &commit).and_then(|()| exec(conn, "RELEASE c")) {
        Ok(()) => Some((done, commit)),
        Err(e) => {
            undo();
            let _ = done.send(Err(e.into()));
            None
        }
    }
}

/// Runs one statement without parameters, prepared once per connection (a savepoint per
/// commit: parsing them again each time was ~5% of the writer thread's work).
fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(keys: &[&str]) -> Job {
        let (done, _) = oneshot::channel();
        let keys = keys.iter().map(|k| ("docs".to_string(), k.to_string())).collect();
        Job::Commit(CommitJob { keys, peers: vec![], compute: Compute::Here(Box::new(|_| Ok(Commit::default()))), done })
    }

    fn key_counts(joined: &[CommitJob]) -> Vec<usize> {
        joined.iter().map(|c| c.keys.len()).collect()
    }

    /// Bookkeeping that arrives within the delay joins the group; a commit that reads
    /// documents joins and ends the wait; a job for the connection ends it too.
    #[test]
    fn a_bookkeeping_group_waits_for_more_until_a_document_write_comes() {
        let (tx, queue) = mpsc::channel();
        let sender = std::thread::spawn(move || {
            tx.send(job(&[])).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            tx.send(job(&[])).unwrap();
            tx.send(job(&["a", "b"])).unwrap();
            tx.send(job(&[])).unwrap();
            tx
        });
        let started = Instant::now();
        let (joined, after) = gather(&queue, Duration::from_secs(20));
        assert!(started.elapsed() < Duration::from_secs(10), "the document write ended the wait");
        assert_eq!(key_counts(&joined), [0, 0, 2], "the bookkeeping that came meanwhile, then the document write");
        assert!(after.is_none());
        let tx = sender.join().unwrap();
        // What came after the document write starts the next group.
        assert!(matches!(queue.try_recv(), Ok(Job::Commit(c)) if c.keys.is_empty()));
        // Nothing more within the delay: the group begins with what it has.
        let (joined, _) = gather(&queue, Duration::from_millis(30));
        assert!(joined.is_empty());
        // A job for the connection ends the wait, to run after the group.
        tx.send(job(&[])).unwrap();
        tx.send(Job::Exclusive(Box::new(|_| {}))).unwrap();
        tx.send(job(&[])).unwrap();
        let (joined, after) = gather(&queue, Duration::from_secs(20));
        assert_eq!(key_counts(&joined), [0]);
        assert!(after.is_some());
        assert!(matches!(queue.try_recv(), Ok(Job::Commit(_))), "the commit after it waits for the next group");
    }
}
