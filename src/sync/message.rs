//! The wire messages of the replication protocol (DESIGN §5), as JSON text frames in a
//! versioned envelope: `{ "v": 1, "type": "batch", ... }`.
//!
//! A connection opens with `hello`/`welcome` (identities); each pass then starts with
//! `start`, runs preflight (`preflight`/`point`), `begin`, then `batch`es or `snapshot`
//! chunks each answered by `ack`, and closes with `end`/`done`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::peer::{Entry, Mark, Point};
use crate::clock::Stamp;
use crate::merge::{Contender, DocState};
use crate::layers::Layers;
use crate::store::{Row, StoredDoc};

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

/// A message's list of items — a snapshot chunk's documents, a batch's rows — decoded, or
/// already as their wire text. A server keeps documents and log rows as JSON text and
/// sends the same ones to many clients; decoding each only to encode it again cost more
/// than reading it, so such a store's items go out as text, written into the frame as they
/// are (`Message::encode`). What is read off the wire is always `Decoded`.
#[derive(Clone, Debug)]
pub enum Wired<T, S> {
    Decoded(Vec<T>),
    /// Each an item's JSON text; shared, as the same texts go to many clients.
    Wire(Arc<[S]>),
}

/// A snapshot chunk's documents (`SnapshotDoc::wire_from_stored` makes their text; a
/// server shares whole pages of it, `doc_pages`).
pub type SnapshotDocs = Wired<SnapshotDoc, String>;

/// A batch's rows (a server keeps recent rows' text, `Row::wire_text`, each shared by
/// every batch that carries it).
pub type BatchRows = Wired<Row, Arc<str>>;

/// The `incoming` table an `end` forwards (a server keeps each peer's entry as text,
/// `PeerRecords::ranked`, and forwards the same entries in every pass).
pub type Table = Wired<TableEntry, Arc<str>>;

/// An item a message carries as a list, and what a protocol error calls it.
pub trait WireItem: serde::de::DeserializeOwned + Serialize + PartialEq {
    const WHAT: &'static str;
}

impl WireItem for SnapshotDoc {
    const WHAT: &'static str = "snapshot document";
}

impl WireItem for Row {
    const WHAT: &'static str = "row";
}

impl WireItem for TableEntry {
    const WHAT: &'static str = "table entry";
}

impl<T: WireItem, S: AsRef<str>> Wired<T, S> {
    pub fn len(&self) -> usize {
        match self {
            Wired::Decoded(d) => d.len(),
            Wired::Wire(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, decoding any in wire form (a message handed over in process, never
    /// through a frame). A wire item that does not decode is a protocol error.
    pub fn into_decoded(self) -> Result<Vec<T>, String> {
        match self {
            Wired::Decoded(d) => Ok(d),
            Wired::Wire(w) => decode_wire(&w),
        }
    }
}

/// Wire items decoded, read in place.
fn decode_wire<T: WireItem, S: AsRef<str>>(items: &[S]) -> Result<Vec<T>, String> {
    items.iter().map(|d| serde_json::from_str(d.as_ref()).map_err(|e| format!("invalid {}: {e}", T::WHAT))).collect()
}

impl<T, S> From<Vec<T>> for Wired<T, S> {
    fn from(items: Vec<T>) -> Self {
        Wired::Decoded(items)
    }
}

/// Equal when they hold the same items, whatever their form.
impl<T: WireItem, S: AsRef<str>> PartialEq for Wired<T, S> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Wired::Decoded(a), Wired::Decoded(b)) => a == b,
            (Wired::Decoded(a), Wired::Wire(b)) | (Wired::Wire(b), Wired::Decoded(a)) => decode_wire::<T, S>(b).ok().as_ref() == Some(a),
            (Wired::Wire(a), Wired::Wire(b)) => decode_wire::<T, S>(a).ok() == decode_wire::<T, S>(b).ok(),
        }
    }
}

/// Wire items serialize decoded here (serde has no way to write text as it is);
/// `Message::encode` writes them into the frame without this.
impl<T: WireItem, S: AsRef<str>> Serialize for Wired<T, S> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        match self {
            Wired::Decoded(d) => d.serialize(s),
            Wired::Wire(w) => decode_wire::<T, S>(w).map_err(serde::ser::Error::custom)?.serialize(s),
        }
    }
}

impl<'de, T: WireItem, S> Deserialize<'de> for Wired<T, S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Wired::Decoded)
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

/// Version-keyed maps travel as JSON objects: the versions are their string keys.
mod version_keys {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::merge::DocState;
    use crate::pairs::Pairs;

    // Written and read entry by entry: a map of string keys in between would be a map
    // type of its own, whose code the wasm carries.
    pub fn serialize<S: Serializer>(m: &BTreeMap<u32, DocState>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, DocState>, D::Error> {
        let mut m = BTreeMap::new();
        for (k, v) in Pairs::<String, DocState>::deserialize(d)?.0 {
            m.insert(k.parse::<u32>().map_err(|_| D::Error::custom(format!("layer version {k:?} is not a number")))?, v);
        }
        Ok(m)
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

pub use crate::peer::TableEntry;

/// Declares the protocol's messages once, as the two enums that carry them: `Message`,
/// written as an internally tagged object (`{"type":"ack",…}`, `frame` puts it in its
/// envelope), and `Fields`, the same variants read with their `type` given apart
/// (`frame::decode` reads `v` and `type` first and hands it the rest of the object as the
/// variant's fields). serde's own reading of an internally tagged enum buffers every
/// frame into a tree of values before it decodes it, which costs a second pass over each
/// frame and, in the wasm, a buffering copy of every message type's decoder.
macro_rules! messages {
    ($($(#[$vm:meta])* $variant:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }),* $(,)?) => {
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
        pub enum Message {
            $($(#[$vm])* $variant { $($(#[$fm])* $field: $ty),* }),*
        }

        /// `Message`'s variants read as an externally tagged enum, from `frame::Typed`.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
        pub(super) enum Fields {
            $($variant { $($(#[$fm])* $field: $ty),* }),*
        }

        impl From<Fields> for Message {
            fn from(fields: Fields) -> Message {
                match fields {
                    $(Fields::$variant { $($field),* } => Message::$variant { $($field),* }),*
                }
            }
        }
    };
}

messages! {
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
        /// The receiver's migrations read other documents (`Rebuild::older_as_snapshot`):
        /// rows of an older schema version reach it as a snapshot, staged and migrated
        /// together (DESIGN §6), never as diffs its migrations could not read around.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        older_as_snapshot: bool,
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
    Batch { session: String, after: Point, covers: Point, rows: BatchRows },
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
    End { session: String, complete: bool, max_row: u64, #[serde(default)] incoming: Option<Table> },
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

impl Message {
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
            // A chunk of them is the frame the decoded chunk makes, and decodes to the
            // decoded documents.
            let msg = Message::Snapshot { session: "s\"1".into(), after: 7, docs: SnapshotDocs::Wire(vec![wire.clone(), wire].into()) };
            let decoded = Message::Snapshot { session: "s\"1".into(), after: 7, docs: vec![expected.clone(), expected].into() };
            assert_eq!(msg.encode(), decoded.encode());
            assert_eq!(serde_json::to_string(&msg).unwrap(), serde_json::to_string(&decoded).unwrap());
            assert_eq!(Message::decode(&msg.encode()).unwrap(), decoded);
        }
        assert!(SnapshotDoc::wire_from_stored("tasks", r#"{"id":"x","i":{}}"#).is_err(), "a stored text that must be decoded and is not a document is refused");
        assert!(SnapshotDocs::Wire(vec![r#"{"c":"tasks","id":"x"}"#.to_string()].into()).into_decoded().is_err());
    }
}
