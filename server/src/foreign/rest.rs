//! The plain REST adapter, on json-server's conventions: `GET /path` lists every record,
//! `POST /path` creates one, `PUT /path/:id` replaces one, `DELETE /path/:id` removes it.
//! There is no change feed: each round lists the records and compares each with the
//! content last agreed on (`state::Record::base`) by fingerprint; a known id that vanished
//! from the listing is a delete. The cursor is the listing's fingerprint.
//!
//! Record mapping: the record's `id` (a number or a string there) is the document's `id` as
//! a string; the original spelling is kept in the state, so a write goes back as it came.
//! A listing that lost every known record at once (or a 404) is taken as a wiped store, not
//! as a mass delete.

use std::collections::BTreeMap;

use hyper::Method;
use serde_json::{Map, Value};

use super::client::{segment, Http};
use super::state::Record;
use super::{fingerprint, Changes, Fetched, Foreign, ForeignError, Opened, Written};

pub struct Rest {
    http: Http,
    /// `http://host:port/path`, without a trailing slash.
    base: String,
}

impl Rest {
    pub fn new(http: Http, base: String) -> Rest {
        Rest { http, base: base.trim_end_matches('/').to_string() }
    }

    fn unexpected(&self, what: &str, status: u16, body: &Value) -> ForeignError {
        ForeignError::Refused(format!("{what} on {}: HTTP {status} {body}", self.base))
    }

    fn record_url(&self, foreign_id: &Value) -> String {
        format!("{}/{}", self.base, segment(&id_text(foreign_id)))
    }

    async fn list(&self) -> Result<Option<Vec<Value>>, ForeignError> {
        let (status, body) = self.http.send(Method::GET, &self.base, None).await?;
        match status {
            200 => match body {
                Value::Array(items) => Ok(Some(items)),
                other => Err(ForeignError::Refused(format!("listing {} did not answer an array: {other}", self.base))),
            },
            404 => Ok(None),
            _ => Err(self.unexpected("listing", status, &body)),
        }
    }
}

/// A record id as the document id (`1` and `"1"` are both document `"1"`).
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A listed record as a Tidemark document.
fn to_doc(raw: &Value) -> Option<(String, Value, Map<String, Value>)> {
    let obj = raw.as_object()?;
    let fid = obj.get("id").filter(|v| v.is_string() || v.is_number())?.clone();
    let id = id_text(&fid);
    if id.is_empty() {
        return None;
    }
    let mut doc = obj.clone();
    doc.insert("id".into(), Value::String(id.clone()));
    Some((id, fid, doc))
}

impl Foreign for Rest {
    fn kind(&self) -> &'static str {
        "rest"
    }

    async fn open(&self, _cursor: &str) -> Result<Opened, ForeignError> {
        Ok(Opened { wiped: false })
    }

    async fn changes(&self, _cursor: &str, known: &BTreeMap<String, Record>) -> Result<Changes, ForeignError> {
        let live_known = known.values().filter(|r| r.base.is_some()).count();
        let Some(items) = self.list().await? else {
            return Ok(Changes { records: Vec::new(), cursor: String::new(), more: false, wiped: live_known > 0 });
        };
        let listing = fingerprint(&Value::Array(items.clone()));
        let mut records = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for raw in &items {
            let Some((id, foreign_id, doc)) = to_doc(raw) else { continue };
            if !seen.insert(id.clone()) {
                continue;
            }
            let same = known.get(&id).and_then(|r| r.base.as_ref()).is_some_and(|b| fingerprint(&Value::Object(b.clone())) == fingerprint(&Value::Object(doc.clone())));
            if !same {
                records.push(Fetched { id, foreign_id, rev: None, doc: Some(doc) });
            }
        }
        let vanished: Vec<&String> = known.iter().filter(|(id, r)| r.base.is_some() && !seen.contains(*id)).map(|(id, _)| id).collect();
        // Every known record gone at once: a wiped or replaced store, not a mass delete.
        if live_known >= 2 && vanished.len() == live_known {
            return Ok(Changes { records: Vec::new(), cursor: listing, more: false, wiped: true });
        }
        for id in vanished {
            records.push(Fetched { id: id.clone(), foreign_id: known[id].foreign_id.clone(), rev: None, doc: None });
        }
        Ok(Changes { records, cursor: listing, more: false, wiped: false })
    }

    async fn read(&self, id: &str) -> Result<Fetched, ForeignError> {
        let (status, body) = self.http.send(Method::GET, &format!("{}/{}", self.base, segment(id)), None).await?;
        match status {
            200 => match to_doc(&body) {
                Some((id, foreign_id, doc)) => Ok(Fetched { id, foreign_id, rev: None, doc: Some(doc) }),
                None => Err(ForeignError::Refused(format!("record {id} on {} has no id", self.base))),
            },
            404 => Ok(Fetched { id: id.to_string(), foreign_id: Value::String(id.to_string()), rev: None, doc: None }),
            _ => Err(self.unexpected(&format!("reading record {id:?}"), status, &body)),
        }
    }

    async fn write(&self, id: &str, known: Option<&Record>, doc: &Map<String, Value>) -> Result<Written, ForeignError> {
        let foreign_id = known.map_or_else(|| Value::String(id.to_string()), |r| r.foreign_id.clone());
        let mut body = doc.clone();
        body.insert("id".into(), foreign_id.clone());
        let body = Value::Object(body);
        // Replace when the record may exist, create when it does not: a record is always
        // written under its own id, so a retried write never makes a second copy.
        let (status, answer) = self.http.send(Method::PUT, &self.record_url(&foreign_id), Some(&body)).await?;
        if (200..300).contains(&status) {
            return Ok(Written::Done { foreign_id, rev: None });
        }
        if status != 404 {
            return Err(self.unexpected(&format!("replacing record {id:?}"), status, &answer));
        }
        let (status, answer) = self.http.send(Method::POST, &self.base, Some(&body)).await?;
        if (200..300).contains(&status) {
            let foreign_id = answer.get("id").cloned().unwrap_or(foreign_id);
            return Ok(Written::Done { foreign_id, rev: None });
        }
        // Created meanwhile by someone else: compare again and retry.
        Ok(Written::Conflict)
    }

    async fn delete(&self, id: &str, known: &Record) -> Result<Written, ForeignError> {
        let (status, answer) = self.http.send(Method::DELETE, &self.record_url(&known.foreign_id), None).await?;
        match status {
            200..=299 | 404 => Ok(Written::Done { foreign_id: known.foreign_id.clone(), rev: None }),
            _ => Err(self.unexpected(&format!("deleting record {id:?}"), status, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_ids_become_strings_and_keep_their_spelling() {
        let (id, fid, doc) = to_doc(&json!({"id": 3, "title": "x"})).unwrap();
        assert_eq!((id.as_str(), fid), ("3", json!(3)));
        assert_eq!(Value::Object(doc), json!({"id": "3", "title": "x"}));
        assert!(to_doc(&json!({"title": "no id"})).is_none());
        assert!(to_doc(&json!({"id": {"x": 1}})).is_none());
    }
}
