//! The server's edge against hostile and greedy clients, on the real binary (issue 13,
//! DESIGN §5 "Bounded metadata and input", "Origins are bound to identity"): oversized
//! frames answered and closed cleanly, db ids bound to the token's user, connections and
//! snapshots per client capped, peer records pruned.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tidemark::sync::pass::Limits;
use tidemark::sync::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Frame;

fn text(v: Value) -> Frame {
    Frame::Text(v.to_string().into())
}

fn hello(db_id: &str, token: Option<&str>) -> Frame {
    text(json!({"v": 1, "type": "hello", "library": LIB, "token": token, "dbId": db_id, "schemaVersion": 1}))
}

/// How a raw connection ended: the error code the server sent (if any) and the close code
/// of its close frame (`None`: the connection ended without one, as a reset does — 1006).
#[derive(Debug, PartialEq)]
struct Ending {
    code: Option<String>,
    close: Option<u16>,
}

/// Reads until the server's close frame (or the end of the connection).
async fn ending(ws: &mut Ws) -> Ending {
    let mut end = Ending { code: None, close: None };
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Frame::Text(t)) => {
                    if let Ok(Message::Error { code, .. }) = Message::decode(t.as_str()) {
                        end.code.get_or_insert(code);
                    }
                }
                Ok(Frame::Close(c)) => {
                    end.close = Some(c.map_or(1005, |c| u16::from(c.code)));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed within 30 s");
    end
}

/// Oversized frames of several sizes, first or after `hello`: the client can always send
/// its frame to the end, then reads `FRAME_TOO_LARGE` and a close frame with code 1009 —
/// never a reset (1006).
#[tokio::test]
async fn oversize_frames_get_their_error_and_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-frame", "65536"]);
    for size in [65_537usize, 300_000, 4_000_000, 24_000_000] {
        for after_hello in [false, true] {
            let mut ws = raw_ws(&server).await;
            if after_hello {
                ws.send(hello("feedfacecafe0001", None)).await.unwrap();
                let welcome = ws.next().await.unwrap().unwrap();
                assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
            }
            // The server reads the frame to its end: a client (a browser) that fails on a
            // write cut off by a reset never reads the answer already on its way.
            let sent = ws.send(Frame::Text("x".repeat(size).into())).await;
            assert!(sent.is_ok(), "sending a frame of {size} bytes (after hello: {after_hello}) failed: {sent:?}");
            let end = ending(&mut ws).await;
            assert_eq!(end, Ending { code: Some("FRAME_TOO_LARGE".into()), close: Some(u16::from(CloseCode::Size)) }, "a frame of {size} bytes (after hello: {after_hello})");
        }
    }
    assert!(server.healthy());
    let c = client().await;
    put_all(&c, (0..3).map(|i| format!("a{i}")), 1).await;
    sync_fully(&c, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), 3);
}
