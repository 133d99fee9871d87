//! One process's handle on the PostgreSQL database its libraries live in: the connection
//! pool, the library tables, the stream positions (`positions`), and the runtime every
//! database call runs on.
//!
//! # Tables
//! Every library lives in the same tables, keyed by its name, so a library one instance
//! creates is there for all of them. Values are the engine's own JSON forms as text (like the
//! SQLite store: readable with `psql`, and nothing to migrate when the engine adds optional
//! fields); text columns that order documents use the `C` collation, so the order is the
//! bytes' order on every database, whatever its locale.
//! - `tidemark_libraries(library, head)`: the head's fixed part (db id, schema version,
//!   flags) as the engine's JSON, with max row and clock left out. A library exists when its
//!   row does.
//! - `tidemark_generations(library, live)`: the key a library's rows are stored under once a
//!   rebuilt generation was swapped in (`generation`); without a row, the library's name.
//!   Every other table's `library` column holds that key.
//! - `tidemark_clocks(library, instance, slot, stamp)`: the head's clock, as the largest stamp
//!   of the library's rows. Each open transaction of an instance writes its own slot row,
//!   forward only, so concurrent commits never wait on each other for the clock, and the
//!   maximum never goes backwards.
//! - `tidemark_log(library, row, op, "from")`: the op log, row ids from the library's sequence
//!   (`positions`).
//! - `tidemark_docs(library, collection, id, state)`: each document's `StoredDoc`.
//! - `tidemark_peers(library, db_id, record)`: each peer's `PeerRecord`.
//! - `tidemark_format(format)`: the layout version, so an older server refuses a newer layout.
//!
//! The head's max row is not stored at all: it is the library's persisted-up-to position on
//! this instance (see `store`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::runtime::Handle;

use super::{Config, Error, Positions, RowsTable, Stream};

/// The layout version this code writes.
const FORMAT: i32 = 1;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS tidemark_format (format INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tidemark_libraries (
    library TEXT PRIMARY KEY,
    head TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tidemark_generations (
    library TEXT PRIMARY KEY,
    live TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tidemark_clocks (
    library TEXT NOT NULL,
    instance TEXT NOT NULL,
    slot INTEGER NOT NULL,
    stamp TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (library, instance, slot));
CREATE TABLE IF NOT EXISTS tidemark_log (
    library TEXT NOT NULL,
    row BIGINT NOT NULL,
    op TEXT NOT NULL,
    "from" TEXT,
    PRIMARY KEY (library, row));
-- The resolution log (DESIGN §11): rows of `tidemark_log` that hold resolutions, found
-- through a partial index without walking the log.
ALTER TABLE tidemark_log ADD COLUMN IF NOT EXISTS resolution BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS tidemark_log_resolutions ON tidemark_log (library, row) WHERE resolution;
CREATE TABLE IF NOT EXISTS tidemark_docs (
    library TEXT NOT NULL,
    collection TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (library, collection, id));
CREATE TABLE IF NOT EXISTS tidemark_peers (
    library TEXT NOT NULL,
    db_id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (library, db_id));
"#;

/// How this process uses the database.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A `postgres://` URL or a libpq key=value string.
    pub url: String,
    /// This instance's name: unique among the live processes on the database.
    pub instance: String,
    /// Most connections this process opens (besides its LISTEN connection).
    pub pool_size: usize,
    /// How long a transaction may sit idle before PostgreSQL aborts it (and releases what
    /// it holds): bounds how long a paused or hung instance can hold readers back.
    pub idle_in_transaction: Duration,
    /// How often this instance announces its position and re-reads everyone's.
    pub announce_every: Duration,
    /// How long a writer may go without a heartbeat before it may be dropped as dead.
    pub stale_after: Duration,
}

impl Settings {
    pub fn new(url: impl Into<String>, instance: impl Into<String>) -> Settings {
        let positions = Config::new("");
        Settings {
            url: url.into(),
            instance: instance.into(),
            pool_size: 16,
            idle_in_transaction: Duration::from_secs(10),
            announce_every: positions.announce_every,
            stale_after: positions.stale_after,
        }
    }
}

/// The database, shared by every library this process opens. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) positions: Positions,
    /// Where every database call runs: a COMMIT is never cancelled with the future that
    /// asked for it, and callers outside tokio (tests on a plain executor) can await stores.
    pub(crate) rt: Handle,
    pub(crate) instance: String,
    /// Clock slots not in use by an open transaction (see the module doc).
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    free: BTreeSet<i32>,
    next: i32,
}

/// A clock slot held by one open transaction; returned to the free list when dropped.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    pub(crate) number: i32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.free.insert(self.number);
    }
}

impl Shared {
    pub(crate) fn slot(self: &Arc<Self>) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let number = match slots.free.pop_first() {
            Some(n) => n,
            None => {
                slots.next += 1;
                slots.next - 1
            }
        };
        Slot { shared: self.clone(), number }
    }
}

/// Parses `url` and adds what every connection of ours needs.
fn connection_config(settings: &Settings) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config =
        settings.url.parse().map_err(|e| Error::Config(format!("--postgres {}: {e}", redact(&settings.url))))?;
    // CREATE … IF NOT EXISTS and friends would fill the log with notices.
    let timeout = format!("-c idle_in_transaction_session_timeout={} -c client_min_messages=warning", settings.idle_in_transaction.as_millis().max(1));
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {timeout}"),
        _ => timeout,
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name(&format!("tidemark-server {}", settings.instance));
    }
    Ok(config)
}

/// The URL (or key=value string) without its password, for error messages.
fn redact(url: &str) -> String {
    if let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@')) {
        if let Some(colon) = url[scheme + 3..at].find(':') {
            return format!("{}…{}", &url[..scheme + 3 + colon + 1], &url[at..]);
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=…" } else { kv })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Database {
    /// Connects, creates the tables if needed, and starts this instance's stream positions
    /// (LISTEN connection and heartbeat). Must be called on a tokio runtime, which every
    /// later database call then runs on.
    pub async fn connect(settings: &Settings) -> Result<Database, Error> {
        if settings.instance.is_empty() {
            return Err(Error::Config("the instance name is empty".into()));
        }
        let config = connection_config(settings)?;
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            // A pooled connection may have died (the server restarted): check each one before
            // handing it out, so a commit never starts on a dead connection.
            ManagerConfig { recycling_method: RecyclingMethod::Verified },
        );
        let pool = Pool::builder(manager).max_size(settings.pool_size.max(2)).build().map_err(|e| Error::Config(e.to_string()))?;
        install_tables(&pool).await?;
        let positions = Positions::start(
            pool.clone(),
            config,
            Config {
                instance: settings.instance.clone(),
                writer: true,
                rows_tables: vec![RowsTable { table: "tidemark_log".into(), library_column: "library".into(), row_column: "row".into() }],
                announce_every: settings.announce_every,
                stale_after: settings.stale_after,
            },
        )
        .await?;
        Ok(Database {
            shared: Arc::new(Shared {
                pool,
                positions,
                rt: Handle::current(),
                instance: settings.instance.clone(),
                slots: Mutex::new(Slots::default()),
            }),
        })
    }

    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    pub fn positions(&self) -> &Positions {
        &self.shared.positions
    }

    /// Runs `f` on the database's runtime and waits for it (from any executor).
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        match self.shared.rt.spawn(f).await {
            Ok(r) => r,
            Err(e) => Err(Error::Task(e.to_string())),
        }
    }

    /// Every library stored in the database, by name.
    pub async fn libraries(&self) -> Result<Vec<String>, Error> {
        let pool = self.shared.pool.clone();
        self.run(async move {
            let client = pool.get().await?;
            // Staging generations' keys hold a `~`, which no library name does.
            let rows = client
                .query(
                    "SELECT library FROM tidemark_libraries WHERE strpos(library, '~') = 0
                     UNION SELECT library FROM tidemark_generations ORDER BY 1",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    /// Whether the library exists (some instance created it).
    pub async fn exists(&self, library: &str) -> Result<bool, Error> {
        let pool = self.shared.pool.clone();
        let library = library.to_string();
        self.run(async move {
            let client = pool.get().await?;
            let stmt = client
                .prepare_cached("SELECT 1 FROM tidemark_libraries WHERE library = $1 UNION ALL SELECT 1 FROM tidemark_generations WHERE library = $1")
                .await?;
            Ok(!client.query(&stmt, &[&library]).await?.is_empty())
        })
        .await
    }

    /// The library's row stream on this instance (opened on first use).
    pub async fn stream(&self, library: &str) -> Result<Arc<Stream>, Error> {
        let positions = self.shared.positions.clone();
        let library = library.to_string();
        self.run(async move { positions.stream(&library).await }).await
    }

    /// A clean shutdown: this instance's positions are deleted (with a NOTIFY), so the other
    /// instances need not wait for its heartbeat to go stale.
    pub async fn leave(&self) -> Result<(), Error> {
        let positions = self.shared.positions.clone();
        self.run(async move { positions.leave().await }).await
    }
}

async fn install_tables(pool: &Pool) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let txn = client.transaction().await?;
    // Instances starting together would race on CREATE TABLE IF NOT EXISTS.
    txn.batch_execute("SELECT pg_advisory_xact_lock(hashtextextended('tidemark-schema:store', 0))").await?;
    txn.batch_execute(TABLES).await?;
    let stored: Option<i32> = txn.query_opt("SELECT max(format) FROM tidemark_format", &[]).await?.and_then(|r| r.get(0));
    match stored {
        Some(f) if f > FORMAT => {
            return Err(Error::Config(format!(
                "the database has Tidemark's storage format {f}, newer than this server's {FORMAT}: upgrade tidemark-server"
            )))
        }
        Some(_) => {}
        None => {
            txn.execute("INSERT INTO tidemark_format (format) VALUES ($1)", &[&FORMAT]).await?;
        }
    }
    txn.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://me:secret@db:5432/x"), "postgres://me:…@db:5432/x");
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("host=db user=me password=secret"), "host=db user=me password=…");
    }
}
