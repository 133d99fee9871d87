//! The CouchDB adapter: any server speaking CouchDB's replication API (CouchDB itself,
//! `pouchdb-server`). Changes come from `_changes?since=` with the documents included;
//! writes are `PUT /db/<id>` carrying the `_rev` last seen (a stale one gets 409 Conflict),
//! deletes `DELETE /db/<id>?rev=`; a deleted document shows up in the feed as `_deleted`.
//!
//! Record mapping: `_id` is the document's `id`; `_rev`, `_deleted` and every other
//! underscore field are CouchDB's, not document fields.

use hyper::Method;
use serde_json::{json, Map, Value};

use super::client::{segment, Http};
use super::state::Record;
use super::{Changes, Fetched, Foreign, ForeignError, Opened, Written};

/// Most changes read per request.
const PAGE: usize = 500;

/// The `_local` document that marks a database the gateway has seen (`CouchDb::mark`).
const MARKER: &str = "tidemark-gateway";

#[derive(PartialEq)]
enum Mark {
    There,
    New,
}

pub struct CouchDb {
    http: Http,
    /// `http://host:port/db`, without a trailing slash.
    base: String,
}

impl CouchDb {
    pub fn new(http: Http, base: String) -> CouchDb {
        CouchDb { http, base: base.trim_end_matches('/').to_string() }
    }

    fn doc_url(&self, id: &str) -> String {
        format!("{}/{}", self.base, segment(id))
    }

    /// Makes sure the database holds the gateway's marker, a `_local` document (never in
    /// `_changes`, never replicated): a database recreated under the same name lacks it.
    async fn mark(&self) -> Result<Mark, ForeignError> {
        let url = format!("{}/_local/{MARKER}", self.base);
        let (status, _) = self.http.send(Method::GET, &url, None).await?;
        if status != 404 {
            // There, or a store that does not keep `_local` documents: only the sequence
            // tells a wipe there.
            return Ok(Mark::There);
        }
        let (status, _) = self.http.send(Method::PUT, &url, Some(&json!({"by": "tidemark-server"}))).await?;
        // Written now: the database is new to the gateway (unless it cannot keep one).
        Ok(if (200..300).contains(&status) { Mark::New } else { Mark::There })
    }

    fn unexpected(&self, what: &str, status: u16, body: &Value) -> ForeignError {
        ForeignError::Refused(format!("{what} on {}: HTTP {status} {body}", self.base))
    }
}

/// A CouchDB document as a Tidemark document: `_id` becomes `id`, underscore fields go.
fn to_doc(raw: &Map<String, Value>) -> Option<(String, Map<String, Value>)> {
    let id = raw.get("_id")?.as_str()?.to_string();
    let mut doc: Map<String, Value> = raw.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect();
    doc.insert("id".into(), Value::String(id.clone()));
    Some((id, doc))
}

/// A sequence's leading number (CouchDB 2+ spells sequences `"N-opaque"`, PouchDB `N`).
fn seq_number(seq: &str) -> Option<u64> {
    seq.trim_matches('"').split('-').next()?.parse().ok()
}

fn seq_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Foreign for CouchDb {
    fn kind(&self) -> &'static str {
        "couchdb"
    }

    async fn open(&self, cursor: &str) -> Result<Opened, ForeignError> {
        let (status, info) = self.http.send(Method::GET, &self.base, None).await?;
        match status {
            200 => {
                // A store whose sequence went backwards was restored or recreated; one
                // without the gateway's marker was recreated, even if it has since seen as
                // many writes as the cursor counts (or the cursor was taken before the
                // gateway's own writes raised the sequence).
                let now = seq_number(&seq_text(&info["update_seq"]));
                let went_back = matches!((now, seq_number(cursor)), (Some(now), Some(had)) if now < had);
                let unmarked = self.mark().await? == Mark::New;
                Ok(Opened { wiped: went_back || (unmarked && !cursor.is_empty()) })
            }
            404 => {
                let (status, body) = self.http.send(Method::PUT, &self.base, None).await?;
                if !(200..300).contains(&status) && status != 412 {
                    return Err(self.unexpected("creating the database", status, &body));
                }
                self.mark().await?;
                Ok(Opened { wiped: !cursor.is_empty() })
            }
            _ => Err(self.unexpected("reading the database", status, &info)),
        }
    }

    async fn changes(&self, cursor: &str, _known: &std::collections::BTreeMap<String, Record>) -> Result<Changes, ForeignError> {
        let since = if cursor.is_empty() { "0".to_string() } else { segment(cursor) };
        let url = format!("{}/_changes?since={since}&include_docs=true&limit={PAGE}", self.base);
        let (status, body) = self.http.send(Method::GET, &url, None).await?;
        if status != 200 {
            return Err(self.unexpected("reading _changes", status, &body));
        }
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let mut records = Vec::new();
        for r in &results {
            let Some(id) = r["id"].as_str() else { continue };
            // Design documents are CouchDB's own.
            if id.starts_with("_design/") {
                continue;
            }
            let rev = r["doc"]["_rev"].as_str().or_else(|| r["changes"][0]["rev"].as_str()).map(str::to_string);
            let deleted = r["deleted"].as_bool().unwrap_or(false) || r["doc"]["_deleted"].as_bool().unwrap_or(false);
            let doc = if deleted { None } else { r["doc"].as_object().and_then(to_doc).map(|(_, d)| d) };
            records.push(Fetched { id: id.to_string(), foreign_id: Value::String(id.to_string()), rev, doc });
        }
        let last = body.get("last_seq").map(seq_text).unwrap_or_else(|| cursor.to_string());
        // A feed that ends before the cursor comes from a store recreated since `open`
        // looked (a wipe between the two requests of one round): taking its sequence as
        // the cursor would hide the wipe from every later round.
        let wiped = matches!((seq_number(&last), seq_number(cursor)), (Some(now), Some(had)) if now < had);
        Ok(Changes { records, cursor: last, more: results.len() >= PAGE, wiped })
    }

    async fn read(&self, id: &str) -> Result<Fetched, ForeignError> {
        let (status, body) = self.http.send(Method::GET, &self.doc_url(id), None).await?;
        match status {
            200 => {
                let raw = body.as_object().cloned().unwrap_or_default();
                let rev = raw.get("_rev").and_then(Value::as_str).map(str::to_string);
                Ok(Fetched { id: id.to_string(), foreign_id: Value::String(id.to_string()), rev, doc: to_doc(&raw).map(|(_, d)| d) })
            }
            404 => {
                // Deleted (or never there): the tombstone's rev is what a re-create needs.
                let (_, meta) = self.http.send(Method::GET, &format!("{}?revs=true&open_revs=all", self.doc_url(id)), None).await?;
                let rev = meta.as_array().and_then(|a| a.iter().find_map(|x| x["ok"]["_rev"].as_str().map(str::to_string)));
                Ok(Fetched { id: id.to_string(), foreign_id: Value::String(id.to_string()), rev, doc: None })
            }
            _ => Err(self.unexpected(&format!("reading document {id:?}"), status, &body)),
        }
    }

    async fn write(&self, id: &str, known: Option<&Record>, doc: &Map<String, Value>) -> Result<Written, ForeignError> {
        let mut body: Map<String, Value> = doc.iter().filter(|(k, _)| k.as_str() != "id").map(|(k, v)| (k.clone(), v.clone())).collect();
        body.insert("_id".into(), json!(id));
        if let Some(rev) = known.and_then(|r| r.rev.clone()) {
            body.insert("_rev".into(), json!(rev));
        }
        let (status, answer) = self.http.send(Method::PUT, &self.doc_url(id), Some(&Value::Object(body))).await?;
        match status {
            200..=202 => Ok(Written::Done { foreign_id: json!(id), rev: answer["rev"].as_str().map(str::to_string) }),
            409 => Ok(Written::Conflict),
            _ => Err(self.unexpected(&format!("writing document {id:?}"), status, &answer)),
        }
    }

    async fn delete(&self, id: &str, known: &Record) -> Result<Written, ForeignError> {
        let Some(rev) = known.rev.as_deref() else { return Ok(Written::Conflict) };
        let url = format!("{}?rev={}", self.doc_url(id), segment(rev));
        let (status, answer) = self.http.send(Method::DELETE, &url, None).await?;
        match status {
            200 | 202 => Ok(Written::Done { foreign_id: json!(id), rev: answer["rev"].as_str().map(str::to_string) }),
            404 => Ok(Written::Done { foreign_id: json!(id), rev: known.rev.clone() }),
            409 => Ok(Written::Conflict),
            _ => Err(self.unexpected(&format!("deleting document {id:?}"), status, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_and_sequences() {
        let raw = json!({"_id": "a/b", "_rev": "1-x", "_attachments": {}, "title": "T", "id": "ignored"});
        let (id, doc) = to_doc(raw.as_object().unwrap()).unwrap();
        assert_eq!(id, "a/b");
        assert_eq!(Value::Object(doc), json!({"id": "a/b", "title": "T"}));
        assert_eq!(seq_number("12"), Some(12));
        assert_eq!(seq_number("7-g1AAAA"), Some(7));
        assert_eq!(seq_number(""), None);
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
