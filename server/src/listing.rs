//! Which libraries exist: here (files in the data directory) and on a peer
//! (`GET /v1/libraries`, answered by `http`), so a server replicates every library either
//! side holds.
//!
//! The peer's listing is fetched with a deliberately tiny HTTP/1.0 client (one request,
//! `Connection: close`, read to the end) with a timeout and a size cap; the answer is
//! `{"libraries": ["name", …]}` and every name is checked like a local one, so a peer can
//! never make this server open a file outside its data directory.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::library::valid_name;
use crate::upstream::PeerUrl;

/// Most bytes of a listing read from a peer.
const MAX_LISTING: u64 = 4 * 1024 * 1024;

/// The libraries stored under `data`, sorted: every `<name>.sqlite` with a valid name.
pub fn local(data: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".sqlite")).map(str::to_string))
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    names
}

#[derive(Deserialize)]
struct Listing {
    libraries: Vec<String>,
}

/// The libraries a peer holds, as its `GET /v1/libraries` lists them (`token` for a
/// server with a secret). Invalid names are skipped.
pub async fn fetch(peer: &PeerUrl, token: Option<&str>, timeout: Duration) -> Result<Vec<String>, String> {
    let body = match tokio::time::timeout(timeout, get(peer, &peer.listing_path(), token)).await {
        Err(_) => return Err(format!("no listing from {} within {} s", peer.authority, timeout.as_secs())),
        Ok(r) => r?,
    };
    let listing: Listing = serde_json::from_slice(&body).map_err(|e| format!("the listing from {} is malformed: {e}", peer.authority))?;
    Ok(listing.libraries.into_iter().filter(|n| valid_name(n)).collect())
}

/// One GET: the body of a 200 answer, or why not.
async fn get(peer: &PeerUrl, path: &str, token: Option<&str>) -> Result<Vec<u8>, String> {
    let fail = |e: std::io::Error| format!("cannot list the libraries of {}: {e}", peer.authority);
    let mut s = TcpStream::connect(&peer.authority).await.map_err(fail)?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let host = &peer.authority;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n{auth}\r\n").as_bytes())
        .await
        .map_err(fail)?;
    let mut raw = Vec::new();
    (&mut s).take(MAX_LISTING + 1).read_to_end(&mut raw).await.map_err(fail)?;
    if raw.len() as u64 > MAX_LISTING {
        return Err(format!("the listing from {} is over {MAX_LISTING} bytes", peer.authority));
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{} answered something other than HTTP", peer.authority))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
    let body = raw[split + 4..].to_vec();
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        return Err(format!("{} answered {status} to {path}: {text}", peer.authority));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_names() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.sqlite", "a.sqlite", "a.sqlite-wal", "bad.name.sqlite", "notes.txt"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.sqlite")).unwrap();
        assert_eq!(super::local(dir.path()), vec!["a", "b"]);
        assert!(super::local(&dir.path().join("missing")).is_empty());
    }
}
