//! Opening data of an older schema version (DESIGN §6, "Opening at a newer version"):
//! building a new generation's store from the live one, row for row, with every document
//! rebuilt at the current version. The caller (the IndexedDB store) flips the live
//! pointer only after this returns, so a crash at any point leaves the old generation.

use std::collections::BTreeMap;

use crate::error::{Error, StoreError};
use crate::layers::{is_migration, Layers};
use crate::migrate::{Migrator, Schemas};
use crate::progress::{Phase, Progress};
use crate::rebuild::{Pending, Rebuild};
use crate::store::{Commit, DocKey, Head, Store};

/// Builds `to`, an empty store for a new generation, from `from`, the live one written
/// under an older schema (DESIGN §6, "Opening at a newer version"): the same op log row
/// for row (so the db id, the sync points and the peers stay valid), and every document
/// rebuilt from the log at the current version — migrated forward, with ops of newer
/// versions and of collections the old schema lacked applied now that the app knows
/// them. Migration output is appended as local rows so it reaches the server.
///
/// `from` is only read: a crash at any point leaves it intact, and the caller flips the
/// live pointer to `to` only after this returns.
pub async fn upgrade<A: Store, B: Store>(
    from: &A,
    to: &B,
    schemas: &Schemas,
    migrator: &dyn Migrator,
    progress: &mut impl FnMut(Progress),
) -> Result<Head, Error> {
    let old = from.head().await?.ok_or_else(|| StoreError::Corrupt("the old generation has no head".into()))?;
    schemas.check_path(old.schema_version.min(schemas.current.version), migrator)?;
    let peers = from.peers().await?;
    let current = schemas.current.version;
    let mut docs: BTreeMap<DocKey, Layers> = BTreeMap::new();
    let mut after = 0u64;
    let total = old.max_row;
    loop {
        let rows = from.rows_after(after, UPGRADE_CHUNK).await?;
        let Some(last) = rows.last() else { break };
        after = last.row;
        for r in &rows {
            // Collections the app dropped still join the migration: a step may read them.
            if !is_migration(&r.op.ts) && schemas.knows(&r.op.collection) {
                docs.entry((r.op.collection.clone(), r.op.id.clone())).or_default().apply(&r.op);
            }
        }
        to.commit(&[], &[], |_| Ok(Commit { rows, ..Commit::default() })).await?;
        progress(Progress { phase: Phase::Copy, done: after.min(total), total });
    }
    let mut head = Head { schema_version: current, ..old.clone() };
    head.clock.version = current;
    // Every document is migrated in one batch, so a migration reads (through its
    // context) every other document as it stood before its step; then written in chunks.
    let rebuild = Rebuild { schemas: Some(schemas), migrator };
    let items: Vec<Pending> = docs.into_iter().map(|(key, layers)| Pending { key, layers, migrated: None, remigrate: true }).collect();
    let mut migration_rows = Vec::new();
    let mut built = rebuild.docs(items, &mut head, &mut migration_rows)?;
    built.retain(|(c, _)| schemas.current.collection(c).is_some());
    let n = built.len().max(1) as u64;
    let mut done = 0u64;
    while !built.is_empty() {
        let rest = built.split_off(built.len().min(UPGRADE_CHUNK));
        let chunk = std::mem::replace(&mut built, rest);
        let keys: Vec<DocKey> = chunk.iter().map(|(c, d)| (c.clone(), d.id.clone())).collect();
        done += keys.len() as u64;
        to.commit(&keys, &[], move |_| Ok(Commit { docs: chunk, ..Commit::default() })).await?;
        progress(Progress { phase: Phase::Migrate, done, total: n });
    }
    let ids: Vec<String> = peers.keys().cloned().collect();
    let h = head.clone();
    to.commit(&[], &ids, move |_| Ok(Commit { head: Some(h), rows: migration_rows, peers: peers.into_iter().collect(), ..Commit::default() })).await?;
    Ok(head)
}

/// Rows, then documents, per upgrade transaction.
const UPGRADE_CHUNK: usize = 1000;
