//! Row ids and stream positions for several writers on one PostgreSQL database (DESIGN §12):
//! Synapse's `MultiWriterIdGenerator`, with its database side, for Tidemark's libraries.
//!
//! # Tables
//! - `stream_sequences(library, id)`: each library's row ids come from a sequence of its own,
//!   `tidemark_rows_<id>` (`CACHE 1`, so ids are handed out in increasing order across every
//!   session). One sequence per library rather than one shared: a library's row numbers then
//!   stay dense like SQLite's (a client's point, `maxRow` and the 50% snapshot rule compare
//!   row counts), and one busy library never spreads gaps over the others. A counter table
//!   would not do: its row lock would serialize writers until commit.
//! - `stream_positions(library, instance, row, joined, updated_at)`: each writer's position,
//!   moved forward only (`GREATEST`) after each commit, in its own short statement, never
//!   inside a long transaction; `joined` is the writer's incarnation (below); `updated_at` is
//!   its heartbeat.
//!
//! # What a position means
//! A writer's position `W` promises that every id `<= W` it allocated has finished (committed
//! or rolled back) and that it will never allocate one `<= W` again. Readers are shown rows up
//! to the **persisted-up-to** position: the minimum over writers, stepped through gap-free runs
//! of ids known finished (`tracker`). Positions are only ever finished values (an id some
//! writer finished, or the persisted-up-to position), never a sequence value that may still
//! be in flight, so stepping through an announced position is always sound.
//!
//! # Joining, idling, leaving
//! - Every writer **joins** a library before allocating: it stores its start position — the
//!   newest finished position it knows, never 0 and without scanning the table — with a NOTIFY,
//!   under a new incarnation number (`joined`, from the `stream_joins` sequence) so that news
//!   about an earlier incarnation (a late "gone") cannot undo the new one.
//! - Nobody may move past a writer's in-flight id before knowing that writer. Joining commits
//!   before the writer's first `nextval`, so any id above that one was drawn after the join
//!   was committed. Others hear of such ids in two ways, both after the join: notifications and
//!   re-reads (notifications arrive in commit order; a re-read sees every earlier commit), and
//!   their *own* allocations — so each allocating transaction reads `stream_positions` again
//!   in a statement after its `nextval` and learns every writer it did not know.
//! - An **idle** writer's token is the newest id it has seen; [`Positions::tick`] (every
//!   `announce_every`, 1 s by default) stores it and bumps `updated_at`, so idle writers never
//!   hold readers back.
//! - [`Positions::leave`] removes this instance's rows on a clean shutdown.
//!
//! # The dead-writer rule
//! Every transaction that allocates ids first takes `FOR KEY SHARE` on its writer's own
//! `stream_positions` row, in the same statement as `nextval`, and holds it until it ends. A
//! writer is **dropped** (its row deleted, with a NOTIFY) when its row has not been refreshed
//! for `stale_after` (10 s by default) **and** no transaction of it is open: the deleting
//! statement locks the row `FOR UPDATE SKIP LOCKED`, which skips a row any open allocating
//! transaction still holds. Why that is safe:
//! - a dropped writer has no open transaction, so each id it ever allocated has finished: it
//!   committed (the row is in the table, fine to pass) or rolled back — and a dead process's
//!   open transactions are rolled back by PostgreSQL when its connection goes, so its
//!   uncommitted rows never commit;
//! - a writer that is only paused (SIGSTOP, a long GC) with a transaction open keeps its lock
//!   and is never dropped: it pins the position until it finishes, as it must (an
//!   `idle_in_transaction_session_timeout` on the server bounds how long, by aborting it);
//! - rows a dropped writer committed after the last position it stored (it died between a
//!   commit and storing its position) are finished, yet nobody will announce them: after any
//!   writer is removed, [`Positions::refresh`] reads the committed rows above the
//!   persisted-up-to position, which then steps through them — up to the first id it drew
//!   and never committed (rolled back as it died): nobody vouches for that id until a later
//!   write passes it, so rows above it wait for the library's next write (an idle writer
//!   cannot vouch for it by announcing the sequence's value: others step through announced
//!   positions as finished ids, and that value may be another writer's id in flight — the
//!   tracker simulation finds that case at once);
//! - a dropped writer that was alive after all finds its row gone at its next allocation or
//!   heartbeat and joins again before allocating: its new ids are above everything allocated
//!   before, and others learn of it first (the joining argument above).
//!
//! # Hearing about other writers
//! Positions arrive by LISTEN/NOTIFY (channel `tidemark_positions`, payload
//! `{"l": library, "i": instance, "r": row, "j": joined}` or `{"l", "i", "k": "gone", "j"}`),
//! sent in the same statement as the change they announce, and by re-reading
//! `stream_positions` every tick in case a notification was missed. Each source is sound on
//! its own: notifications arrive in commit order, so a writer's join is heard before any id
//! it drew; a re-read is one snapshot, which shows every writer whose join committed before
//! any position it shows had been reached. What must not be mixed is a writer set from before
//! a gap in the notifications with notifications after it: a writer that joined in the gap
//! (its notification lost) would be unknown while others' news moved past its ids. So:
//! - while the LISTEN connection is down nothing is heard, and the re-reads alone move the
//!   positions on (clients keep seeing new rows, their own writes included);
//! - from the moment it is back, every library is **held** until a re-read issued on the new
//!   connection has completed: notifications received meanwhile are collected but move
//!   nothing (`Link::complete_since`).
//!
//! # Using it from a store
//! Open a [`Positions`] per process, a [`Stream`] per library; in each commit's transaction
//! (READ COMMITTED) call [`Stream::allocate`], write the rows with those ids, commit, then
//! [`Allocation::committed`] (or [`Allocation::rolled_back`]); show clients rows up to
//! [`Stream::persisted_up_to`]; [`Stream::subscribe`] wakes when it moves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use futures::future::poll_fn;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Notification};

use super::tracker::Tracker;
use super::{quote_ident, Error};

/// The NOTIFY channel positions travel on.
pub const CHANNEL: &str = "tidemark_positions";

/// A table holding a library's committed rows, read at start-up: the newest rows step the
/// persisted-up-to position forward, and the largest id repairs a sequence left behind.
/// Names come from configuration (quoted, never user input); `row_column` must be indexed
/// together with `library_column`, as only rows above the slowest writer's position are read.
#[derive(Clone, Debug)]
pub struct RowsTable {
    pub table: String,
    pub library_column: String,
    pub row_column: String,
}

/// How one instance takes part.
#[derive(Clone, Debug)]
pub struct Config {
    /// This instance's name, unique among live processes on the database.
    pub instance: String,
    /// Whether it allocates row ids; a reader only follows the others.
    pub writer: bool,
    pub rows_tables: Vec<RowsTable>,
    /// How often [`Positions::tick`] runs when started with [`Positions::start`]: announce
    /// our token and heartbeat, re-read the table, drop dead writers.
    pub announce_every: Duration,
    /// How long a writer's row may go unrefreshed before it may be dropped (see the module
    /// doc); must exceed `announce_every` several times over.
    pub stale_after: Duration,
}

impl Config {
    /// A writer named `instance` with the defaults: announce every second, stale after 10 s.
    pub fn new(instance: impl Into<String>) -> Config {
        Config {
            instance: instance.into(),
            writer: true,
            rows_tables: Vec::new(),
            announce_every: Duration::from_secs(1),
            stale_after: Duration::from_secs(10),
        }
    }
}

/// One instance's stream positions for every library it has opened. Cheap to clone.
#[derive(Clone)]
pub struct Positions {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    pool: Pool,
    config: Config,
    link: Link,
}

/// Which LISTEN connection notifications come from (module doc, "Hearing about other
/// writers").
#[derive(Default)]
struct Link {
    enabled: AtomicBool,
    /// Bumped on every (re)connection, once its LISTEN is in place: a read issued before a
    /// reconnection may predate a writer that joined while the connection was down.
    epoch: AtomicU64,
}

impl Link {
    /// Taken before a read of `stream_positions`.
    fn mark(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether a read issued at `mark` covers every writer that notifications heard since
    /// could concern: it was issued after the current connection's LISTEN (or during the
    /// outage after it, when nothing is heard at all), so any writer missing from it joined
    /// later, and its join notification arrives before any news of its ids.
    fn complete_since(&self, mark: u64) -> bool {
        !self.enabled.load(Ordering::SeqCst) || self.epoch.load(Ordering::SeqCst) == mark
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Positions {
    /// Creates the tables if needed and returns positions with no background work: call
    /// [`Positions::listen`] and [`Positions::tick`] yourself, or use [`Positions::start`].
    pub async fn open(pool: Pool, config: Config) -> Result<Positions, Error> {
        if config.instance.is_empty() {
            return Err(Error::Config("the instance name is empty".into()));
        }
        if config.stale_after <= config.announce_every * 2 {
            return Err(Error::Config(format!(
                "stale_after ({:?}) must exceed twice announce_every ({:?})",
                config.stale_after, config.announce_every
            )));
        }
        install_schema(&pool).await?;
        Ok(Positions {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    pool,
                    config,
                    link: Link::default(),
                }),
                streams: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// [`Positions::open`], then LISTEN on `pg` and tick every `announce_every`.
    pub async fn start(
        pool: Pool,
        pg: tokio_postgres::Config,
        config: Config,
    ) -> Result<Positions, Error> {
        let positions = Positions::open(pool, config).await?;
        positions.listen(pg).await?;
        positions.spawn_ticker();
        Ok(positions)
    }

    pub fn instance(&self) -> &str {
        &self.inner.shared.config.instance
    }

    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Opens a dedicated LISTEN connection on `pg` and applies every position announced on it.
    /// It also holds a session lock on the instance name, so two live processes cannot use
    /// one name ([`Error::InstanceInUse`]). A lost connection is re-established; meanwhile
    /// the re-reads move the positions on, and after it the persisted-up-to positions are
    /// held until a re-read on the new connection (see the module doc).
    ///
    /// Call it before opening any stream: a stream opened earlier may have missed a writer
    /// joining, and notifications about that writer's later ids would then mislead it.
    pub async fn listen(&self, pg: tokio_postgres::Config) -> Result<(), Error> {
        if !lock(&self.inner.streams).is_empty() {
            return Err(Error::Config("listen before opening any stream".into()));
        }
        let link = connect_listener(&pg, &self.inner.shared.config.instance).await?;
        let shared = &self.inner.shared;
        shared.link.enabled.store(true, Ordering::SeqCst);
        shared.link.epoch.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(listen_loop(Arc::downgrade(&self.inner), pg, link));
        lock(&self.inner.tasks).push(task);
        Ok(())
    }

    /// Runs [`Positions::tick`] every `announce_every` in the background.
    pub fn spawn_ticker(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.shared.config.announce_every;
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (Positions { inner }).tick().await {
                    tracing::warn!(error = %e, "stream positions tick failed");
                }
            }
        });
        lock(&self.inner.tasks).push(task);
    }

    /// The stream of `library`, opened on first use: creates its sequence if needed, repairs
    /// a sequence behind the table, drops dead writers, loads every writer's position and
    /// (for a writer) joins.
    pub async fn stream(&self, library: &str) -> Result<Arc<Stream>, Error> {
        let stream = {
            let mut streams = lock(&self.inner.streams);
            streams
                .entry(library.to_string())
                .or_insert_with(|| Stream::new(library, self.inner.shared.clone()))
                .clone()
        };
        stream.loaded.get_or_try_init(|| stream.load()).await?;
        Ok(stream)
    }

    fn loaded_streams(&self) -> Vec<Arc<Stream>> {
        lock(&self.inner.streams)
            .values()
            .filter(|s| s.loaded.initialized())
            .cloned()
            .collect()
    }

    /// The periodic work: [`Positions::announce`], then [`Positions::refresh`].
    pub async fn tick(&self) -> Result<(), Error> {
        self.announce().await?;
        self.refresh().await
    }

    /// Stores this writer's token in every open library (forward only), refreshing its
    /// heartbeat, and notifies the libraries where it moved. Rejoins where it was dropped.
    pub async fn announce(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if !shared.config.writer {
            return Ok(());
        }
        let streams = self.loaded_streams();
        if streams.is_empty() {
            return Ok(());
        }
        let mut libraries = Vec::new();
        let mut tokens = Vec::new();
        let mut moved = Vec::new();
        for stream in &streams {
            let state = stream.state();
            let token = state.tracker.token_for_writer(&shared.config.instance);
            if token > state.announced {
                moved.push(stream.library.clone());
            }
            libraries.push(stream.library.clone());
            tokens.push(token);
        }
        let client = shared.pool.get().await?;
        let sql = "WITH v AS (SELECT * FROM unnest($2::text[], $3::bigint[]) AS v(library, row)),
                        up AS (UPDATE stream_positions p
                               SET row = GREATEST(p.row, v.row), updated_at = now()
                               FROM v WHERE p.instance = $1 AND p.library = v.library
                               RETURNING p.library, p.row, p.joined)
                   SELECT library, row,
                          CASE WHEN library = ANY($4::text[]) THEN
                            pg_notify($5, json_build_object('l', library, 'i', $1::text, 'r', row, 'j', joined)::text)::text
                          END
                   FROM up";
        let stmt = client.prepare_cached(sql).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &shared.config.instance,
                    &libraries,
                    &tokens,
                    &moved,
                    &CHANNEL,
                ],
            )
            .await?;
        let stored: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for stream in &streams {
            match stored.get(&stream.library) {
                Some(&row) => {
                    let mut state = stream.state();
                    state.announced = state.announced.max(row);
                }
                None => stream.rejoin(&client).await?,
            }
        }
        Ok(())
    }

    /// Re-reads `stream_positions` for every open library (for notifications missed), forgets
    /// writers whose row is gone, and drops dead writers (see the module doc).
    pub async fn refresh(&self) -> Result<(), Error> {
        let streams = self.loaded_streams();
        if streams.is_empty() {
            return Ok(());
        }
        let shared = &self.inner.shared;
        let mark = shared.link.mark();
        let issued: Vec<u64> = streams.iter().map(|s| s.state().tracker.stamp()).collect();
        let libraries: Vec<String> = streams.iter().map(|s| s.library.clone()).collect();
        let client = shared.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT library, instance, row, joined FROM stream_positions WHERE library = ANY($1)")
            .await?;
        let rows = client.query(&stmt, &[&libraries]).await?;
        let mut stored: HashMap<String, Vec<(String, i64, i64)>> = HashMap::new();
        for row in rows {
            stored
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), row.get(2), row.get(3)));
        }
        for (stream, issued) in streams.iter().zip(issued) {
            let found = stored.remove(&stream.library).unwrap_or_default();
            let mut state = stream.state();
            let present: BTreeSet<String> = found.iter().map(|(i, _, _)| i.clone()).collect();
            state.tracker.observe_all(found.into_iter().map(|(instance, row, joined)| (instance, row, Some(joined))));
            for gone in state.tracker.remove_absent(&present, issued) {
                tracing::info!(library = %stream.library, instance = %gone, "writer left");
            }
            if shared.link.complete_since(mark) {
                state.tracker.set_held(false);
            }
            stream.publish(&state);
        }
        for (library, instance, joined) in
            drop_dead_writers(&client, &shared.config, &libraries).await?
        {
            if let Some(stream) = streams.iter().find(|s| s.library == library) {
                stream.apply(Event::Gone(instance, Some(joined)));
            }
        }
        // A writer removed (here, by a notification, or by a re-read) may have committed rows
        // it never announced: they are finished, so read them (`Tracker::take_removed`).
        for stream in &streams {
            let after = {
                let mut state = stream.state();
                if state.loading || !state.tracker.take_removed() {
                    continue;
                }
                state.tracker.persisted_up_to()
            };
            let ids = match rows_above(&client, &shared.config, &stream.library, after).await {
                Ok(ids) => ids,
                Err(e) => {
                    stream.state().tracker.keep_removed();
                    return Err(e);
                }
            };
            let mut state = stream.state();
            state.tracker.load_rows(&ids);
            stream.publish(&state);
        }
        Ok(())
    }

    /// A clean shutdown: stops the background work and deletes this instance's rows (with a
    /// NOTIFY), so nobody waits `stale_after` for it. Fails with [`Error::Busy`] while one of
    /// its transactions is still open.
    pub async fn leave(self) -> Result<(), Error> {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let shared = &self.inner.shared;
        let libraries: Vec<String> = self
            .loaded_streams()
            .iter()
            .map(|s| s.library.clone())
            .collect();
        if !shared.config.writer || libraries.is_empty() {
            return Ok(());
        }
        let client = shared.pool.get().await?;
        let sql = "WITH mine AS (SELECT library, instance FROM stream_positions
                                 WHERE library = ANY($1) AND instance = $2 FOR UPDATE NOWAIT),
                        gone AS (DELETE FROM stream_positions p USING mine m
                                 WHERE p.library = m.library AND p.instance = m.instance
                                 RETURNING p.library, p.instance, p.joined)
                   SELECT library, pg_notify($3, json_build_object('l', library, 'i', instance, 'k', 'gone', 'j', joined)::text)::text
                   FROM gone";
        match client
            .query(sql, &[&libraries, &shared.config.instance, &CHANNEL])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(Error::Busy(
                shared.config.instance.clone(),
                libraries.join(","),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies one notification payload (from the LISTEN connection).
    fn dispatch(&self, notification: &Notification) {
        let Ok(note) = serde_json::from_str::<Note>(notification.payload()) else {
            tracing::warn!(
                payload = notification.payload(),
                "unreadable stream position notification"
            );
            return;
        };
        if note.i == self.inner.shared.config.instance {
            return;
        }
        let Some(stream) = lock(&self.inner.streams).get(&note.l).cloned() else {
            return;
        };
        match (note.k.as_deref(), note.r) {
            (Some("gone"), _) => stream.apply(Event::Gone(note.i, note.j)),
            (None, Some(row)) => stream.apply(Event::Position(note.i, row, note.j)),
            _ => tracing::warn!(
                payload = notification.payload(),
                "unknown stream position notification"
            ),
        }
    }

    /// The LISTEN connection is back: hold every library until a re-read issued on it
    /// completes (module doc). Called before its epoch begins, so no read issued earlier
    /// releases the hold.
    fn hold_after_gap(&self) {
        for stream in lock(&self.inner.streams).values() {
            stream.state().tracker.set_held(true);
        }
    }
}

/// A notification's payload.
#[derive(Deserialize)]
struct Note {
    l: String,
    i: String,
    r: Option<i64>,
    k: Option<String>,
    j: Option<i64>,
}

/// News about another writer (with the incarnation it concerns), applied in arrival order.
enum Event {
    Position(String, i64, Option<i64>),
    Gone(String, Option<i64>),
}

/// One library's row stream on this instance.
pub struct Stream {
    library: String,
    sequence: OnceLock<String>,
    shared: Arc<Shared>,
    state: Mutex<State>,
    loaded: tokio::sync::OnceCell<()>,
    watch: watch::Sender<i64>,
}

struct State {
    tracker: Tracker,
    /// Until loaded, news is kept here and applied after the start-up read.
    loading: bool,
    pending: Vec<Event>,
    /// Our position as last stored in `stream_positions`.
    announced: i64,
}

impl Stream {
    fn new(library: &str, shared: Arc<Shared>) -> Arc<Stream> {
        let tracker = Tracker::new(&shared.config.instance, shared.config.writer);
        Arc::new(Stream {
            library: library.to_string(),
            sequence: OnceLock::new(),
            shared,
            state: Mutex::new(State {
                tracker,
                loading: true,
                pending: Vec::new(),
                announced: 0,
            }),
            loaded: tokio::sync::OnceCell::new(),
            watch: watch::channel(0).0,
        })
    }

    pub fn library(&self) -> &str {
        &self.library
    }

    /// Every row id at or below this has finished: clients are shown rows up to here only.
    pub fn persisted_up_to(&self) -> i64 {
        self.state().tracker.persisted_up_to()
    }

    /// Every known writer's position, ours included when we write.
    pub fn positions(&self) -> BTreeMap<String, i64> {
        self.state().tracker.positions()
    }

    /// Every known writer's position as announced, ours with the idle advance: what the
    /// status shows (`Tracker::announced_positions`).
    pub fn announced_positions(&self) -> BTreeMap<String, i64> {
        self.state().tracker.announced_positions()
    }

    /// The newest position we can vouch for for `instance` (for ourselves, our token).
    pub fn current_token_for_writer(&self, instance: &str) -> i64 {
        self.state().tracker.token_for_writer(instance)
    }

    /// Our own position, without the idle advance to the newest id seen.
    pub fn minimal_local_current_token(&self) -> i64 {
        self.state().tracker.minimal_local_token()
    }

    /// Learns another writer's position (what a notification does). Forward only.
    pub fn advance(&self, instance: &str, row: i64) {
        self.apply(Event::Position(instance.to_string(), row, None));
    }

    /// Wakes whenever the persisted-up-to position moves; holds its current value.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.watch.subscribe()
    }

    /// Allocates `n` row ids inside `txn`, the transaction that will write the rows (READ
    /// COMMITTED). The ids count as in flight until the returned [`Allocation`] is resolved
    /// after the transaction ends. If this writer had been dropped as dead, it rejoins first
    /// (on another pooled connection) and retries once.
    pub async fn allocate(
        self: &Arc<Self>,
        txn: &deadpool_postgres::Transaction<'_>,
        n: usize,
    ) -> Result<Allocation, Error> {
        let config = &self.shared.config;
        if !config.writer {
            return Err(Error::NotAWriter(config.instance.clone()));
        }
        let fetch = Fetch::begin(self.clone());
        if n == 0 {
            return Ok(fetch.finish(Vec::new()));
        }
        let sequence = self.sequence.get().expect("a stream is loaded before use");
        // The lock on our own row comes first and is held until the transaction ends: while it
        // is held nobody can drop us (module doc). With no row (we were dropped) there is no
        // join output row, so `nextval` is never evaluated.
        let allocate = txn
            .prepare_cached(
                "WITH me AS MATERIALIZED (SELECT row FROM stream_positions
                                          WHERE library = $1 AND instance = $2 FOR KEY SHARE)
                 SELECT nextval($3::text::regclass) FROM me, generate_series(1, $4::bigint)",
            )
            .await?;
        // Read in a statement of its own, so after our ids were drawn (READ COMMITTED: a new
        // snapshot): any writer whose in-flight ids may lie below ours had joined by then, and
        // we must know it before our own ids can move the persisted-up-to position.
        let writers = txn
            .prepare_cached(
                "SELECT instance, row, joined FROM stream_positions WHERE library = $1 AND instance <> $2",
            )
            .await?;
        let count = n as i64;
        for attempt in 0..2 {
            // Pipelined: both are sent at once and run in this order.
            let allocate_params: [&(dyn ToSql + Sync); 4] =
                [&self.library, &config.instance, sequence, &count];
            let writers_params: [&(dyn ToSql + Sync); 2] = [&self.library, &config.instance];
            let (ids, others) = futures::try_join!(
                txn.query(&allocate, &allocate_params),
                txn.query(&writers, &writers_params),
            )?;
            if !ids.is_empty() {
                let mut ids: Vec<i64> = ids.iter().map(|r| r.get(0)).collect();
                ids.sort_unstable();
                self.state()
                    .tracker
                    .learn_new(others.iter().map(|r| (r.get(0), r.get(1), r.get(2))));
                return Ok(fetch.finish(ids));
            }
            if attempt == 0 {
                let client = self.shared.pool.get().await?;
                self.rejoin(&client).await?;
            }
        }
        Err(Error::Fenced(config.instance.clone(), self.library.clone()))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn apply(&self, event: Event) {
        let mut state = self.state();
        if state.loading {
            state.pending.push(event);
            return;
        }
        apply_event(&mut state.tracker, event);
        self.publish(&state);
    }

    fn publish(&self, state: &State) {
        let now = state.tracker.persisted_up_to();
        self.watch.send_if_modified(|seen| {
            let moved = *seen != now;
            *seen = now;
            moved
        });
    }

    /// Start-up (Synapse's `_load_current_ids` and `check_consistency`): see
    /// [`Positions::stream`].
    async fn load(self: &Arc<Self>) -> Result<(), Error> {
        let shared = &self.shared;
        let config = &shared.config;
        let mark = shared.link.mark();
        // News that arrived before this attempt is covered by the read below (it committed
        // before it); only what arrives from now on must be replayed.
        self.state().pending.clear();
        let mut client = shared.pool.get().await?;
        let sequence = ensure_sequence(&mut client, &self.library, config).await?;
        let _ = self.sequence.set(sequence);
        drop_dead_writers(&client, config, std::slice::from_ref(&self.library)).await?;

        let mut tracker = Tracker::new(&config.instance, config.writer);
        let stored: Vec<(String, i64, i64)> = client
            .query(
                "SELECT instance, row, joined FROM stream_positions WHERE library = $1",
                &[&self.library],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        match tracker.load_positions(stored) {
            Some(min) => tracker.load_rows(&rows_above(&client, config, &self.library, min).await?),
            None => tracker.load_max_row(max_row(&client, config, &self.library).await?),
        }
        let mut announced = 0;
        if let Some(start) = tracker.finish_load() {
            announced = join(&client, &self.library, &config.instance, start).await?;
        }

        let mut state = self.state();
        // A hold set while this read was under way (`hold_after_gap`) carries over.
        tracker.set_held(state.tracker.held() || !shared.link.complete_since(mark));
        state.tracker = tracker;
        state.announced = announced;
        state.loading = false;
        for event in std::mem::take(&mut state.pending) {
            apply_event(&mut state.tracker, event);
        }
        self.publish(&state);
        Ok(())
    }

    /// Joins again after being dropped as dead, at our token (a finished position).
    async fn rejoin(&self, client: &impl GenericClient) -> Result<(), Error> {
        let instance = &self.shared.config.instance;
        let token = self.state().tracker.token_for_writer(instance);
        let row = join(client, &self.library, instance, token).await?;
        tracing::info!(library = %self.library, %instance, row, "rejoined after being dropped");
        let mut state = self.state();
        state.announced = state.announced.max(row);
        Ok(())
    }

    /// Stores our token after a commit (forward only) and notifies; rejoins if we were dropped.
    async fn store_token(&self) -> Result<(), Error> {
        let instance = &self.shared.config.instance;
        let token = self.state().tracker.token_for_writer(instance);
        let client = self.shared.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH up AS (UPDATE stream_positions SET row = GREATEST(row, $3), updated_at = now()
                             WHERE library = $1 AND instance = $2 RETURNING row, joined)
                 SELECT row, pg_notify($4, json_build_object('l', $1::text, 'i', $2::text, 'r', row, 'j', joined)::text)::text
                 FROM up",
            )
            .await?;
        match client
            .query_opt(&stmt, &[&self.library, instance, &token, &CHANNEL])
            .await?
        {
            Some(row) => {
                let mut state = self.state();
                state.announced = state.announced.max(row.get(0));
                Ok(())
            }
            None => self.rejoin(&client).await,
        }
    }
}

/// An allocation under way: until it ends, our position stays below whatever it may return.
struct Fetch {
    stream: Arc<Stream>,
    key: i64,
    ended: bool,
}

impl Fetch {
    fn begin(stream: Arc<Stream>) -> Fetch {
        let key = stream.state().tracker.begin_fetch();
        Fetch {
            stream,
            key,
            ended: false,
        }
    }

    fn finish(mut self, ids: Vec<i64>) -> Allocation {
        self.stream.state().tracker.end_fetch(self.key, &ids);
        self.ended = true;
        Allocation {
            stream: self.stream.clone(),
            ids,
            open: true,
        }
    }
}

impl Drop for Fetch {
    /// The allocation failed or its future was dropped: nothing new is in flight.
    fn drop(&mut self) {
        if !self.ended {
            let mut state = self.stream.state();
            state.tracker.end_fetch(self.key, &[]);
            self.stream.publish(&state);
        }
    }
}

/// Row ids allocated inside a transaction. Resolve it once the transaction has ended:
/// [`Allocation::committed`] or [`Allocation::rolled_back`]. Dropping it unresolved counts as
/// rolled back — right when the transaction was dropped before its COMMIT was sent; a COMMIT
/// whose outcome is unknown must be awaited (e.g. on a task of its own), never dropped.
pub struct Allocation {
    stream: Arc<Stream>,
    ids: Vec<i64>,
    open: bool,
}

impl Allocation {
    /// The allocated row ids, ascending.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// The transaction committed: the ids are finished; our position is stored and announced.
    pub async fn committed(mut self) -> Result<(), Error> {
        self.finish();
        if self.ids.is_empty() {
            return Ok(());
        }
        self.stream.store_token().await
    }

    /// The transaction rolled back: the ids will never commit, so they must not hold the
    /// position back. Nothing is stored (the next heartbeat carries our token).
    pub fn rolled_back(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if std::mem::take(&mut self.open) {
            let mut state = self.stream.state();
            state.tracker.mark_finished(&self.ids);
            self.stream.publish(&state);
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.finish();
    }
}

fn apply_event(tracker: &mut Tracker, event: Event) {
    match event {
        Event::Position(instance, row, joined) => tracker.observe(&instance, row, joined),
        Event::Gone(instance, joined) => tracker.remove(&instance, joined),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

async fn install_schema(pool: &Pool) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let txn = client.transaction().await?;
    // Instances starting together would race on CREATE TABLE IF NOT EXISTS.
    txn.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('tidemark-schema:positions', 0));
         CREATE TABLE IF NOT EXISTS stream_sequences (
             library TEXT PRIMARY KEY,
             id BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE);
         CREATE SEQUENCE IF NOT EXISTS stream_joins;
         CREATE TABLE IF NOT EXISTS stream_positions (
             library TEXT NOT NULL,
             instance TEXT NOT NULL,
             row BIGINT NOT NULL,
             joined BIGINT NOT NULL DEFAULT nextval('stream_joins'),
             updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
             PRIMARY KEY (library, instance));",
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// The library's sequence, created on first use, and moved past the largest id in the rows
/// tables or in `stream_positions` if it is behind them (a restore, a sequence reset): ids
/// at or below those may already be stored or shown to clients.
async fn ensure_sequence(
    client: &mut deadpool_postgres::Object,
    library: &str,
    config: &Config,
) -> Result<String, Error> {
    let txn = client.transaction().await?;
    txn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("tidemark-stream:{library}")],
    )
    .await?;
    txn.execute(
        "INSERT INTO stream_sequences (library) VALUES ($1) ON CONFLICT (library) DO NOTHING",
        &[&library],
    )
    .await?;
    let id: i64 = txn
        .query_one(
            "SELECT id FROM stream_sequences WHERE library = $1",
            &[&library],
        )
        .await?
        .get(0);
    let sequence = format!("tidemark_rows_{id}");
    txn.batch_execute(&format!(
        "CREATE SEQUENCE IF NOT EXISTS {sequence} AS bigint MINVALUE 1 START 1 CACHE 1"
    ))
    .await?;
    let row = txn
        .query_one(
            &format!("SELECT last_value, is_called FROM {sequence}"),
            &[],
        )
        .await?;
    let (last_value, is_called): (i64, bool) = (row.get(0), row.get(1));
    let last = if is_called {
        last_value
    } else {
        last_value - 1
    };
    let mut top: i64 = txn
        .query_one(
            "SELECT COALESCE(max(row), 0) FROM stream_positions WHERE library = $1",
            &[&library],
        )
        .await?
        .get(0);
    top = top.max(max_row(&txn, config, library).await?);
    if top > last {
        tracing::warn!(%library, sequence = %sequence, last, top, "sequence behind the stored rows; moving it forward");
        txn.execute(
            &format!(
                "SELECT setval('{sequence}', GREATEST((SELECT last_value FROM {sequence}), $1))"
            ),
            &[&top],
        )
        .await?;
    }
    txn.commit().await?;
    Ok(sequence)
}

/// The largest row id of `library` in the rows tables (0 when none).
async fn max_row(
    client: &impl GenericClient,
    config: &Config,
    library: &str,
) -> Result<i64, Error> {
    let mut top = 0;
    for t in &config.rows_tables {
        let sql = format!(
            "SELECT COALESCE(max({row}), 0)::bigint FROM {table} WHERE {lib} = $1",
            row = quote_ident(&t.row_column),
            table = quote_ident(&t.table),
            lib = quote_ident(&t.library_column),
        );
        let max: i64 = client.query_one(&sql, &[&library]).await?.get(0);
        top = top.max(max);
    }
    Ok(top)
}

/// The committed row ids of `library` above `after`, ascending.
async fn rows_above(
    client: &impl GenericClient,
    config: &Config,
    library: &str,
    after: i64,
) -> Result<Vec<i64>, Error> {
    let mut ids = Vec::new();
    for t in &config.rows_tables {
        let sql = format!(
            "SELECT {row}::bigint FROM {table} WHERE {lib} = $1 AND {row} > $2 ORDER BY {row}",
            row = quote_ident(&t.row_column),
            table = quote_ident(&t.table),
            lib = quote_ident(&t.library_column),
        );
        ids.extend(
            client
                .query(&sql, &[&library, &after])
                .await?
                .iter()
                .map(|r| r.get::<_, i64>(0)),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Stores a writer's (re)start position — forward only — and notifies. Returns what is stored.
async fn join(
    client: &impl GenericClient,
    library: &str,
    instance: &str,
    start: i64,
) -> Result<i64, Error> {
    let row = client
        .query_one(
            "WITH up AS (INSERT INTO stream_positions (library, instance, row, updated_at)
                         VALUES ($1, $2, $3, now())
                         ON CONFLICT (library, instance) DO UPDATE
                         SET row = GREATEST(stream_positions.row, EXCLUDED.row), updated_at = now()
                         RETURNING row, joined)
             SELECT row, pg_notify($4, json_build_object('l', $1::text, 'i', $2::text, 'r', row, 'j', joined)::text)::text
             FROM up",
            &[&library, &instance, &start, &CHANNEL],
        )
        .await?;
    Ok(row.get(0))
}

/// Drops the dead writers of `libraries` (module doc: unrefreshed for `stale_after` and no
/// transaction open — rows an open transaction holds are skipped). Returns (library,
/// instance, incarnation) of each one dropped.
async fn drop_dead_writers(
    client: &impl GenericClient,
    config: &Config,
    libraries: &[String],
) -> Result<Vec<(String, String, i64)>, Error> {
    let rows = client
        .query(
            "WITH victim AS (SELECT library, instance FROM stream_positions
                             WHERE library = ANY($1) AND instance <> $2
                               AND updated_at < now() - make_interval(secs => $3)
                             FOR UPDATE SKIP LOCKED),
                  gone AS (DELETE FROM stream_positions p USING victim v
                           WHERE p.library = v.library AND p.instance = v.instance
                           RETURNING p.library, p.instance, p.joined)
             SELECT library, instance, joined,
                    pg_notify($4, json_build_object('l', library, 'i', instance, 'k', 'gone', 'j', joined)::text)::text
             FROM gone",
            &[&libraries, &config.instance, &config.stale_after.as_secs_f64(), &CHANNEL],
        )
        .await?;
    let gone: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (library, instance, _) in &gone {
        tracing::warn!(%library, %instance, "dropped a dead writer: no heartbeat and no open transaction");
    }
    Ok(gone)
}

/// A LISTEN connection: its client (dropping it closes the connection) and its notifications
/// (the channel closes when the connection ends).
struct ListenLink {
    _client: tokio_postgres::Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
}

async fn connect_listener(
    pg: &tokio_postgres::Config,
    instance: &str,
) -> Result<ListenLink, Error> {
    let (client, mut connection) = pg.connect(NoTls).await?;
    let (tx, notifications) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "stream positions LISTEN connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let ours: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&format!("tidemark-instance:{instance}")],
        )
        .await?
        .get(0);
    if !ours {
        return Err(Error::InstanceInUse(instance.to_string()));
    }
    Ok(ListenLink {
        _client: client,
        notifications,
    })
}

/// Applies notifications as they come; when the connection is lost, reconnects (the ticks'
/// re-reads go on meanwhile), holds every library, and re-reads the table (which releases
/// them) before applying the new connection's first notification.
async fn listen_loop(weak: Weak<Inner>, pg: tokio_postgres::Config, mut link: ListenLink) {
    loop {
        while let Some(notification) = link.notifications.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            Positions { inner }.dispatch(&notification);
        }
        let Some(inner) = weak.upgrade() else { return };
        let positions = Positions { inner };
        tracing::warn!(instance = %positions.instance(), "LISTEN connection lost; following positions by re-reading until it is back");
        let instance = positions.instance().to_string();
        drop(positions);
        let mut backoff = Duration::from_millis(100);
        link = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if weak.strong_count() == 0 {
                return;
            }
            match connect_listener(&pg, &instance).await {
                Ok(link) => break link,
                Err(e) => tracing::warn!(error = %e, "reconnecting the LISTEN connection"),
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        let positions = Positions { inner };
        positions.hold_after_gap();
        positions.inner.shared.link.epoch.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = positions.refresh().await {
            tracing::warn!(error = %e, "re-reading positions after reconnecting");
        }
    }
}
