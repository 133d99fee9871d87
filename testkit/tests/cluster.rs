//! The private cluster really runs, keeps tests' databases apart, and never outlives its
//! owner: dropped, exiting normally, or killed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tidemark_testkit::PgCluster;

/// Whether `pid` is a live process (a zombie waiting to be reaped counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Fields after the parenthesised command name: the first is the state.
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `pg-cluster` and reads its line: (postmaster pid, directory, url).
fn holder(args: &[&str]) -> (std::process::Child, i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg-cluster"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn pg-cluster");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read line");
    let mut parts = line.split_whitespace();
    let pid: i32 = parts.next().expect("pid").parse().expect("pid number");
    let dir = parts.next().expect("dir").to_string();
    let url = parts.next().expect("url").to_string();
    (child, pid, dir, url)
}

/// A fake cluster directory under the parent the testkit uses, last modified `age` ago.
fn fake_dir(name: &str, age: Duration) -> std::path::PathBuf {
    let parent = if unsafe { libc::geteuid() } == 0 {
        "/tmp".into()
    } else {
        std::env::temp_dir()
    };
    let dir = parent.join(format!("tidemark-pg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    // A pid file naming a process that does not exist.
    std::fs::write(dir.join("data/postmaster.pid"), "999999999\n").unwrap();
    let when = std::time::SystemTime::now() - age;
    std::fs::File::open(&dir)
        .unwrap()
        .set_modified(when)
        .unwrap();
    dir
}

#[test]
fn databases_are_separate_and_drop_stops_the_server() {
    // Left by a killed run an hour ago vs. a cluster that may be starting right now.
    let abandoned = fake_dir("abandoned", Duration::from_secs(2 * 3600));
    let young = fake_dir("young", Duration::ZERO);
    let cluster = PgCluster::start().expect("start cluster");
    assert!(
        !abandoned.exists(),
        "an abandoned directory is removed by the next start"
    );
    assert!(young.exists(), "a young directory is left alone");
    std::fs::remove_dir_all(&young).unwrap();
    let pid = cluster.pid();
    let dir = cluster.dir().to_path_buf();
    assert!(alive(pid));
    let a = cluster.create_database();
    let b = cluster.create_database();
    assert_ne!(a, b);
    let db = |url: &str| url.rsplit('/').next().unwrap().to_string();
    cluster
        .psql(
            &db(&a),
            "CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (7)",
        )
        .unwrap();
    assert_eq!(
        cluster.psql(&db(&a), "SELECT x FROM only_in_a").unwrap(),
        "7"
    );
    let err = cluster
        .psql(&db(&b), "SELECT x FROM only_in_a")
        .unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    // Listens on 127.0.0.1 only, with durability off for speed.
    assert_eq!(
        cluster.psql("postgres", "SHOW listen_addresses").unwrap(),
        "127.0.0.1"
    );
    assert_eq!(cluster.psql("postgres", "SHOW fsync").unwrap(), "off");
    drop(cluster);
    assert!(!alive(pid), "postmaster {pid} still running after drop");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn shared_cluster_is_started_once() {
    let first = PgCluster::shared();
    let second = PgCluster::shared();
    assert!(std::ptr::eq(first, second));
    let url = first.create_database();
    assert!(
        url.starts_with(&format!("postgres://postgres@127.0.0.1:{}/", first.port())),
        "{url}"
    );
}

#[test]
fn a_process_that_exits_stops_its_shared_cluster() {
    let (mut child, pid, dir, _) = holder(&["--exit"]);
    assert!(child.wait().expect("wait").success());
    assert!(wait_gone(pid), "postmaster {pid} outlived its process");
    assert!(!Path::new(&dir).exists(), "{dir} not removed at exit");
}

#[test]
fn a_killed_process_takes_its_cluster_down() {
    let (mut child, pid, dir, _) = holder(&[]);
    assert!(alive(pid));
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        wait_gone(pid),
        "postmaster {pid} outlived its killed process"
    );
    // No exit hook runs on SIGKILL: the directory is left behind; clean it up here.
    let _ = std::fs::remove_dir_all(&dir);
}
