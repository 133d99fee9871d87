//! The storage contract, as one async suite every `Store` must pass: the in-memory store
//! and SQLite natively, IndexedDB in headless Chromium, PostgreSQL against a real
//! cluster. Each check states one promise of `tidemark::store::Store`; a backend that
//! compiled but, say, never read its sync points back fails here, not in production.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tidemark::clock::Stamp;
use tidemark::error::Error;
use tidemark::merge::DocState;
use tidemark::op::{Kind, Op};
use tidemark::peer::PeerRecord;
use tidemark::query::Query;
use tidemark::rebuild::stored_doc;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, RowKey, Store, StoredDoc};
use tidemark::sync::message::SnapshotDoc;
use tidemark::Schema;

/// How a suite gets fresh stores of one kind.
#[allow(async_fn_in_trait)]
pub trait Fixture {
    type S: Store;
    /// A new, empty store laid out for `schema()`.
    async fn fresh(&self) -> Self::S;
    /// A query result as JSON.
    fn json(doc: &<Self::S as Store>::Doc) -> Value;
}

/// The collections the suite writes: `a` (indexed by `n`) and `b`.
pub fn schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {
        "a": {"primaryKey": "id", "indexes": {"byN": "n"}},
        "b": {"primaryKey": "id"}
    }}))
    .expect("the contract schema is valid")
}

/// Runs every check, each on a fresh store.
pub async fn all<F: Fixture>(f: &F) {
    empty_store_has_nothing(&f.fresh().await).await;
    a_commit_reads_back_exactly(&f.fresh().await).await;
    a_commit_loads_what_it_names(&f.fresh().await).await;
    a_failed_commit_writes_nothing(&f.fresh().await).await;
    rows_must_follow_the_head(&f.fresh().await).await;
    documents_page_once_each(&f.fresh().await).await;
    queries_see_existing_documents_only::<F>(&f.fresh().await).await;
    the_resolution_log_holds_resolutions_only(&f.fresh().await).await;
    an_owned_commit_is_a_commit(&f.fresh().await).await;
    a_commit_returns_what_callers_read(&f.fresh().await).await;
}

fn stamp(wall: u64) -> Stamp {
    Stamp { version: 1, wall, counter: 0, node: "n0".into() }
}

fn head(max_row: u64) -> Head {
    Head { clock: stamp(max_row), max_row, ..Head::new("contract".into(), 1) }
}

fn doc(collection: &str, id: &str, fields: Value, wall: u64) -> (String, StoredDoc) {
    let op = Op {
        origin: "n0".into(),
        origin_row: wall,
        ts: stamp(wall),
        schema_version: 1,
        collection: collection.into(),
        id: id.into(),
        kind: if fields.is_null() { Kind::Delete } else { Kind::Put },
        fields: fields.as_object().cloned(),
        seen: None,
        resolution: false,
    };
    let mut state = DocState::default();
    state.apply(&op);
    (collection.to_string(), stored_doc(Some(&schema()), collection, id, state, 1))
}

fn row(n: u64, id: &str) -> Row {
    let op = Op {
        origin: "n0".into(),
        origin_row: n,
        ts: stamp(n),
        schema_version: 1,
        collection: "a".into(),
        id: id.into(),
        kind: Kind::Put,
        fields: Some(Map::new()),
        seen: None,
        resolution: false,
    };
    Row { row: n, op, from: (n % 2 == 0).then(|| "peer1".to_string()) }
}

fn peer(incoming: i64) -> PeerRecord {
    let mut p = PeerRecord::new();
    p.note_incoming("s1", incoming, false);
    p.note_outgoing("s2", incoming + 1);
    p.merge_outgoing(incoming + 1);
    p
}

fn key(c: &str, id: &str) -> DocKey {
    (c.to_string(), id.to_string())
}

/// Writes `commit`, reading nothing.
async fn put<S: Store>(s: &S, commit: Commit) -> Result<Commit, Error> {
    let keys: Vec<DocKey> = commit.docs.iter().map(|(c, d)| key(c, &d.id)).collect();
    let peers: Vec<String> = commit.peers.iter().map(|(id, _)| id.clone()).collect();
    s.commit(&keys, &peers, move |_| Ok(commit)).await
}

/// Everything a store holds, for before/after comparisons.
async fn everything<S: Store>(s: &S) -> (Option<Head>, Vec<(String, StoredDoc)>, Vec<Row>, BTreeMap<String, PeerRecord>) {
    (
        s.head().await.unwrap(),
        s.docs_after(None, usize::MAX).await.unwrap(),
        s.rows_after(0, usize::MAX).await.unwrap(),
        s.peers().await.unwrap(),
    )
}

fn seed() -> Commit {
    Commit {
        head: Some(head(3)),
        docs: vec![doc("a", "x", json!({"n": 1, "t": "hello"}), 1), doc("b", "y", json!({"deep": {"k": [1, 2]}}), 2), doc("a", "gone", Value::Null, 3)],
        rows: vec![row(1, "x"), row(2, "y"), row(3, "gone")],
        peers: vec![("peer1".into(), peer(7)), ("peer2".into(), peer(2))],
    }
}

/// A store never written to has no head, no documents, no rows and no peers.
pub async fn empty_store_has_nothing<S: Store>(s: &S) {
    assert_eq!(everything(s).await, (None, vec![], vec![], BTreeMap::new()), "empty_store_has_nothing");
    assert_eq!(s.get("a", "x").await.unwrap(), None);
    assert_eq!(s.doc_count().await.unwrap(), 0);
    assert!(s.doc_keys().await.unwrap().is_empty());
}

/// What a commit writes — head, documents (a tombstone too), log rows, peer records —
/// reads back exactly, through every read.
pub async fn a_commit_reads_back_exactly<S: Store>(s: &S) {
    let c = seed();
    let written = put(s, c.clone()).await.unwrap();
    assert_eq!(written.head, c.head, "commit returns what it wrote");
    assert_eq!(s.head().await.unwrap(), c.head);
    for (coll, d) in &c.docs {
        assert_eq!(s.get(coll, &d.id).await.unwrap().as_ref(), Some(d), "get {coll}/{}", d.id);
    }
    assert_eq!(s.rows_after(0, 10).await.unwrap(), c.rows);
    assert_eq!(s.rows_after(1, 1).await.unwrap(), vec![c.rows[1].clone()], "rows_after is exclusive and limited");
    assert!(s.rows_after(3, 10).await.unwrap().is_empty());
    let keys: Vec<RowKey> = c.rows.iter().cloned().map(RowKey::from).collect();
    assert_eq!(s.row_keys_after(0, 10).await.unwrap(), keys, "row_keys_after reads the rows' keys");
    assert_eq!(s.row_keys_after(1, 1).await.unwrap(), keys[1..2], "row_keys_after is exclusive and limited");
    assert_eq!(s.with_row_keys_after(0, 10, |k| k.to_vec()).await.unwrap(), keys, "with_row_keys_after lends the same keys");
    assert_eq!(s.with_row_keys_after(1, 1, |k| k.to_vec()).await.unwrap(), keys[1..2], "with_row_keys_after is exclusive and limited");
    assert_eq!(s.with_row_keys_after(3, 10, |k| k.len()).await.unwrap(), 0);
    // Rows 1 and 3 are local writes of n0; row 2 came from peer1 (see `row`).
    assert_eq!(s.own_rows_after(0, "n0").await.unwrap(), 2, "own_rows_after counts local writes of the origin only");
    assert_eq!(s.own_rows_after(1, "n0").await.unwrap(), 1, "own_rows_after is exclusive");
    assert_eq!(s.own_rows_after(0, "someone").await.unwrap(), 0, "own_rows_after counts one origin");
    assert_eq!(s.peers().await.unwrap(), c.peers.iter().cloned().collect::<BTreeMap<_, _>>(), "peers read back");
    assert_eq!(s.doc_count().await.unwrap(), 3);
    let mut all = s.docs_after(None, 10).await.unwrap();
    let keys: Vec<(String, String)> = all.iter().map(|(c, d)| (c.clone(), d.id.clone())).collect();
    assert_eq!(s.doc_keys().await.unwrap(), keys, "doc_keys lists docs_after's keys, in its order");
    let mut want = c.docs.clone();
    all.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
    want.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
    assert_eq!(all, want, "docs_after returns every document, tombstones included");
}

/// Resolution rows are in the log like any row and also in the resolution log, which
/// holds nothing else and pages by row; conflict tracking of a document reads back.
pub async fn the_resolution_log_holds_resolutions_only<S: Store>(s: &S) {
    put(s, seed()).await.unwrap();
    assert!(s.resolutions_after(0).await.unwrap().is_empty(), "no resolution yet");
    let resolution = |n: u64| {
        let mut r = row(n, "x");
        r.op.kind = Kind::Patch;
        r.op.fields = Some(json!({"n": n}).as_object().unwrap().clone());
        r.op.seen = Some(BTreeMap::from([("n".to_string(), stamp(n - 1))]));
        r.op.resolution = true;
        r
    };
    let mut tracked = doc("a", "x", json!({"n": 1}), 4).1;
    for w in [4, 5] {
        let op = Op { seen: Some(BTreeMap::from([("n".to_string(), stamp(1))])), ..resolution(w).op };
        let mut st = tracked.state();
        st.apply(&op);
        tracked.conflicts = st.conflicts;
    }
    assert_eq!(tracked.conflicts["n"].len(), 2, "two unseen writes kept");
    let rows = vec![resolution(4), row(5, "y"), resolution(6)];
    put(s, Commit { head: Some(head(6)), docs: vec![("a".into(), tracked.clone())], rows: rows.clone(), peers: vec![] }).await.unwrap();
    assert_eq!(s.get("a", "x").await.unwrap(), Some(tracked), "conflict tracking reads back");
    assert_eq!(s.rows_after(3, 10).await.unwrap(), rows, "resolutions are in the log too");
    assert_eq!(s.resolutions_after(0).await.unwrap(), vec![rows[0].clone(), rows[2].clone()]);
    assert_eq!(s.resolutions_after(4).await.unwrap(), vec![rows[2].clone()], "resolutions_after is exclusive");
    assert!(s.resolutions_after(6).await.unwrap().is_empty());
}

/// A commit is handed the head and exactly the documents and peer records it names, in
/// order, `None` for those that do not exist.
pub async fn a_commit_loads_what_it_names<S: Store>(s: &S) {
    let c = seed();
    put(s, c.clone()).await.unwrap();
    let keys = vec![key("b", "y"), key("a", "nope"), key("a", "x")];
    let peers = vec!["nobody".to_string(), "peer1".to_string()];
    let mut seen: Option<Loaded> = None;
    s.commit(&keys, &peers, |loaded| {
        seen = Some(loaded);
        Ok(Commit::default())
    })
    .await
    .unwrap();
    let loaded = seen.expect("the closure ran");
    assert_eq!(loaded.head, c.head);
    assert_eq!(loaded.docs, vec![Some(c.docs[1].1.clone()), None, Some(c.docs[0].1.clone())]);
    assert_eq!(loaded.peers, vec![None, Some(c.peers[0].1.clone())]);
}

/// If the engine's closure fails, nothing of the commit is written.
pub async fn a_failed_commit_writes_nothing<S: Store>(s: &S) {
    put(s, seed()).await.unwrap();
    let before = everything(s).await;
    let res = s
        .commit(&[key("a", "x"), key("a", "new")], &["peer1".to_string()], |_| {
            Err(Error::Store(tidemark::error::StoreError::Backend("refused by the engine".into())))
        })
        .await;
    assert!(res.is_err());
    assert_eq!(everything(s).await, before, "a_failed_commit_writes_nothing");
}

/// `commit_owned` (which a store may run elsewhere, e.g. on its writer thread) keeps
/// `commit`'s contract: it is handed what it names, writes what it returns, and one that
/// fails, or whose rows do not follow the head, writes nothing.
pub async fn an_owned_commit_is_a_commit<S: Store>(s: &S) {
    let c = seed();
    put(s, c.clone()).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let into = seen.clone();
    let rec = peer(42);
    let written = rec.clone();
    s.commit_owned(&[key("a", "x"), key("a", "nope")], &["peer1".to_string(), "other".to_string()], move |loaded| {
        *into.lock().unwrap() = Some(loaded);
        Ok(Commit { peers: vec![("other".to_string(), written)], ..Commit::default() })
    })
    .await
    .unwrap();
    let loaded = seen.lock().unwrap().take().expect("the closure ran");
    assert_eq!(loaded.head, c.head);
    assert_eq!(loaded.docs, vec![Some(c.docs[0].1.clone()), None]);
    assert_eq!(loaded.peers, vec![Some(c.peers[0].1.clone()), None]);
    let (_, _, _, peers) = everything(s).await;
    assert_eq!(peers.get("other").map(|p| p.incoming), Some(rec.incoming), "an owned commit writes what it returns");

    let before = everything(s).await;
    let refused = s.commit_owned(&[key("a", "x")], &["peer1".to_string()], |_| Err(Error::Store(tidemark::error::StoreError::Backend("refused by the engine".into())))).await;
    assert!(refused.is_err());
    let reused = Commit { head: Some(head(10)), docs: vec![doc("a", "x", json!({"n": 99}), 9)], rows: vec![row(3, "x")], peers: vec![] };
    assert!(s.commit_owned(&[key("a", "x")], &[], move |_| Ok(reused)).await.is_err(), "a reused row number is refused");
    assert_eq!(everything(s).await, before, "a refused owned commit writes nothing");
}

/// What a commit returns, written as is or shed (`Commit::shed`, a store freeing a large
/// commit while it writes), holds what callers read: the head, the peer records, every
/// row's number, origin, sender and document, and every document's key. Small and large
/// commits alike (an IndexedDB store sheds those it does not remember, over 8 documents).
pub async fn a_commit_returns_what_callers_read<S: Store>(s: &S) {
    for n in [3u64, 40] {
        let base = s.head().await.unwrap().map_or(0, |h| h.max_row);
        let ids: Vec<String> = (0..n).map(|i| format!("r{n}-{i:03}")).collect();
        let c = Commit {
            head: Some(head(base + n)),
            docs: ids.iter().enumerate().map(|(i, id)| doc("a", id, json!({"n": i, "t": "x".repeat(40)}), base + i as u64 + 1)).collect(),
            rows: ids.iter().enumerate().map(|(i, id)| row(base + i as u64 + 1, id)).collect(),
            peers: vec![("peer1".into(), peer(n as i64))],
        };
        let returned = put(s, c.clone()).await.unwrap();
        assert_eq!(returned.head, c.head, "{n} documents: the head");
        assert_eq!(returned.peers, c.peers, "{n} documents: the peer records");
        let rows = |c: &Commit| c.rows.iter().map(|r| (r.row, r.op.origin.clone(), r.from.clone(), r.op.collection.clone(), r.op.id.clone(), r.is_own("n0"))).collect::<Vec<_>>();
        assert_eq!(rows(&returned), rows(&c), "{n} documents: each row's number, origin, sender and document");
        let keys = |c: &Commit| c.docs.iter().map(|(coll, d)| (coll.clone(), d.id.clone())).collect::<Vec<_>>();
        assert_eq!(keys(&returned), keys(&c), "{n} documents: which documents it wrote");
        for (coll, d) in &c.docs {
            assert_eq!(s.get(coll, &d.id).await.unwrap().as_ref(), Some(d), "{n} documents: {coll}/{} as written", d.id);
        }
    }
}

/// Rows are numbered after the head and strictly ascending: a commit that would reuse a
/// row number is refused whole, head and documents included.
pub async fn rows_must_follow_the_head<S: Store>(s: &S) {
    put(s, seed()).await.unwrap();
    let before = everything(s).await;
    let reused = Commit { head: Some(head(10)), docs: vec![doc("a", "x", json!({"n": 99}), 9)], rows: vec![row(3, "x")], peers: vec![] };
    assert!(put(s, reused).await.is_err(), "a reused row number is refused");
    let unordered = Commit { head: Some(head(10)), docs: vec![], rows: vec![row(6, "x"), row(5, "x")], peers: vec![] };
    assert!(put(s, unordered).await.is_err(), "rows out of order are refused");
    assert_eq!(everything(s).await, before, "rows_must_follow_the_head");
}

/// Paging through `docs_after` visits every document exactly once, across collections.
pub async fn documents_page_once_each<S: Store>(s: &S) {
    let mut docs = Vec::new();
    for i in 0..13 {
        docs.push(doc("a", &format!("a{i:02}"), json!({"n": i}), i + 1));
        docs.push(doc("b", &format!("é{i}"), json!({"n": i}), i + 20));
    }
    put(s, Commit { head: Some(head(0)), docs: docs.clone(), rows: vec![], peers: vec![] }).await.unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut after: Option<DocKey> = None;
    loop {
        let page = s.docs_after(after.as_ref(), 4).await.unwrap();
        assert!(page.len() <= 4, "a page holds at most `limit` documents");
        // A store that hands out its documents' text pages the same documents, and a
        // snapshot built from that text carries each as the decoded one.
        if let Some(texts) = s.stored_texts_after(after.as_ref(), 4).await.unwrap() {
            assert_eq!(texts.iter().map(|t| (t.collection.clone(), t.id.clone())).collect::<Vec<_>>(), page.iter().map(|(c, d)| (c.clone(), d.id.clone())).collect::<Vec<_>>());
            for (t, (c, d)) in texts.iter().zip(&page) {
                let wire = SnapshotDoc::wire_from_stored(&t.collection, &t.state).unwrap();
                assert_eq!(serde_json::from_str::<SnapshotDoc>(&wire).unwrap(), SnapshotDoc::from_stored(c.clone(), d.clone()));
            }
        }
        let Some((c, last)) = page.last() else { break };
        after = Some(key(c, &last.id));
        seen.extend(page.into_iter().map(|(c, d)| (c, d.id)));
    }
    let mut want: Vec<(String, String)> = docs.into_iter().map(|(c, d)| (c, d.id)).collect();
    want.sort();
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no document is paged twice");
    assert_eq!(sorted, want, "every document is paged");
}

/// A query answers from documents that exist: tombstones never match.
pub async fn queries_see_existing_documents_only<F: Fixture>(s: &F::S) {
    put(s, seed()).await.unwrap();
    let schema = schema();
    let coll = schema.collection("a").unwrap();
    let ids = |docs: Vec<<F::S as Store>::Doc>| docs.iter().map(|d| F::json(d)["id"].clone()).collect::<Vec<_>>();
    let plan = Query::parse(&json!({})).unwrap().plan(coll);
    assert_eq!(ids(s.query("a", "id", &plan).await.unwrap()), vec![json!("x")]);
    let plan = Query::parse(&json!({"where": {"n": 1}})).unwrap().plan(coll);
    assert_eq!(ids(s.query("a", "id", &plan).await.unwrap()), vec![json!("x")], "an index scan");
    let plan = Query::parse(&json!({"where": {"id": "gone"}})).unwrap().plan(coll);
    assert!(s.query("a", "id", &plan).await.unwrap().is_empty(), "a tombstone is not found");
}

/// The generations contract, for stores that rebuild a replica beside the live one
/// (memory, IndexedDB; a server's stores refuse to stage): staging seals the live
/// generation, a swap puts the staging one in place at once, abandoning leaves the live
/// one as it was.
pub async fn generations<F: Fixture>(f: &F) {
    let s = f.fresh().await;
    put(&s, seed()).await.unwrap();
    let before = everything(&s).await;

    // Abandoned: the live generation is as it was and takes writes again.
    let staging = s.stage(&schema()).await.unwrap();
    assert!(matches!(s.stage(&schema()).await, Err(Error::Store(tidemark::error::StoreError::Sealed))), "one staging at a time");
    let sealed = put(&s, Commit { head: Some(head(4)), rows: vec![row(4, "x")], ..Commit::default() }).await;
    assert!(matches!(sealed, Err(Error::Store(tidemark::error::StoreError::Sealed))), "a sealed generation refuses commits: {sealed:?}");
    let mut during = everything(&s).await;
    assert!(during.0.as_ref().is_some_and(|h| h.sealed), "the head says the generation is sealed");
    during.0.as_mut().unwrap().sealed = false;
    assert_eq!(during, before, "reads go on while sealed");
    put(&staging, Commit { head: Some(head(9)), docs: vec![doc("a", "new", json!({"n": 9}), 9)], ..Commit::default() }).await.unwrap();
    s.abandon(staging).await.unwrap();
    s.settle().await.unwrap();
    assert_eq!(everything(&s).await, before, "abandon leaves the live generation untouched");
    put(&s, Commit { head: Some(head(4)), rows: vec![row(4, "x")], ..Commit::default() }).await.unwrap();

    // Swapped: readers see the staging generation's data, all of it, at once.
    let staging = s.stage(&schema()).await.unwrap();
    let built = Commit {
        head: Some(head(20)),
        docs: vec![doc("a", "new", json!({"n": 9}), 9), doc("b", "y", json!({"deep": 2}), 12)],
        rows: vec![row(20, "new")],
        peers: vec![("peer1".into(), peer(30))],
    };
    put(&staging, built.clone()).await.unwrap();
    s.swap(staging).await.unwrap();
    s.settle().await.unwrap();
    let mut docs = built.docs.clone();
    docs.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
    let mut got = everything(&s).await;
    got.1.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
    assert_eq!(got, (built.head.clone(), docs, built.rows.clone(), built.peers.iter().cloned().collect()), "the swap shows exactly the staging generation");
    assert_eq!(s.get("a", "x").await.unwrap(), None, "nothing of the old generation remains");
    put(&s, Commit { head: Some(head(21)), rows: vec![row(21, "x")], ..Commit::default() }).await.unwrap();
}
