//! The wire messages of the replication protocol (DESIGN §5), as JSON text frames in a
//! versioned envelope: `{ "v": 1, "type": "batch", ... }`.
//!
//! A connection opens with `hello`/`welcome` (identities); each pass then starts with
//! `start`, runs preflight (`preflight`/`point`), `begin`, then `batch`es or `snapshot`
//! chunks each answered by `ack`, and closes with `end`/`done`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::peer::{Entry, Mark, Point};
use crate::clock::Stamp;
use crate::merge::{Contender, DocState};
use crate::layers::Layers;
use crate::store::{Row, StoredDoc};

pub const PROTOCOL_VERSION: u32 = 1;

/// Which way rows flow in a pass, seen from the side that starts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The starter sends its rows.
    Push,
    /// The starter receives the other side's rows.
    Pull,
}

/// One document's full merge state, as snapshots carry it (the wire keeps the stored
/// form's one-letter keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDoc {
    #[serde(rename = "c")]
    pub collection: String,
    pub id: String,
    #[serde(rename = "d")]
    pub doc: Option<Map<String, Value>>,
    #[serde(rename = "s")]
    pub stamps: BTreeMap<String, Stamp>,
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The schema version of the layer in `stamps`/`deleted` (and of the view `doc`).
    #[serde(rename = "v")]
    pub version: u32,
    /// Layers of other schema versions.
    #[serde(rename = "l", default, skip_serializing_if = "BTreeMap::is_empty", with = "version_keys")]
    pub layers: BTreeMap<u32, DocState>,
    /// Conflict tracking of the layer in `stamps` (`DocState::conflicts`).
    #[serde(rename = "x", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<Contender>>,
}

/// A snapshot chunk's documents: decoded, or already as their wire text. A server keeps
/// documents as JSON text and sends the same ones to every client that joins; decoding
/// each into a `SnapshotDoc` only to encode it again cost more than reading it, so such a
/// store's documents go out as text (`SnapshotDoc::wire_from_stored`), written into the
/// frame as they are (`Message::encode`). What is read off the wire is always `Decoded`.
#[derive(Clone, Debug)]
pub enum SnapshotDocs {
    Decoded(Vec<SnapshotDoc>),
    /// Each a `SnapshotDoc`'s JSON text; shared, as the same page goes to many clients
    /// (`doc_pages`).
    Wire(std::sync::Arc<[String]>),
}

impl SnapshotDocs {
    pub fn len(&self) -> usize {
        match self {
            SnapshotDocs::Decoded(d) => d.len(),
            SnapshotDocs::Wire(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The documents, decoding any in wire form (a chunk handed over in process, never
    /// through a frame). A wire document that does not decode is a protocol error.
    pub fn into_decoded(self) -> Result<Vec<SnapshotDoc>, String> {
        match self {
            SnapshotDocs::Decoded(d) => Ok(d),
            SnapshotDocs::Wire(w) => decode_wire(&w),
        }
    }
}

/// Wire documents decoded, read in place.
fn decode_wire(docs: &[String]) -> Result<Vec<SnapshotDoc>, String> {
    docs.iter().map(|d| serde_json::from_str(d).map_err(|e| format!("invalid snapshot document: {e}"))).collect()
}

impl From<Vec<SnapshotDoc>> for SnapshotDocs {
    fn from(docs: Vec<SnapshotDoc>) -> Self {
        SnapshotDocs::Decoded(docs)
    }
}

/// Equal when they hold the same documents, whatever their form.
impl PartialEq for SnapshotDocs {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SnapshotDocs::Decoded(a), SnapshotDocs::Decoded(b)) => a == b,
            (SnapshotDocs::Decoded(a), SnapshotDocs::Wire(b)) | (SnapshotDocs::Wire(b), SnapshotDocs::Decoded(a)) => decode_wire(b).ok().as_ref() == Some(a),
            (SnapshotDocs::Wire(a), SnapshotDocs::Wire(b)) => decode_wire(a).ok() == decode_wire(b).ok(),
        }
    }
}

/// Wire documents serialize decoded here (serde has no way to write text as it is);
/// `Message::encode` writes them into the frame without this.
impl Serialize for SnapshotDocs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SnapshotDocs::Decoded(d) => d.serialize(s),
            SnapshotDocs::Wire(w) => decode_wire(w).map_err(serde::ser::Error::custom)?.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SnapshotDocs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<SnapshotDoc>::deserialize(d).map(SnapshotDocs::Decoded)
    }
}

impl SnapshotDoc {
    /// The wire text of a document of `collection` from its stored JSON text (a
    /// `StoredDoc` as stores write it), with the content `from_stored` gives. The stored
    /// form keeps the wire's one-letter keys in the wire's order, and only the index keys
    /// (`i`) and the migration stamp (`m`) stay behind: a text without either (a relay's
    /// documents) goes out as it is, behind its collection; any other is decoded.
    pub fn wire_from_stored(collection: &str, stored: &str) -> Result<String, serde_json::Error> {
        // serde_json writes a key as `"i":`, so a text without that anywhere has none.
        let (has_index_keys, has_migrated) = (stored.contains(r#""i":"#), stored.contains(r#""m":"#));
        match stored.strip_prefix('{') {
            Some(rest) if rest.starts_with(r#""id":"#) && !has_index_keys && !has_migrated => {
                let c = serde_json::to_string(collection)?;
                let mut out = String::with_capacity(stored.len() + c.len() + 6);
                out.push_str(r#"{"c":"#);
                out.push_str(&c);
                out.push(',');
                out.push_str(rest);
                Ok(out)
            }
            _ => serde_json::to_string(&SnapshotDoc::from_stored(collection.to_string(), serde_json::from_str(stored)?)),
        }
    }
}

/// Version-keyed maps travel with string keys: messages are internally tagged enums,
/// which serde buffers, and buffered map keys only read back as strings.
mod version_keys {
    use std::collections::BTreeMap;

    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    use crate::merge::DocState;

    pub fn serialize<S: Serializer>(m: &BTreeMap<u32, DocState>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<String, &DocState>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, DocState>, D::Error> {
        BTreeMap::<String, DocState>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| k.parse::<u32>().map(|k| (k, v)).map_err(|_| D::Error::custom(format!("layer version {k:?} is not a number"))))
            .collect()
    }
}

impl SnapshotDoc {
    /// Takes the stored document: a snapshot page is read to be sent, nothing of it need
    /// be copied.
    pub fn from_stored(c: String, d: StoredDoc) -> SnapshotDoc {
        SnapshotDoc {
            collection: c,
            id: d.id,
            doc: d.doc,
            stamps: d.stamps,
            deleted: d.deleted,
            version: d.version,
            layers: d.layers,
            conflicts: d.conflicts,
        }
    }

    /// A document's state from its layers: the newest layer in front, the others in
    /// `layers`. None if there is no layer.
    pub fn from_layers(c: &str, id: &str, mut layers: Layers) -> Option<SnapshotDoc> {
        let v = *layers.0.keys().next_back()?;
        let top = layers.0.remove(&v)?;
        Some(SnapshotDoc {
            collection: c.to_string(),
            id: id.to_string(),
            doc: Some(top.doc),
            stamps: top.stamps,
            deleted: top.deleted,
            version: v,
            layers: layers.0,
            conflicts: top.conflicts,
        })
    }

    /// Every layer, by schema version (as `StoredDoc::layers`).
    pub fn layers(&self) -> Layers {
        let top = DocState { doc: self.doc.clone().unwrap_or_default(), stamps: self.stamps.clone(), deleted: self.deleted, conflicts: self.conflicts.clone() };
        Layers::of(self.version, top, &self.layers)
    }

    /// Every layer, by schema version, taken out of the document (`layers` without a copy:
    /// a snapshot's documents are merged once and dropped). The key stays.
    pub fn take_layers(&mut self) -> Layers {
        let top = DocState { doc: self.doc.take().unwrap_or_default(), stamps: std::mem::take(&mut self.stamps), deleted: self.deleted, conflicts: std::mem::take(&mut self.conflicts) };
        let mut l = std::mem::take(&mut self.layers);
        if !top.stamps.is_empty() {
            l.insert(self.version, top);
        }
        Layers(l)
    }
}

/// One row of a sender's `incoming` table, forwarded after a complete pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableEntry {
    pub db_id: String,
    pub row: Point,
    pub session: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum Message {
    Hello { library: String, #[serde(default)] token: Option<String>, db_id: String, schema_version: u32 },
    Welcome { db_id: String, max_row: u64, schema_version: u32 },
    Start { session: String, direction: Direction, per_diff: usize, max_diffs: usize },
    /// Sender → receiver: who I am and which sessions with you I remember (with the row
    /// each one reached).
    Preflight { session: String, db_id: String, max_row: u64, schema_version: u32, sessions: Vec<Entry> },
    /// Receiver → sender: the point of our newest common session, the transitive entries
    /// that could fast-forward further, the sessions I sent under to you (so you can
    /// tell whether I forgot rows I once gave you), and my per-origin marks (what I hold
    /// of each origin's own writes, so you skip them wherever they came from; sent only
    /// when you have rows past the point).
    Point {
        session: String,
        db_id: String,
        max_row: u64,
        schema_version: u32,
        point: Point,
        matched: Option<String>,
        candidates: Vec<Entry>,
        sent_sessions: Vec<String>,
        /// Per-origin marks (see `PeerRecords::marks`): what the receiver holds from each origin.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        marks: Vec<Mark>,
        /// The receiver takes only ops the sender wrote itself (origins are bound to
        /// identity: a server's client connection): send only own rows, by diffs, with no
        /// forwarded table; every other row is covered, not sent.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        own_only: bool,
    },
    /// Sender → receiver: the pass starts after `start`, by diffs or by snapshot; `total`
    /// is how many rows (or snapshot documents) there are to move, for progress.
    /// `resolutions`: the sender's resolution rows past `start` the receiver may lack,
    /// all of them, ahead of every batch (DESIGN §11); they cover nothing.
    Begin {
        session: String,
        start: Point,
        snapshot: bool,
        #[serde(default)]
        total: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resolutions: Vec<Row>,
    },
    Batch { session: String, after: Point, covers: Point, rows: Vec<Row> },
    /// `after`: how many snapshot documents the sender sent in this pass before this chunk,
    /// which the receiver checks against what it has taken: a duplicated chunk, or one
    /// that overtook a lost one, ends the pass instead of counting as the next.
    Snapshot {
        session: String,
        #[serde(default)]
        after: u64,
        docs: SnapshotDocs,
    },
    /// A batch's ack names the row it covers; a snapshot chunk's names how many snapshot
    /// documents the receiver has taken in this pass, this chunk included. Either way an
    /// ack says which message it answers, so a duplicated or late ack cannot pass for the
    /// next one's; with the chunks' `after`, a sender ends a snapshot only once its last
    /// chunk is in.
    Ack { session: String, point: Point },
    /// `max_row`: for a snapshot, the sender's max row it represents. `incoming`: the
    /// sender's table taken before the pass, present only when the pass is complete.
    End { session: String, complete: bool, max_row: u64, #[serde(default)] incoming: Option<Vec<TableEntry>> },
    Done { session: String },
    Error { code: String, message: String },
    /// Either side, at any time: are you there? Answered at once with `pong`. Browsers
    /// cannot send WebSocket pings, so liveness is part of the protocol.
    Ping {},
    Pong {},
    /// Server → client, between or during passes: rows landed here; my max row is now
    /// `max_row`. A live client that has not pulled that far runs a round at once.
    Poke { max_row: u64 },
}

/// The versioned envelope every frame travels in.
#[derive(Debug, Deserialize)]
struct Envelope {
    /// Checked before the envelope is read (`decode`); here so it is not an unknown field.
    #[allow(dead_code)]
    v: u32,
    #[serde(flatten)]
    msg: Message,
}

/// The envelope as it is written: borrows the message (a batch is not copied to be sent).
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u32,
    #[serde(flatten)]
    msg: &'a Message,
}

/// `batch` and `snapshot` frames read in one pass: rows and documents are most of what
/// travels, and the generic path (a JSON tree, then an internally tagged enum inside a
/// flattened envelope) builds each of them three times before it is decoded. Taken only
/// for frames as `encode` writes them (`{"v":1,"type":"batch",…`) and only when it reads
/// the whole frame; anything else takes the generic path, which also words every error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFrame {
    #[allow(dead_code)]
    v: u32,
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: serde::de::IgnoredAny,
    session: String,
    after: Point,
    covers: Point,
    rows: Vec<Row>,
}

/// See `BatchFrame`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFrame {
    #[allow(dead_code)]
    v: u32,
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: serde::de::IgnoredAny,
    session: String,
    #[serde(default)]
    after: u64,
    docs: SnapshotDocs,
}

/// How every frame `encode` writes begins, up to its type's name.
const FRAME_PREFIX: &str = concat!("{\"v\":", 1, ",\"type\":\"");
const _: () = assert!(PROTOCOL_VERSION == 1, "FRAME_PREFIX spells the protocol version");

/// The one-pass read of a `batch` or `snapshot` frame written by `encode`, if `text` is one.
fn decode_bulk(text: &str) -> Option<Message> {
    let rest = text.strip_prefix(FRAME_PREFIX)?;
    if rest.starts_with("batch\"") {
        let BatchFrame { session, after, covers, rows, .. } = serde_json::from_str(text).ok()?;
        Some(Message::Batch { session, after, covers, rows })
    } else if rest.starts_with("snapshot\"") {
        let SnapshotFrame { session, after, docs, .. } = serde_json::from_str(text).ok()?;
        Some(Message::Snapshot { session, after, docs })
    } else {
        None
    }
}

impl Message {
    pub fn encode(&self) -> String {
        if let Message::Snapshot { session, after, docs: SnapshotDocs::Wire(docs) } = self {
            // The frame serde writes for it, with each document's text as it is.
            let session = serde_json::to_string(session).expect("strings serialize");
            let mut out = String::with_capacity(64 + session.len() + docs.iter().map(|d| d.len() + 1).sum::<usize>());
            out.push_str(FRAME_PREFIX);
            out.push_str(&format!(r#"snapshot","session":{session},"after":{after},"docs":["#));
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(d);
            }
            out.push_str("]}");
            return out;
        }
        serde_json::to_string(&EnvelopeRef { v: PROTOCOL_VERSION, msg: self }).expect("messages serialize")
    }

    /// Decodes one frame. Refuses other protocol versions, unknown types and malformed
    /// JSON with a message fit to send back as a protocol error.
    pub fn decode(text: &str) -> Result<Message, String> {
        if let Some(msg) = decode_bulk(text) {
            return Ok(msg);
        }
        let raw: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        match raw.get("v").and_then(Value::as_u64) {
            Some(v) if v == PROTOCOL_VERSION as u64 => {}
            Some(v) => return Err(format!("unsupported protocol version {v}; this side speaks {PROTOCOL_VERSION}")),
            None => return Err("missing protocol version `v`".into()),
        }
        let env: Envelope = serde_json::from_value(raw).map_err(|e| format!("invalid message: {e}"))?;
        Ok(env.msg)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::Start { .. } => "start",
            Message::Preflight { .. } => "preflight",
            Message::Point { .. } => "point",
            Message::Begin { .. } => "begin",
            Message::Batch { .. } => "batch",
            Message::Snapshot { .. } => "snapshot",
            Message::Ack { .. } => "ack",
            Message::End { .. } => "end",
            Message::Done { .. } => "done",
            Message::Error { .. } => "error",
            Message::Ping {} => "ping",
            Message::Pong {} => "pong",
            Message::Poke { .. } => "poke",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_envelope() {
        let m = Message::Ack { session: "s".into(), point: 7 };
        let text = m.encode();
        assert!(text.contains("\"v\":1") && text.contains("\"type\":\"ack\""));
        assert_eq!(Message::decode(&text).unwrap(), m);
    }

    #[test]
    fn liveness_messages_round_trip() {
        for m in [Message::Ping {}, Message::Pong {}, Message::Poke { max_row: 9 }] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(Message::Ping {}.encode(), r#"{"v":1,"type":"ping"}"#);
        assert!(Message::decode(r#"{"v":1,"type":"ping","x":1}"#).is_err());
    }

    #[test]
    fn refuses_bad_frames() {
        assert!(Message::decode("garbage").is_err());
        assert!(Message::decode(r#"{"type":"ack","session":"s","point":1}"#).is_err());
        assert!(Message::decode(r#"{"v":2,"type":"ack","session":"s","point":1}"#).is_err());
        assert!(Message::decode(r#"{"v":1,"type":"nope"}"#).is_err());
        assert!(Message::decode(r#"{"v":1,"type":"ack","session":"s"}"#).is_err());
        assert!(Message::decode(r#"{"v":1,"type":"ack","session":"s","point":1,"extra":2}"#).is_err());
    }

    /// A batch frame as a peer writes it, with `row`'s op and sender.
    fn batch_text(extra: &str) -> String {
        let ts = Stamp { version: 1, wall: 1_700_000_000_000, counter: 2, node: "a1".into() }.encode();
        let op = format!(r#"{{"origin":"a1","originRow":3,"ts":"{ts}","schemaVersion":1,"collection":"docs","id":"x","kind":"put","fields":{{"id":"x","n":1.5,"s":"\u00e9\n"}}}}"#);
        format!(r#"{{"v":1,"type":"batch","session":"s","after":2,"covers":9,"rows":[{{"row":9,"op":{op},"from":"b2"}}]{extra}}}"#)
    }

    #[test]
    fn a_batch_reads_the_same_by_the_fast_path_and_the_generic_one() {
        let text = batch_text("");
        let fast = Message::decode(&text).unwrap();
        let raw: Value = serde_json::from_str(&text).unwrap();
        let generic = serde_json::from_value::<Envelope>(raw).unwrap().msg;
        assert_eq!(fast, generic);
        let Message::Batch { rows, covers, .. } = &fast else { panic!("a batch: {fast:?}") };
        assert_eq!((rows.len(), *covers, rows[0].from.as_deref()), (1, 9, Some("b2")));
        assert_eq!(Message::decode(&fast.encode()).unwrap(), fast, "what is written reads back");
    }

    #[test]
    fn a_batch_with_anything_wrong_is_still_refused() {
        assert!(Message::decode(&batch_text(r#","extra":1"#)).is_err());
        assert!(Message::decode(&batch_text("").replace(r#""v":1"#, r#""v":2"#)).is_err());
        assert!(Message::decode(&batch_text("").replace(r#""covers":9"#, r#""covers":"9""#)).is_err());
        assert!(Message::decode(&batch_text("").replace(r#","session":"s""#, "")).is_err());
    }

    #[test]
    fn a_snapshot_reads_the_same_by_the_fast_path_and_the_generic_one() {
        let ts = |wall, node: &str| Stamp { version: 1, wall, counter: 0, node: node.into() };
        let mut older = DocState::default();
        older.apply_register("", &ts(5, "a1"), Some(serde_json::json!({"n": 1})));
        let contender = Contender { ts: ts(7, "b2"), seen: None, value: Some(serde_json::json!("x")) };
        let doc = SnapshotDoc {
            collection: "docs".into(),
            id: "x".into(),
            doc: Some(serde_json::json!({"n": 2, "s": "\u{00e9}"}).as_object().unwrap().clone()),
            stamps: BTreeMap::from([(String::new(), Stamp { version: 2, ..ts(6, "a1") })]),
            deleted: false,
            version: 2,
            layers: BTreeMap::from([(1, older)]),
            conflicts: BTreeMap::from([("s".to_string(), vec![contender])]),
        };
        let msg = Message::Snapshot { session: "s".into(), after: 3, docs: vec![doc.clone(), SnapshotDoc { id: "y".into(), doc: None, deleted: true, ..doc }].into() };
        let text = msg.encode();
        assert_eq!(decode_bulk(&text).as_ref(), Some(&msg), "read in one pass: {text}");
        let generic = serde_json::from_value::<Envelope>(serde_json::from_str(&text).unwrap()).unwrap().msg;
        assert_eq!(generic, msg);
        assert!(Message::decode(&text.replacen(r#""docs":"#, r#""extra":1,"docs":"#, 1)).is_err(), "an unknown field is still refused");
        assert!(Message::decode(&text.replacen(r#""session":"s","#, "", 1)).is_err());
    }

    #[test]
    fn a_stored_document_passed_through_as_text_reads_as_from_stored_gives_it() {
        let ts = |wall, node: &str| Stamp { version: 1, wall, counter: 0, node: node.into() };
        let mut older = DocState::default();
        older.apply_register("", &ts(5, "a1"), Some(serde_json::json!({"n": 1, "q": "\"\u{00e9}"})));
        let contender = Contender { ts: ts(7, "b2"), seen: Some(ts(4, "a1")), value: Some(serde_json::json!("x")) };
        // A replica's document: index keys and a migration stamp, which stay behind.
        let indexed = StoredDoc {
            id: "x\"y".into(),
            doc: Some(serde_json::json!({"id": "x\"y", "n": 2, "s": "\u{00e9}"}).as_object().unwrap().clone()),
            stamps: BTreeMap::from([(String::new(), Stamp { version: 2, ..ts(6, "a1") }), ("n".into(), Stamp { version: 2, ..ts(8, "b2") })]),
            deleted: false,
            version: 2,
            index_keys: serde_json::json!({"n": 2}).as_object().unwrap().clone(),
            layers: BTreeMap::from([(1, older.clone()), (10, older)]),
            conflicts: BTreeMap::from([("s".to_string(), vec![contender])]),
            migrated: Some(ts(9, "a1")),
        };
        // A relay's documents (passed through as they are): layers and conflicts, a tombstone.
        let relayed = StoredDoc { index_keys: Map::new(), migrated: None, ..indexed.clone() };
        let tombstone = StoredDoc { id: "z".into(), doc: None, deleted: true, layers: BTreeMap::new(), conflicts: BTreeMap::new(), ..relayed.clone() };
        // A field named like a left-behind key: decoded, to be safe.
        let lookalike = StoredDoc { doc: Some(serde_json::json!({"id": "x\"y", "i": 1, "m": {}}).as_object().unwrap().clone()), ..relayed.clone() };
        for stored in [indexed, relayed, tombstone, lookalike] {
            let text = serde_json::to_string(&stored).unwrap();
            let wire = SnapshotDoc::wire_from_stored("tasks\n", &text).unwrap();
            let expected = SnapshotDoc::from_stored("tasks\n".into(), stored);
            assert_eq!(serde_json::from_str::<SnapshotDoc>(&wire).unwrap(), expected, "{wire}");
            assert_eq!(wire, serde_json::to_string(&expected).unwrap(), "the same text, field for field");
            // A chunk of them is the frame the decoded chunk makes, and decodes by either
            // path to the decoded documents.
            let msg = Message::Snapshot { session: "s\"1".into(), after: 7, docs: SnapshotDocs::Wire(vec![wire.clone(), wire].into()) };
            let decoded = Message::Snapshot { session: "s\"1".into(), after: 7, docs: vec![expected.clone(), expected].into() };
            assert_eq!(msg.encode(), decoded.encode());
            assert_eq!(serde_json::to_string(&msg).unwrap(), serde_json::to_string(&decoded).unwrap());
            let Some(Message::Snapshot { docs: SnapshotDocs::Decoded(fast), .. }) = decode_bulk(&msg.encode()) else { panic!("not read in one pass") };
            assert_eq!(Message::Snapshot { session: "s\"1".into(), after: 7, docs: SnapshotDocs::Decoded(fast) }, decoded);
            assert_eq!(serde_json::from_value::<Envelope>(serde_json::from_str(&msg.encode()).unwrap()).unwrap().msg, decoded);
        }
        assert!(SnapshotDoc::wire_from_stored("tasks", r#"{"id":"x","i":{}}"#).is_err(), "a stored text that must be decoded and is not a document is refused");
        assert!(SnapshotDocs::Wire(vec![r#"{"c":"tasks","id":"x"}"#.to_string()].into()).into_decoded().is_err());
    }
}
