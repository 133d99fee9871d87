//! The client side of server-to-server sync: peer addresses, and the engine's `Transport`
//! over an outgoing WebSocket (tokio-tungstenite).
//!
//! A peer is named by its sync endpoint, `ws://HOST[:PORT]/…/v1/sync`; its library listing
//! lives next to it (`…/v1/libraries`). Only plain `ws://` is spoken (no TLS stack is
//! built in): reach a remote peer through a tunnel or a TLS-terminating proxy on loopback.
//!
//! `Upstream` is to a peer what a browser's socket is to this server: JSON text frames,
//! every message checked by the engine's decoder, a size limit, and a timeout on every
//! send and receive so a peer that stops answering ends the connection instead of
//! hanging it. Nothing the peer sends can panic: bad frames become `SyncError`s.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tidemark::error::SyncError;
use tidemark::sync::{Message, Transport};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A peer's address, checked once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUrl {
    /// As given (`ws://host:port/v1/sync`): what the status endpoint shows.
    pub url: String,
    /// `host:port`, as a TCP connect takes it (IPv6 hosts keep their brackets).
    pub authority: String,
    /// The path before `/v1/sync` (usually empty), for the listing's path.
    base: String,
}

impl PeerUrl {
    /// Parses `ws://HOST[:PORT][/PATH]`. The path defaults to `/v1/sync`.
    pub fn parse(text: &str) -> Result<PeerUrl, String> {
        let bad = |why: &str| format!("invalid peer {text:?}: {why} (expected ws://HOST:PORT/v1/sync)");
        let rest = match text.strip_prefix("ws://") {
            Some(r) => r,
            None if text.starts_with("wss://") => return Err(bad("wss:// is not supported; use a TLS tunnel and ws://")),
            None => return Err(bad("it must start with ws://")),
        };
        if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '?' | '#' | '\\')) {
            return Err(bad("empty, or has characters a peer address cannot have"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/sync"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.starts_with('[')) => {
                (h, p.parse::<u16>().map_err(|_| bad("the port is not a number from 1 to 65535"))?)
            }
            _ if authority.contains(':') && !authority.ends_with(']') => return Err(bad("the host is malformed")),
            _ => (authority, 80),
        };
        if host.is_empty() || port == 0 || (host.starts_with('[') != host.ends_with(']')) {
            return Err(bad("the host or port is missing"));
        }
        let path = if path == "/" { "/v1/sync" } else { path };
        let base = path.strip_suffix("/v1/sync").unwrap_or("").trim_end_matches('/').to_string();
        let url = format!("ws://{host}:{port}{path}");
        Ok(PeerUrl { url, authority: format!("{host}:{port}"), base })
    }

    /// The path of the peer's library listing.
    pub fn listing_path(&self) -> String {
        format!("{}/v1/libraries", self.base)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open sync connection to a peer.
pub struct Upstream {
    ws: Socket,
    timeout: Duration,
}

impl Upstream {
    /// Opens the WebSocket within `connect`, accepting messages up to `max_frame` bytes;
    /// then every send and receive must finish within `each`.
    pub async fn connect(peer: &PeerUrl, max_frame: usize, connect: Duration, each: Duration) -> Result<Upstream, SyncError> {
        let config = WebSocketConfig::default().max_message_size(Some(max_frame)).max_frame_size(Some(max_frame));
        let open = tokio_tungstenite::connect_async_with_config(peer.url.as_str(), Some(config), true);
        let (ws, _) = match tokio::time::timeout(connect, open).await {
            Err(_) => return Err(SyncError::Connection(format!("no answer from {} within {} s", peer.url, connect.as_secs()))),
            Ok(Err(e)) => return Err(SyncError::Connection(format!("cannot connect to {}: {e}", peer.url))),
            Ok(Ok(pair)) => pair,
        };
        Ok(Upstream { ws, timeout: each })
    }

    /// Closes cleanly, without waiting long for the peer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

impl Transport for Upstream {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        match tokio::time::timeout(self.timeout, self.ws.send(Frame::Text(msg.encode().into()))).await {
            Err(_) => Err(SyncError::Connection("the peer stopped reading".into())),
            Ok(r) => r.map_err(|e| SyncError::Connection(e.to_string())),
        }
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        loop {
            let frame = match tokio::time::timeout(self.timeout, self.ws.next()).await {
                Err(_) => return Err(SyncError::Connection(format!("no message from the peer for {} s", self.timeout.as_secs()))),
                Ok(None) => return Err(SyncError::Connection("the peer closed the connection".into())),
                Ok(Some(Err(e))) => return Err(SyncError::Connection(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            match frame {
                Frame::Text(text) => {
                    return Message::decode(text.as_str()).map_err(SyncError::Protocol);
                }
                Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => continue,
                Frame::Close(_) => return Err(SyncError::Connection("the peer closed the connection".into())),
                Frame::Binary(_) => return Err(SyncError::Protocol("binary frames are not part of the protocol".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PeerUrl;

    #[test]
    fn peer_urls() {
        let p = PeerUrl::parse("ws://127.0.0.1:8787/v1/sync").unwrap();
        assert_eq!((p.url.as_str(), p.authority.as_str(), p.listing_path().as_str()), ("ws://127.0.0.1:8787/v1/sync", "127.0.0.1:8787", "/v1/libraries"));
        let p = PeerUrl::parse("ws://sync.example").unwrap();
        assert_eq!((p.url.as_str(), p.authority.as_str()), ("ws://sync.example:80/v1/sync", "sync.example:80"));
        let p = PeerUrl::parse("ws://[::1]:9000/tm/v1/sync").unwrap();
        assert_eq!((p.authority.as_str(), p.listing_path().as_str()), ("[::1]:9000", "/tm/v1/libraries"));
        for bad in ["", "http://x:1/v1/sync", "wss://x:1/v1/sync", "ws://", "ws://x:0/", "ws://x:99999/", "ws://x:y/", "ws://a b:1/", "ws://u@x:1/", "ws://::1:80/", "ws://[::1/"] {
            assert!(PeerUrl::parse(bad).is_err(), "{bad:?}");
        }
    }
}
