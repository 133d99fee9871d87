//! The versioned envelope every message travels in (`{"v":1,"type":"batch",…}`): how a
//! frame is written (`Message::encode`) and read (`Message::decode`).
//!
//! A frame is read in one pass: `v` and `type` first, as `encode` writes them, then the
//! rest of the object straight into the message's fields (`Typed`). A frame whose keys
//! come in another order (JSON objects are unordered, and other implementations may
//! write them so) is read as a JSON value, written again in order and read the same way;
//! every error is worded from that second reading.

use serde::de::value::StrDeserializer;
use serde::de::{self, Deserialize, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, VariantAccess, Visitor};
use serde::Serialize;
use serde_json::Value;

use super::message::{BatchRows, Fields, Message, SnapshotDocs, Table};

pub const PROTOCOL_VERSION: u32 = 1;

/// How every frame `encode` writes begins, up to its type's name.
const FRAME_PREFIX: &str = concat!("{\"v\":", 1, ",\"type\":\"");
const _: () = assert!(PROTOCOL_VERSION == 1, "FRAME_PREFIX spells the protocol version");

/// The frame serde writes for a message of `kind` whose last field, `list`, holds items
/// in wire form: each item's text as it is (`message::Wired`). `fields` are the numbers
/// between the session and the list, in the message's field order.
fn wired_frame<S: AsRef<str>>(kind: &str, session: &str, fields: &[(&str, &dyn std::fmt::Display)], list: &str, items: &[S]) -> String {
    let session = serde_json::to_string(session).expect("strings serialize");
    let mut out = String::with_capacity(64 + session.len() + items.iter().map(|d| d.as_ref().len() + 1).sum::<usize>());
    out.push_str(FRAME_PREFIX);
    out.push_str(&format!(r#"{kind}","session":{session}"#));
    for (name, value) in fields {
        out.push_str(&format!(r#","{name}":{value}"#));
    }
    out.push_str(&format!(r#","{list}":["#));
    for (i, d) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(d.as_ref());
    }
    out.push_str("]}");
    out
}

/// The envelope as it is written: borrows the message (a batch is not copied to be sent).
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u32,
    #[serde(flatten)]
    msg: &'a Message,
}

impl Message {
    pub fn encode(&self) -> String {
        match self {
            Message::Snapshot { session, after, docs: SnapshotDocs::Wire(docs) } => wired_frame("snapshot", session, &[("after", after)], "docs", docs),
            Message::Batch { session, after, covers, rows: BatchRows::Wire(rows) } => wired_frame("batch", session, &[("after", after), ("covers", covers)], "rows", rows),
            Message::End { session, complete, max_row, incoming: Some(Table::Wire(table)) } => wired_frame("end", session, &[("complete", complete), ("maxRow", max_row)], "incoming", table),
            _ => serde_json::to_string(&EnvelopeRef { v: PROTOCOL_VERSION, msg: self }).expect("messages serialize"),
        }
    }

    /// Decodes one frame. Refuses other protocol versions, unknown types and malformed
    /// JSON with a message fit to send back as a protocol error.
    pub fn decode(text: &str) -> Result<Message, String> {
        if let Ok(msg) = read_in_order(text) {
            return Ok(msg);
        }
        let raw: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        let Value::Object(mut fields) = raw else { return Err("invalid message: a frame is a JSON object".into()) };
        match fields.remove("v").as_ref().and_then(Value::as_u64) {
            Some(v) if v == PROTOCOL_VERSION as u64 => {}
            Some(v) => return Err(format!("unsupported protocol version {v}; this side speaks {PROTOCOL_VERSION}")),
            None => return Err("missing protocol version `v`".into()),
        }
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err("invalid message: `type` is not a string".into()),
            None => return Err("invalid message: missing field `type`".into()),
        };
        let mut ordered = format!("{{\"v\":{PROTOCOL_VERSION},\"type\":{}", Value::String(kind));
        for (key, value) in fields {
            ordered.push_str(&format!(",{}:{value}", Value::String(key)));
        }
        ordered.push('}');
        read_in_order(&ordered).map_err(|e| {
            // The position would point into the text written here, not the sender's.
            let e = e.to_string();
            format!("invalid message: {}", e.rsplit_once(" at line ").map_or(e.as_str(), |(what, _)| what))
        })
    }
}

/// Reads a frame whose first keys are `v` and `type`, in one pass.
fn read_in_order(text: &str) -> Result<Message, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let msg = de::Deserializer::deserialize_map(&mut de, FrameVisitor)?;
    de.end()?;
    Ok(msg)
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a frame: {\"v\":1,\"type\":…}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        if map.next_key::<&str>()? != Some("v") {
            return Err(de::Error::custom("`v` is not the first key"));
        }
        let v: u32 = map.next_value()?;
        if v != PROTOCOL_VERSION {
            return Err(de::Error::custom(format!("unsupported protocol version {v}")));
        }
        if map.next_key::<&str>()? != Some("type") {
            return Err(de::Error::custom("`type` is not the second key"));
        }
        let kind: &str = map.next_value()?;
        Fields::deserialize(Typed { kind, map }).map(Message::from)
    }
}

/// An enum's variant named apart (`kind`) with its fields still to read from `map`: what
/// serde's externally tagged enums read, without the `{"kind":{…}}` nesting.
struct Typed<'a, A> {
    kind: &'a str,
    map: A,
}

impl<'de, A: MapAccess<'de>> de::Deserializer<'de> for Typed<'_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Typed<'_, A> {
    type Error = A::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), A::Error> {
        let name: StrDeserializer<A::Error> = self.kind.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Typed<'_, A> {
    type Error = A::Error;

    // Every message is a struct variant; the others cannot be named by a `type`.
    fn unit_variant(self) -> Result<(), A::Error> {
        Err(de::Error::invalid_type(de::Unexpected::StructVariant, &"a unit variant"))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _: S) -> Result<S::Value, A::Error> {
        Err(de::Error::invalid_type(de::Unexpected::StructVariant, &"a newtype variant"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, A::Error> {
        Err(de::Error::invalid_type(de::Unexpected::StructVariant, &"a tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.map)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::clock::Stamp;
    use crate::merge::{Contender, DocState};
    use crate::peer::{Entry, Mark};
    use crate::store::Row;
    use crate::sync::message::TableEntry;
    use crate::sync::message::SnapshotDoc;

    /// The frame with its keys in another order (sorted: `v` and `type` last), as another
    /// implementation may write it.
    fn reordered(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        let out = v.to_string();
        assert!(!out.starts_with(FRAME_PREFIX), "reordered: {out}");
        out
    }

    /// Reads `msg` from its frame, and from the same frame with its keys in another order.
    fn reads_back(msg: &Message) {
        let text = msg.encode();
        assert!(text.starts_with(FRAME_PREFIX), "{text}");
        assert_eq!(&Message::decode(&text).unwrap(), msg, "{text}");
        assert_eq!(&read_in_order(&text).unwrap(), msg, "read in one pass: {text}");
        assert_eq!(&Message::decode(&reordered(&text)).unwrap(), msg, "keys in another order: {text}");
    }

    fn ts(wall: u64, node: &str) -> Stamp {
        Stamp { version: 1, wall, counter: 0, node: node.into() }
    }

    #[test]
    fn every_message_reads_back_in_either_key_order() {
        let entry = Entry { session: "s".into(), row: 4, transitive: true };
        let mark = Mark { origin: "o".into(), row: 3, stamp: ts(5, "o") };
        for msg in [
            Message::Hello { library: "l".into(), token: Some("t".into()), db_id: "d".into(), schema_version: 2 },
            Message::Hello { library: "l".into(), token: None, db_id: "d".into(), schema_version: 2 },
            Message::Welcome { db_id: "d".into(), max_row: 9, schema_version: 1 },
            Message::Start { session: "s".into(), direction: crate::sync::Direction::Pull, per_diff: 10, max_diffs: 3 },
            Message::Preflight { session: "s".into(), db_id: "d".into(), max_row: 5, schema_version: 1, sessions: vec![entry.clone()] },
            Message::Point {
                session: "s".into(),
                db_id: "d".into(),
                max_row: 5,
                schema_version: 1,
                point: 3,
                matched: Some("m".into()),
                candidates: vec![entry.clone()],
                sent_sessions: vec!["a".into()],
                marks: vec![mark.clone(), mark],
                own_only: true,
                older_as_snapshot: true,
            },
            Message::Point {
                session: "s".into(),
                db_id: "d".into(),
                max_row: 5,
                schema_version: 1,
                point: 0,
                matched: None,
                candidates: vec![],
                sent_sessions: vec![],
                marks: vec![],
                own_only: false,
                older_as_snapshot: false,
            },
            Message::Begin { session: "s".into(), start: 2, snapshot: false, total: 7, resolutions: vec![] },
            Message::Ack { session: "s".into(), point: 7 },
            Message::End { session: "s".into(), complete: true, max_row: 8, incoming: Some(vec![].into()) },
            Message::End { session: "s".into(), complete: false, max_row: 8, incoming: None },
            Message::Done { session: "s".into() },
            Message::Error { code: "SYNC_PROTOCOL".into(), message: "no \"such\" thing".into() },
            Message::Ping {},
            Message::Pong {},
            Message::Poke { max_row: 9 },
        ] {
            reads_back(&msg);
        }
        assert_eq!(Message::Ping {}.encode(), r#"{"v":1,"type":"ping"}"#);
        assert!(!Message::Point { session: "s".into(), db_id: "d".into(), max_row: 5, schema_version: 1, point: 0, matched: None, candidates: vec![], sent_sessions: vec![], marks: vec![], own_only: false, older_as_snapshot: false }
            .encode()
            .contains("marks"), "empty marks and a false own_only are left out");
    }

    #[test]
    fn refuses_bad_frames() {
        let bad = |text: &str| Message::decode(text).expect_err(text);
        assert!(bad("garbage").starts_with("malformed JSON"));
        assert!(bad("[1]").starts_with("invalid message"));
        assert_eq!(bad(r#"{"type":"ack","session":"s","point":1}"#), "missing protocol version `v`");
        assert!(bad(r#"{"v":2,"type":"ack","session":"s","point":1}"#).starts_with("unsupported protocol version 2"));
        assert!(bad(r#"{"v":1,"type":"nope"}"#).contains("unknown variant `nope`"));
        assert!(bad(r#"{"v":1,"session":"s","point":1}"#).contains("missing field `type`"));
        assert!(bad(r#"{"v":1,"type":7}"#).contains("`type` is not a string"));
        assert!(bad(r#"{"v":1,"type":"ack","session":"s"}"#).contains("missing field `point`"));
        assert!(bad(r#"{"session":"s","v":1,"type":"ack"}"#).contains("missing field `point`"), "worded the same in any order");
        assert!(bad(r#"{"v":1,"type":"ack","session":"s","point":1,"extra":2}"#).contains("unknown field `extra`"));
        assert!(bad(r#"{"v":1,"type":"ack","session":"s","point":"1"}"#).contains("invalid type"));
        assert!(bad(r#"{"v":1,"type":"ping","x":1}"#).contains("unknown field `x`"));
        assert!(bad(r#"{"v":1,"type":"ack","session":"s","point":1} x"#).starts_with("malformed JSON"), "trailing text");
        assert!(!bad(r#"{"v":1,"type":"ack","session":"s"}"#).contains(" at line "), "no position in a text the sender did not write");
    }

    /// A batch frame as a peer writes it, with `row`'s op and sender.
    fn batch_text(extra: &str) -> String {
        let ts = Stamp { version: 1, wall: 1_700_000_000_000, counter: 2, node: "a1".into() }.encode();
        let op = format!(r#"{{"origin":"a1","originRow":3,"ts":"{ts}","schemaVersion":1,"collection":"docs","id":"x","kind":"put","fields":{{"id":"x","n":1.5,"s":"\u00e9\n"}}}}"#);
        format!(r#"{{"v":1,"type":"batch","session":"s","after":2,"covers":9,"rows":[{{"row":9,"op":{op},"from":"b2"}}]{extra}}}"#)
    }

    #[test]
    fn a_batch_reads_in_one_pass_and_in_any_order() {
        let text = batch_text("");
        let msg = read_in_order(&text).unwrap();
        let Message::Batch { rows: BatchRows::Decoded(rows), covers, .. } = &msg else { panic!("a batch: {msg:?}") };
        assert_eq!((rows.len(), *covers, rows[0].from.as_deref()), (1, 9, Some("b2")));
        assert_eq!(Message::decode(&reordered(&text)).unwrap(), msg);
        reads_back(&msg);
    }

    #[test]
    fn an_end_with_its_table_as_text_is_the_frame_of_the_decoded_table() {
        let entries = vec![TableEntry { db_id: "a\"1".into(), row: 7, session: "s\u{e9}".into() }, TableEntry { db_id: "b".into(), row: -1, session: "t".into() }];
        let texts: Vec<std::sync::Arc<str>> = entries.iter().map(|e| serde_json::to_string(e).unwrap().into()).collect();
        for complete in [true, false] {
            let sent = Message::End { session: "s\"1".into(), complete, max_row: 9, incoming: Some(Table::Wire(texts.clone().into())) };
            let decoded = Message::End { session: "s\"1".into(), complete, max_row: 9, incoming: Some(entries.clone().into()) };
            assert_eq!(sent.encode(), decoded.encode());
            assert_eq!(Message::decode(&sent.encode()).unwrap(), decoded);
        }
        let bad: std::sync::Arc<str> = r#"{"dbId":"a"}"#.into();
        assert!(Table::Wire(vec![bad].into()).into_decoded().is_err(), "a wire entry that is not an entry is refused");
    }

    #[test]
    fn a_batch_of_rows_as_stored_text_is_the_frame_of_the_decoded_rows() {
        let Message::Batch { rows: BatchRows::Decoded(rows), .. } = Message::decode(&batch_text("")).unwrap() else { panic!("a batch") };
        for from in [None, Some("b\"2\u{e9}")] {
            let row = Row { from: from.map(Into::into), ..rows[0].clone() };
            // A store keeps the op as the JSON serde writes for it.
            let wire = Row::wire_text(row.row, &serde_json::to_string(&row.op).unwrap(), row.from.as_deref());
            assert_eq!(wire, serde_json::to_string(&row).unwrap(), "the text serde writes for the row");
            let shared: std::sync::Arc<str> = wire.into();
            let sent = Message::Batch { session: "s\"1".into(), after: 2, covers: 9, rows: BatchRows::Wire(vec![shared.clone(), shared].into()) };
            let decoded = Message::Batch { session: "s\"1".into(), after: 2, covers: 9, rows: vec![row.clone(), row].into() };
            assert_eq!(sent.encode(), decoded.encode());
            assert_eq!(serde_json::to_string(&sent).unwrap(), serde_json::to_string(&decoded).unwrap());
            assert_eq!(Message::decode(&sent.encode()).unwrap(), decoded);
        }
        let bad: std::sync::Arc<str> = r#"{"row":1}"#.into();
        assert!(BatchRows::Wire(vec![bad].into()).into_decoded().is_err(), "a wire row that is not a row is refused");
    }

    #[test]
    fn a_batch_with_anything_wrong_is_still_refused() {
        assert!(Message::decode(&batch_text(r#","extra":1"#)).is_err());
        assert!(Message::decode(&batch_text("").replace(r#""v":1"#, r#""v":2"#)).is_err());
        assert!(Message::decode(&batch_text("").replace(r#""covers":9"#, r#""covers":"9""#)).is_err());
        assert!(Message::decode(&batch_text("").replace(r#","session":"s""#, "")).is_err());
    }

    #[test]
    fn a_snapshot_reads_in_one_pass_and_in_any_order() {
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
        reads_back(&msg);
        let text = msg.encode();
        assert!(Message::decode(&text.replacen(r#""docs":"#, r#""extra":1,"docs":"#, 1)).is_err(), "an unknown field is still refused");
        assert!(Message::decode(&text.replacen(r#""session":"s","#, "", 1)).is_err());
    }
}
