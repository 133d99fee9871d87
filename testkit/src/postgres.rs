//! A private PostgreSQL cluster per test run (DESIGN §12).
//!
//! Tests that need PostgreSQL call [`PgCluster::shared`] (one cluster per test binary, started
//! on first use) and then [`PgCluster::create_database`] for a database of their own, so tests
//! running in parallel never see each other's tables. [`PgCluster::start`] gives a cluster of
//! one's own, stopped when it is dropped.
//!
//! A cluster lives in a fresh temporary directory: `initdb` runs as the `postgres` user when we
//! are root (PostgreSQL refuses to run as root; the directory is chowned to that user), or as
//! ourselves otherwise. `postgres` listens on a free 127.0.0.1 port only (plus a Unix socket in
//! the temporary directory, never the system one). **Durability is off for speed**
//! (`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`): the cluster is thrown away
//! after the run, so a crash of the machine cannot lose anything that matters.
//!
//! Nothing outlives the test binary, however it ends:
//! - dropping a [`PgCluster`] stops it (immediate shutdown) and removes its directory;
//! - the shared cluster sits in a `static`, which Rust never drops, so an `atexit` handler stops
//!   every cluster still running when the binary exits normally (libtest ends with `exit`, pass
//!   or fail);
//! - if the binary is killed, the kernel sends the postmaster SIGQUIT (its immediate-shutdown
//!   signal) through `PR_SET_PDEATHSIG`. That signal follows the *thread* that forked the
//!   postmaster, so the postmaster is spawned by a dedicated thread that lives exactly as long
//!   as the postmaster (it waits for it), never by a test thread that may end first. The
//!   directory stays behind then; the next run removes such directories once an hour old.
//!
//! PostgreSQL missing is a loud failure, never a skip: `make setup` (scripts/postgres.sh)
//! installs it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian installs PostgreSQL's server binaries, one directory per major version.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// How long a fresh cluster may take to accept connections before we give up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping postmaster may take before it is killed outright.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running private PostgreSQL cluster. Dropping it stops the server and removes its files.
pub struct PgCluster {
    bin: PathBuf,
    port: u16,
    server: Arc<Server>,
    next_database: AtomicU64,
    /// Held only so the directory is removed on drop (after the server has stopped).
    _dir: tempfile::TempDir,
}

/// The postmaster process, shared between its cluster, its waiting thread and the exit hook.
struct Server {
    pid: libc::pid_t,
    dir: PathBuf,
    exited: Mutex<bool>,
    exited_changed: Condvar,
    stopping: AtomicBool,
}

/// Every server not yet stopped, for the `atexit` hook.
static RUNNING: Mutex<Vec<Arc<Server>>> = Mutex::new(Vec::new());
static EXIT_HOOK: Once = Once::new();
static SHARED: OnceLock<PgCluster> = OnceLock::new();

impl PgCluster {
    /// The cluster shared by every test in this binary, started on first use.
    ///
    /// Panics (never skips) when PostgreSQL cannot be found or started.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| PgCluster::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a new private cluster: initdb into a temporary directory, postgres on a free
    /// 127.0.0.1 port, and waits until it accepts connections.
    pub fn start() -> Result<PgCluster, String> {
        let bin = bin_dir()?;
        let owner = server_owner()?;
        remove_abandoned_dirs(owner);
        let dir = make_dir(owner)?;
        let data = dir.path().join("data");
        init_db(&bin, dir.path(), &data, owner)?;
        // A port found free can be taken before postgres binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let server = spawn_server(&bin, dir.path(), &data, port, owner)?;
            match wait_ready(&bin, &server, port) {
                Ok(()) => {
                    register(&server);
                    return Ok(PgCluster {
                        bin,
                        port,
                        server,
                        next_database: AtomicU64::new(0),
                        _dir: dir,
                    });
                }
                Err(e) => {
                    server.stop();
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    /// The TCP port the cluster listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> i32 {
        self.server.pid
    }

    /// The directory holding the cluster's data, socket and log.
    pub fn dir(&self) -> &Path {
        &self.server.dir
    }

    /// A connection URL for `database` (user `postgres`, trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    /// Creates a new, empty database with a unique name and returns its connection URL.
    pub fn create_database(&self) -> String {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{}", std::process::id(), n);
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        self.url(&name)
    }

    /// Runs SQL through `psql` against `database`, returning its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-A",
                "-t",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.server.stop();
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !Arc::ptr_eq(s, &self.server));
    }
}

impl Server {
    /// Immediate shutdown (SIGQUIT: no checkpoint, shared memory removed), SIGKILL if that
    /// takes too long; returns once the postmaster has exited.
    fn stop(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            unsafe { libc::kill(self.pid, libc::SIGQUIT) };
        }
        if !self.wait_exit(STOP_TIMEOUT) {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.wait_exit(STOP_TIMEOUT);
        }
    }

    fn has_exited(&self) -> bool {
        *self.exited.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        let guard = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .exited_changed
            .wait_timeout_while(guard, timeout, |exited| !*exited)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.dir.join("postgres.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

/// The `atexit` hook: stops every cluster still running and removes its directory (statics,
/// such as the shared cluster, are never dropped).
extern "C" fn stop_all_at_exit() {
    let servers: Vec<Arc<Server>> =
        std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|p| p.into_inner()));
    for server in servers {
        server.stop();
        let _ = std::fs::remove_dir_all(&server.dir);
    }
}

fn register(server: &Arc<Server>) {
    EXIT_HOOK.call_once(|| unsafe {
        libc::atexit(stop_all_at_exit);
    });
    RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(server.clone());
}

/// The newest `/usr/lib/postgresql/<major>/bin` holding `postgres` and `initdb`, or the
/// directory named by `TIDEMARK_PG_BIN`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TIDEMARK_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("postgres").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "TIDEMARK_PG_BIN={} holds no postgres binary",
                dir.display()
            ))
        };
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PG_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file()).then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "PostgreSQL server binaries not found ({DEBIAN_PG_ROOT}/*/bin/postgres): run \
             `make setup` (scripts/postgres.sh installs Debian's postgresql). Tests that need \
             PostgreSQL fail rather than skip."
        )
    })
}

/// The uid/gid the server runs as: the `postgres` user when we are root, else ourselves.
fn server_owner() -> Result<Option<(u32, u32)>, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(
            "running as root but there is no `postgres` user to run PostgreSQL as \
                    (Debian's postgresql package creates it: run scripts/postgres.sh)"
                .into(),
        );
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

const DIR_PREFIX: &str = "tidemark-pg-";

fn dir_parent(owner: Option<(u32, u32)>) -> PathBuf {
    if owner.is_some() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// A fresh directory the server's user owns. As root it goes under /tmp, which every user
/// can traverse (a TMPDIR under /root would not be).
fn make_dir(owner: Option<(u32, u32)>) -> Result<tempfile::TempDir, String> {
    let parent = dir_parent(owner);
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir_in(&parent)
        .map_err(|e| {
            format!(
                "creating a temporary directory in {}: {e}",
                parent.display()
            )
        })?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
    }
    Ok(dir)
}

/// Removes cluster directories left behind by test runs that were killed (no exit hook ran):
/// older than an hour and with no live postmaster. Younger ones may be starting up right now.
fn remove_abandoned_dirs(owner: Option<(u32, u32)>) {
    let Ok(entries) = std::fs::read_dir(dir_parent(owner)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if ours && old && !postmaster_alive(&path.join("data")) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Whether the data directory's `postmaster.pid` names a live process.
fn postmaster_alive(data: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<libc::pid_t>().ok())
    else {
        return false;
    };
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A command that runs as the server's user (set in the child before exec).
fn as_owner(program: PathBuf, dir: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        // std drops supplementary groups too when root switches uid.
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", dir)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    cmd
}

fn init_db(bin: &Path, dir: &Path, data: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let out = as_owner(bin.join("initdb"), dir, owner)
        .arg("-D")
        .arg(data)
        // trust on 127.0.0.1 and the private socket only; --no-sync: nothing here must survive a crash.
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Spawns the postmaster from a thread of its own that waits for it, so the parent-death
/// signal fires when the process ends, not when some test thread does.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
) -> Result<Arc<Server>, String> {
    let log =
        File::create(dir.join("postgres.log")).map_err(|e| format!("creating the log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = as_owner(bin.join("postgres"), dir, owner);
    cmd.arg("-D").arg(data).args(["-p", &port.to_string()]);
    for setting in [
        "listen_addresses=127.0.0.1".to_string(),
        format!("unix_socket_directories={}", dir.display()),
        // Speed over durability: a throw-away cluster (see the module doc).
        "fsync=off".into(),
        "synchronous_commit=off".into(),
        "full_page_writes=off".into(),
        "max_connections=300".into(),
        // Dynamic shared memory as files in the data directory, removed with it.
        "dynamic_shared_memory_type=mmap".into(),
        "log_min_messages=warning".into(),
    ] {
        cmd.arg("-c").arg(setting);
    }
    cmd.stdout(log).stderr(log_err);
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            // After the uid switch (std applies it before pre_exec), which would clear it.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGQUIT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The spawning thread may have gone between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let dir = dir.to_path_buf();
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = tx.send(Err(format!("starting postgres: {e}")));
                    return;
                }
            };
            let server = Arc::new(Server {
                pid: child.id() as libc::pid_t,
                dir,
                exited: Mutex::new(false),
                exited_changed: Condvar::new(),
                stopping: AtomicBool::new(false),
            });
            let _ = tx.send(Ok(server.clone()));
            let _ = child.wait();
            *server.exited.lock().unwrap_or_else(|p| p.into_inner()) = true;
            server.exited_changed.notify_all();
        })
        .map_err(|e| format!("spawning the postgres thread: {e}"))?;
    rx.recv().map_err(|e| e.to_string())?
}

/// Polls `pg_isready` until the server accepts connections; fails with the server's log if it
/// exits or takes too long.
fn wait_ready(bin: &Path, server: &Server, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if server.has_exited() {
            return Err(format!(
                "postgres exited during start-up:\n{}",
                server.log()
            ));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
            ])
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "postgres did not accept connections in time:\n{}",
                server.log()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}
