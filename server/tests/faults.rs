//! Server faults against the real binary (issue 13): a full disk and a read-only data
//! directory, on a small tmpfs mounted by the test (the tests run as root, as `make test`
//! does on the project's machines; a failed mount fails the test, it never skips). Each
//! fault reaches the client with its own code (`DISK_FULL`, `STORAGE_ERROR`), `/healthz`
//! reports a store it cannot write, nothing half-written remains, and the server serves
//! again once the fault is gone.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use tidemark::sync::pass::Limits;

/// A tmpfs of `mb` MiB mounted at a fresh directory; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mb: u32) -> Tmpfs {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"]).arg(&dir).status().unwrap().success();
        assert!(ok, "mounting a tmpfs at {} (the fault tests need root)", dir.display());
        Tmpfs { dir, _parent: parent }
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.dir).status().unwrap().success();
        assert!(ok, "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the file system holding `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let file = dir.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", file.display())).stderr(std::process::Stdio::null()).status();
    file
}

fn code(r: Result<tidemark::sync::session::RoundReport, tidemark::error::Error>) -> String {
    r.expect_err("the round fails").code().to_string()
}

#[tokio::test]
async fn a_full_disk_is_reported_as_disk_full_and_loses_nothing() {
    let fs = Tmpfs::mount(16);
    let data = fs.dir.join("data");
    let server = Server::start(&data, &[]);
    let c = client().await;
    put_all(&c, (0..50).map(|i| format!("a{i}")), 1).await;
    sync_fully(&c, &server, Limits::default(), None).await;
    let filler = fill(&fs.dir);
    // Enough to need new pages.
    let big = "x".repeat(4_000);
    let writes: Vec<tidemark::Write> = (0..200)
        .map(|i| tidemark::Write::Put { collection: "docs".into(), doc: serde_json::json!({"id": format!("b{i}"), "n": 2, "pad": big}).as_object().unwrap().clone() })
        .collect();
    c.write(writes).await.unwrap();
    assert_eq!(code(round(&c, &server, Limits::default(), None).await), "DISK_FULL");
    // On the wire: the error, then a close that says the server failed (1011), not that
    // the client broke the protocol (1002).
    let rows = (1..=400).map(|n| raw_row("feedfacecafe0001", n, &format!("raw{n}"), serde_json::json!({"pad": big}))).collect();
    assert_eq!(raw_ending(&server, push_frames("feedfacecafe0001", None, rows)).await, Ending::new("DISK_FULL", 1011));
    assert!(server.healthy() || server.get("/healthz", None).0 == 503, "healthz answers");
    assert_eq!(server.max_row(LIB, None), 50, "nothing half-written");
    // Space comes back: the same client pushes everything.
    std::fs::remove_file(filler).unwrap();
    sync_fully(&c, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), 250);
    let fresh = client().await;
    sync_fully(&fresh, &server, Limits::default(), None).await;
    assert_eq!(docs(&fresh).await.len(), 250);
}

#[tokio::test]
async fn a_read_only_data_dir_fails_health_and_writes_with_storage_error() {
    let fs = Tmpfs::mount(16);
    // The mount itself is the data directory (the server's log goes next to it).
    let data = fs.dir.clone();
    fs.remount("ro");
    let mut server = Server::start(&data, &[]);
    let (status, body) = server.get("/healthz", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot be written"), "{body}");
    let c = client().await;
    put_all(&c, (0..10).map(|i| format!("a{i}")), 1).await;
    assert_eq!(code(round(&c, &server, Limits::default(), None).await), "STORAGE_ERROR");
    assert_eq!(raw_ending(&server, vec![raw_hello("feedfacecafe0001", None)]).await, Ending::new("STORAGE_ERROR", 1011), "a server fault closes with 1011");
    assert!(server.is_running());
    // The directory becomes writable: the server serves at once.
    fs.remount("rw");
    assert!(server.healthy());
    sync_fully(&c, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), 10);
}

/// Slow headers: 300 connections that each send half a request and stall are closed once
/// `--header-timeout` passes, and the server answers others meanwhile and after.
#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--header-timeout", "1"]);
    let mut held: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Wait: ").unwrap();
            s
        })
        .collect();
    assert!(server.healthy(), "others are served while they wait");
    let started = std::time::Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 512];
        // Closed by the server: end of stream (perhaps after a 408), or a reset.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a half-sent request was still open after {:?}: {e}", started.elapsed()),
            }
        }
    }
    eprintln!("300 half-sent requests closed within {:?}", started.elapsed());
    assert!(server.healthy());
    // The sync endpoint (an upgraded request) is unaffected.
    let c = client().await;
    put_all(&c, (0..3).map(|i| format!("a{i}")), 1).await;
    sync_fully(&c, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), 3);
}
