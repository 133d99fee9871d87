//! Generations of a library on PostgreSQL: the engine's `stage` / `swap` / `abandon` /
//! `settle` for `PgStore` (DESIGN §4: a rebuild writes a new generation and then flips a
//! pointer in one transaction).
//!
//! A generation is a key the library's rows are stored under in every table, with a row
//! stream of its own. A library starts with its name as its key; `tidemark_generations`
//! points a library at another key once a generation was swapped in.
//! - `stage` seals the live generation (the head's `sealed` flag, set while holding the
//!   generation's seal lock exclusively: commits hold it shared, so the ones under way finish
//!   first and the later ones read the sealed head, which `Commit::check` refuses) and opens
//!   an empty generation under a fresh key `<library>~<random>` (`~` is never in a name);
//! - `swap` points the library at the staging key in one transaction (the pointer flip),
//!   rebinds this store to it, and deletes the old generation's rows;
//! - `abandon` deletes the staging rows and unseals;
//! - `settle` waits until the live generation is not sealed and binds to whichever
//!   generation the pointer names then (another process may have swapped).
//!
//! A server's relay library never stages (it merges snapshots); full replicas on PostgreSQL
//! do, when a reset rebuilds them. An instance bound to an old generation follows a swap
//! made elsewhere only at its next `settle`.

use std::sync::Arc;
use std::time::Duration;

use tidemark::error::StoreError;
use tidemark::store::Head;

use super::store::{seal_key, Generation, PgStore};
use super::{Database, Error};

/// The tables holding a generation's rows.
const TABLES: [&str; 5] = ["tidemark_libraries", "tidemark_clocks", "tidemark_log", "tidemark_docs", "tidemark_peers"];

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The key the library's live generation is stored under.
async fn live_key(db: &Database, name: &str) -> Result<String, Error> {
    let pool = db.pool().clone();
    let name = name.to_string();
    db.run(async move {
        let client = pool.get().await?;
        let stmt = client.prepare_cached("SELECT live FROM tidemark_generations WHERE library = $1").await?;
        Ok(client.query_opt(&stmt, &[&name]).await?.map_or(name, |r| r.get(0)))
    })
    .await
}

/// The library's live generation, with its stream loaded.
pub(crate) async fn live(db: &Database, name: &str) -> Result<Arc<Generation>, Error> {
    let key = live_key(db, name).await?;
    let stream = db.stream(&key).await?;
    Ok(Arc::new(Generation::new(key, stream)))
}

/// Sets or clears the seal of the generation under `key`; sealing a sealed one fails with
/// `Sealed`, and a generation without a head cannot be sealed.
async fn set_sealed(db: &Database, key: &str, sealed: bool) -> Result<(), StoreError> {
    let pool = db.pool().clone();
    let key = key.to_string();
    db.run(async move {
        let mut client = pool.get().await?;
        let txn = client.transaction().await?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&seal_key(&key)]).await?;
        let Some(row) = txn.query_opt("SELECT head FROM tidemark_libraries WHERE library = $1 FOR UPDATE", &[&key]).await? else {
            return Ok(Err(StoreError::Corrupt("store has no head".into())));
        };
        let mut head: Head = match serde_json::from_str(&row.get::<_, String>(0)) {
            Ok(h) => h,
            Err(e) => return Ok(Err(StoreError::Corrupt(format!("head: {e}")))),
        };
        if sealed && head.sealed {
            return Ok(Err(StoreError::Sealed));
        }
        head.sealed = sealed;
        let text = serde_json::to_string(&head).map_err(|e| Error::Config(e.to_string()))?;
        txn.execute("UPDATE tidemark_libraries SET head = $2 WHERE library = $1", &[&key, &text]).await?;
        txn.commit().await?;
        Ok(Ok(()))
    })
    .await
    .map_err(backend)?
}

/// Deletes every row stored under `key`.
async fn delete(db: &Database, key: &str) -> Result<(), StoreError> {
    let pool = db.pool().clone();
    let key = key.to_string();
    db.run(async move {
        let mut client = pool.get().await?;
        let txn = client.transaction().await?;
        for table in TABLES {
            txn.execute(&format!("DELETE FROM {table} WHERE library = $1"), &[&key]).await?;
        }
        txn.commit().await?;
        Ok(())
    })
    .await
    .map_err(backend)
}

/// A fresh staging key for `name`.
fn staging_key(name: &str) -> String {
    format!("{name}~{}", tidemark::peer::new_session())
}

pub(crate) async fn stage(store: &PgStore) -> Result<PgStore, StoreError> {
    let live = store.live();
    set_sealed(store.database(), &live.key, true).await?;
    match PgStore::at(store.database(), store.library(), &staging_key(store.library())).await {
        Ok(staging) => Ok(staging),
        Err(e) => {
            set_sealed(store.database(), &live.key, false).await?;
            Err(backend(e))
        }
    }
}

pub(crate) async fn swap(store: &PgStore, staging: PgStore) -> Result<(), StoreError> {
    let (db, old, new) = (store.database().clone(), store.live(), staging.live());
    let flip = {
        let (pool, name, old_key, new_key) = (db.pool().clone(), store.library().to_string(), old.key.clone(), new.key.clone());
        db.run(async move {
            let mut client = pool.get().await?;
            let txn = client.transaction().await?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&seal_key(&old_key)]).await?;
            let head = txn.query_opt("SELECT head FROM tidemark_libraries WHERE library = $1", &[&old_key]).await?;
            let sealed = head.and_then(|r| serde_json::from_str::<Head>(&r.get::<_, String>(0)).ok()).is_some_and(|h| h.sealed);
            if !sealed {
                return Ok(false);
            }
            txn.execute(
                "INSERT INTO tidemark_generations (library, live) VALUES ($1, $2)
                 ON CONFLICT (library) DO UPDATE SET live = EXCLUDED.live",
                &[&name, &new_key],
            )
            .await?;
            txn.commit().await?;
            Ok(true)
        })
        .await
    };
    match flip {
        Ok(true) => {
            store.bind(new);
            delete(&db, &old.key).await
        }
        failed => {
            delete(&db, &new.key).await?;
            let _ = set_sealed(&db, &old.key, false).await;
            match failed {
                Err(e) => Err(backend(e)),
                _ => Err(StoreError::Backend("swap without a staging generation".into())),
            }
        }
    }
}

pub(crate) async fn abandon(store: &PgStore, staging: PgStore) -> Result<(), StoreError> {
    delete(store.database(), &staging.live().key).await?;
    set_sealed(store.database(), &store.live().key, false).await
}

pub(crate) async fn settle(store: &PgStore) -> Result<(), StoreError> {
    let db = store.database();
    loop {
        let generation = live(db, store.library()).await.map_err(backend)?;
        let key = generation.key.clone();
        let pool = db.pool().clone();
        let head = db
            .run(async move {
                let client = pool.get().await?;
                Ok(client.query_opt("SELECT head FROM tidemark_libraries WHERE library = $1", &[&key]).await?.map(|r| r.get::<_, String>(0)))
            })
            .await
            .map_err(backend)?;
        let sealed = head.and_then(|t| serde_json::from_str::<Head>(&t).ok()).is_some_and(|h| h.sealed);
        if !sealed {
            if generation.key != store.live().key {
                store.bind(generation);
            }
            return Ok(());
        }
        // Sleeps on the database's runtime: callers may be on any executor.
        db.run(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
        .await
        .map_err(backend)?;
    }
}
