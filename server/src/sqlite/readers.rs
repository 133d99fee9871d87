//! Read connections of one SQLite file: reads never wait for the writer (WAL mode gives each
//! read the last committed state), and several run at once on the blocking pool.
//!
//! A generation swap renames another file over this one: before that, every read connection
//! must be closed (`close` waits for the ones in use), or the old file's WAL would be left
//! behind under the new file's name; `reopen` lets readers in again, on the new file.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tidemark::error::StoreError;

use super::backend;

/// Idle read connections kept open, and most read connections open at once: reads
/// beyond it wait for a connection to come back. Two cores gain nothing from more, and a
/// connection opened for one read (the file opened, the schema read, every statement
/// prepared again) costs more than the read when thousands of clients pull at once.
const KEEP: usize = 8;

pub(crate) struct Readers {
    path: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    idle: Vec<Connection>,
    /// Connections lent out right now.
    out: usize,
    /// A swap is under way: no new reads until `reopen`.
    closed: bool,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Readers {
        Readers { path, state: Mutex::default(), changed: Condvar::new() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
        conn.execute_batch("PRAGMA query_only = 1;").map_err(backend)?;
        super::stable_plans(&conn)?;
        Ok(conn)
    }

    /// Runs `f` on a read connection (blocking: call it off the async runtime).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = {
            let mut s = self.state();
            while s.closed || (s.idle.is_empty() && s.out >= KEEP) {
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.out += 1;
            s.idle.pop()
        };
        let conn = match pooled.map_or_else(|| self.open(), Ok) {
            Ok(c) => Some(c),
            Err(e) => {
                self.give_back(None);
                return Err(e);
            }
        };
        let result = f(conn.as_ref().expect("a connection"));
        self.give_back(conn);
        result
    }

    fn give_back(&self, conn: Option<Connection>) {
        let mut s = self.state();
        s.out -= 1;
        if let Some(c) = conn {
            if !s.closed && s.idle.len() < KEEP {
                s.idle.push(c);
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Closes every read connection (waiting for those in use) and holds new reads off
    /// until `reopen`.
    pub(crate) fn close(&self) {
        let mut s = self.state();
        s.closed = true;
        while s.out > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.idle.clear();
    }

    pub(crate) fn reopen(&self) {
        self.state().closed = false;
        self.changed.notify_all();
    }
}
