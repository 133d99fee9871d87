//! The simulated replicas: relay servers and clients at mixed schema versions, each the
//! real `Replica` over a `SimStore`, with a skewable wall clock, its backups, and how it is
//! (re)opened after a crash or a restore.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use futures::executor::block_on;
use serde_json::json;
use tidemark::layers::Layers;
use tidemark::memory::MemoryStore;
use tidemark::migrate::Schemas;

use crate::scenarios::MarkV2;
use tidemark::op::Op;
use tidemark::store::{Commit, Head, Row, Store, StoredDoc};
use tidemark::{Replica, Schema};

use super::store::SimStore;

/// Collections some replica writes; `notes` exists from schema version 2 on.
pub const COLLECTIONS: [&str; 2] = ["docs", "notes"];

pub fn schema(version: u32) -> Schema {
    let mut collections = json!({"docs": {"primaryKey": "id", "indexes": {"byN": "n"}}});
    if version >= 2 {
        collections["notes"] = json!({"primaryKey": "id"});
    }
    Schema::from_json(json!({"version": version, "collections": collections})).expect("the simulation's schemas are valid")
}


#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A relay (no schema), like `tidemark-server`.
    Server,
    /// An app's replica at this schema version.
    Client(u32),
}

pub struct Node {
    pub name: String,
    pub role: Role,
    pub db_id: String,
    pub replica: Rc<Replica<SimStore>>,
    /// Milliseconds this node's wall clock is ahead of (or behind) simulated time.
    pub skew: Arc<AtomicI64>,
    pub backups: Vec<MemoryStore>,
    /// A local write is under way (one at a time, so its op can be found in the log).
    pub writing: bool,
}

/// Simulated time, shared by every node's wall clock.
pub type Now = Arc<AtomicU64>;

impl Node {
    /// A fresh node with a db id chosen by the simulation (the engine's own are random,
    /// and stamps break ties by db id: a run must not depend on them).
    pub fn fresh(name: String, role: Role, db_id: String, now: &Now, skew: i64) -> Node {
        let store = MemoryStore::new();
        let head = Head::new(db_id.clone(), role.version());
        block_on(store.commit(&[], &[], |_| Ok(Commit { head: Some(head), ..Commit::default() }))).expect("a fresh memory store commits");
        let skew = Arc::new(AtomicI64::new(skew));
        let replica = Rc::new(open(role, store, now, &skew));
        Node { name, role, db_id, replica, skew, backups: Vec::new(), writing: false }
    }

    /// Reopens the node from `store` (what a crash left, or a backup): whatever was under
    /// way is gone.
    pub fn reopen(&mut self, store: MemoryStore, now: &Now) {
        self.replica = Rc::new(open(self.role, store, now, &self.skew));
        self.writing = false;
    }

    pub fn store(&self) -> &MemoryStore {
        &self.replica.store().inner
    }

    /// Whether this node stores documents of `collection` written at `version`.
    pub fn keeps(&self, collection: &str, version: u32) -> bool {
        match self.role {
            Role::Server => true,
            Role::Client(v) => version <= v && schema(v).collection(collection).is_some(),
        }
    }

    pub fn log(&self) -> Vec<Row> {
        block_on(self.store().rows_after(0, usize::MAX)).expect("memory store reads")
    }

    pub fn peers(&self) -> BTreeMap<String, tidemark::peer::PeerRecord> {
        block_on(self.store().peers()).expect("memory store reads")
    }

    /// Every stored document, by collection.
    pub fn dump(&self) -> BTreeMap<&'static str, Vec<StoredDoc>> {
        COLLECTIONS.iter().map(|c| (*c, self.store().dump(c))).collect()
    }

    /// What this node holds of every document: the stored layers of collections it
    /// keeps, and for the rest (and ops of newer versions) the log replayed.
    pub fn view(&self) -> View {
        let mut stored = BTreeMap::new();
        for (c, docs) in self.dump() {
            for d in docs {
                stored.insert((c.to_string(), d.id.clone()), d.all_layers());
            }
        }
        let mut logged: BTreeMap<(String, String), Layers> = BTreeMap::new();
        for r in self.log() {
            logged.entry((r.op.collection.clone(), r.op.id.clone())).or_default().apply(&r.op);
        }
        View { stored, logged, server: self.role == Role::Server, version: self.role.version() }
    }
}

impl Role {
    pub fn version(self) -> u32 {
        match self {
            Role::Server => 0,
            Role::Client(v) => v,
        }
    }
}

/// A node's documents as layers, to ask whether it holds an op.
pub struct View {
    stored: BTreeMap<(String, String), Layers>,
    logged: BTreeMap<(String, String), Layers>,
    server: bool,
    version: u32,
}

impl View {
    /// Whether the node holds `op` or something newer at every register it wrote:
    /// merging it again would change nothing.
    pub fn holds(&self, op: &Op) -> bool {
        // A replica that migrates computes the output of its own version and older itself.
        if tidemark::layers::is_migration(&op.ts) && !self.server && op.schema_version <= self.version {
            return true;
        }
        let key = (op.collection.clone(), op.id.clone());
        let unchanged = |m: &BTreeMap<(String, String), Layers>| {
            let mut layer = m.get(&key).and_then(|l| l.0.get(&op.schema_version)).cloned().unwrap_or_default();
            !layer.apply(op)
        };
        let kept = self.server || (op.schema_version <= self.version && super::nodes::schema(self.version).collection(&op.collection).is_some());
        if kept {
            unchanged(&self.stored)
        } else {
            unchanged(&self.stored) || unchanged(&self.logged)
        }
    }
}

fn open(role: Role, store: MemoryStore, now: &Now, skew: &Arc<AtomicI64>) -> Replica<SimStore> {
    // A replica that died mid-reset left its live generation sealed: lift the seal, as
    // the IndexedDB store does when it opens.
    if block_on(store.head()).expect("memory store reads").is_some_and(|h| h.sealed) {
        block_on(store.abandon(MemoryStore::new())).expect("memory store unseals");
    }
    let (now, skew) = (now.clone(), skew.clone());
    let clock = Box::new(move || (now.load(Ordering::Relaxed) as i64 + skew.load(Ordering::Relaxed)).max(0) as u64);
    let store = SimStore::new(store);
    let opened = match role {
        Role::Server => block_on(Replica::open_relay(store, clock)),
        Role::Client(v) => {
            let schemas = Schemas::new(schema(v), (1..v).map(schema).collect()).expect("schema history");
            block_on(Replica::open_migrating(store, schemas, Box::new(MarkV2), clock))
        }
    };
    let replica = opened.expect("a simulated replica opens");
    // Honest clocks here are skewed by up to 2 h and jump by up to a day: a deployment
    // with such clocks configures maxClockSkew above that (the bound is for hostile
    // stamps, which issue 13's tests cover).
    replica.set_max_clock_skew(7 * 24 * 3600 * 1000);
    replica
}
