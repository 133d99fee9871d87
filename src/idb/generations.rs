//! Generations as the engine's resets and upgrades use them (`Store::stage`, `swap`,
//! `abandon`, `settle`; DESIGN §4 and §6), and how a tab follows another tab's swap.
//!
//! - `stage` takes the replica's rebuild lock (`locks`), seals the live generation's head
//!   (every commit there is refused from then on, in every tab), records the generation
//!   about to be built in the directory, and creates it.
//! - `swap` flips the directory's live pointer with compare-and-set and forgets the
//!   staging record in one transaction, binds this store to the new generation, releases
//!   the lock and deletes the old generation — which closes the other tabs' connections
//!   to it (`versionchange`), so they rebind (`rebind`) on their next operation.
//! - `abandon` deletes the staging generation and unseals the live one.
//! - `settle` waits, for a writer that found the generation sealed, until the rebuild is
//!   over (the lock in shared mode), follows a swap, and unseals a generation whose
//!   rebuilder died (`recover`): a tab closed mid-reset leaves the live generation whole.

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::error::{Error, StoreError};
use crate::schema::Schema;

use super::directory::{self, Flip, Live};
use super::error::from_idb;
use super::error::from_js;
use super::generation::{self, HEAD, LOG, META};
use super::{codec, head, locks, IdbStore};

/// Sets the head's seal in generation `db` (a head already so is left as it is). A
/// change of the head without a row: it takes the fence (`head::fence`), so a single
/// write computed before the seal finds its row taken.
async fn set_sealed(db: &Database, sealed: bool) -> Result<(), StoreError> {
    let tx = db.transaction([META, LOG].as_slice()).with_mode(TransactionMode::Readwrite).build().map_err(from_idb)?;
    {
        let meta = tx.object_store(META).map_err(from_idb)?;
        let log = tx.object_store(LOG).map_err(from_idb)?;
        let (meta, log): (&web_sys::IdbObjectStore, &web_sys::IdbObjectStore) = (meta.as_sys().unchecked_ref(), log.as_sys().unchecked_ref());
        let mut head = head::read(meta, log).await?.ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
        if head.sealed == sealed {
            return Ok(());
        }
        head.sealed = sealed;
        meta.put_with_key(&codec::to_js(&head)?, &JsValue::from_str(HEAD)).map_err(|e| from_js(&e))?;
        head::fence(log, &head)?;
    }
    tx.commit().await.map_err(from_idb)
}

/// Seals the live generation and creates the staging one, laid out for `schema`.
pub async fn stage(store: &IdbStore, schema: &Schema) -> Result<IdbStore, Error> {
    if store.rebuild_lock.borrow().is_some() {
        return Err(StoreError::Sealed.into());
    }
    let db = store.db().await?;
    let release = locks::acquire(&locks::rebuild(&store.replica), true, true).await?.ok_or(StoreError::Sealed)?;
    // What a rebuilder that died left is dropped first (we hold the lock: nobody else is
    // rebuilding). A seal it left becomes this rebuild's: sealing leaves a sealed head as
    // it is, so lifting that seal first would only cost a transaction.
    if let Err(e) = drop_leftover_staging(store).await {
        locks::release(&release);
        return Err(e.into());
    }
    let built = async {
        set_sealed(&db, true).await?;
        let current = store.live();
        let next = Live { generation: current.generation + 1, db: generation::name(&store.replica, current.generation + 1), schema_version: schema.version, layout: schema.layout() };
        directory::write_staging(&store.dir, Some(&next)).await?;
        generation::delete(&next.db).await?;
        let gen_db = generation::create(&store.replica, next.generation, schema).await?;
        let dir = match directory::open(&store.replica).await {
            Ok(d) => d,
            Err(e) => {
                gen_db.close();
                return Err(Error::from(e));
            }
        };
        Ok::<_, Error>(IdbStore::new(&store.replica, schema, next, dir, gen_db))
    }
    .await;
    match built {
        Ok(staging) => {
            *store.rebuild_lock.borrow_mut() = Some(release);
            Ok(staging)
        }
        Err(e) => {
            let _ = unseal(store, &db).await;
            locks::release(&release);
            Err(e)
        }
    }
}

/// Deletes what a rebuild that died left (its staging generation) and unseals `db`.
async fn drop_leftover(store: &IdbStore, db: &Database) -> Result<(), StoreError> {
    drop_leftover_staging(store).await?;
    set_sealed(db, false).await
}

/// Deletes the staging generation a rebuild that died left, and forgets its record.
async fn drop_leftover_staging(store: &IdbStore) -> Result<(), StoreError> {
    if let Some(left) = directory::read_staging(&store.dir).await? {
        if left.db != store.live().db {
            generation::delete(&left.db).await?;
        }
        directory::write_staging(&store.dir, None).await?;
    }
    Ok(())
}

async fn unseal(store: &IdbStore, db: &Database) -> Result<(), StoreError> {
    let staging = directory::read_staging(&store.dir).await?;
    if let Some(s) = staging {
        let _ = generation::delete(&s.db).await;
        directory::write_staging(&store.dir, None).await?;
    }
    set_sealed(db, false).await
}

/// Flips to `staging` and binds `store` to it.
pub async fn swap(store: &IdbStore, staging: IdbStore) -> Result<(), Error> {
    let current = store.live();
    let next = staging.live();
    let flipped = directory::flip_live(&store.dir, Some(&current), &next).await;
    match flipped {
        Ok(Flip::Done) => {}
        Ok(Flip::Lost(_)) => {
            abandon(store, staging).await?;
            return Err(StoreError::Backend("another tab changed the live generation during the rebuild".into()).into());
        }
        Err(e) => {
            abandon(store, staging).await?;
            return Err(e.into());
        }
    }
    // Take the staging store's connection over (it must not close it when dropped).
    let new_db = staging.db.borrow().clone();
    staging.closed.set(true);
    staging.dir.as_sys().close();
    new_db.as_sys().set_onversionchange(Some(store.on_db_change.as_ref().unchecked_ref()));
    let old = store.db.replace(new_db);
    old.as_sys().set_onversionchange(None);
    old.as_sys().close();
    *store.live.borrow_mut() = next;
    // What the staging store wrote is what the live generation now holds.
    store.known.replace(staging.known.take());
    store.stale.set(false);
    store.release_rebuild();
    // Best effort: a failure leaves garbage, never a wrong live store. Deleting it also
    // tells the other tabs (their connections to it get `versionchange`).
    let _ = generation::delete(&current.db).await;
    store.changed_all();
    Ok(())
}

/// Drops `staging` and unseals the live generation.
pub async fn abandon(store: &IdbStore, staging: IdbStore) -> Result<(), Error> {
    let name = staging.live().db;
    staging.close();
    drop(staging);
    let _ = generation::delete(&name).await;
    let result = async {
        directory::write_staging(&store.dir, None).await?;
        let db = store.db().await?;
        set_sealed(&db, false).await
    }
    .await;
    store.release_rebuild();
    Ok(result?)
}

/// Waits until the live generation is not sealed: a rebuild in this or another tab
/// finished (swapped: rebind; abandoned: nothing to do) or its tab died (recover).
pub async fn settle(store: &IdbStore) -> Result<(), Error> {
    loop {
        let db = store.db().await?;
        let sealed = super::read::head(&db).await?.is_some_and(|h| h.sealed);
        let live = directory::read_live(&store.dir).await?;
        if live.as_ref() != Some(&store.live()) {
            store.follow().await?;
            continue;
        }
        if !sealed {
            return Ok(());
        }
        if store.rebuild_lock.borrow().is_some() {
            // This very store is rebuilding: wait for its swap or abandon.
            let (tx, rx) = futures::channel::oneshot::channel();
            store.waiters.borrow_mut().push(tx);
            let _ = rx.await;
            continue;
        }
        // Granted once no tab holds the lock exclusively: the rebuild is over.
        if let Some(release) = locks::acquire(&locks::rebuild(&store.replica), false, false).await? {
            locks::release(&release);
        }
        if directory::read_live(&store.dir).await?.as_ref() == Some(&store.live()) {
            recover(store).await?;
        }
    }
}

/// Unseals a generation whose rebuilder died, if no tab is rebuilding now.
pub async fn recover(store: &IdbStore) -> Result<(), Error> {
    let Some(release) = locks::acquire(&locks::rebuild(&store.replica), true, true).await? else { return Ok(()) };
    let db = store.db().await;
    let result = match db {
        Ok(db) if super::read::head(&db).await?.is_some_and(|h| h.sealed) && directory::read_live(&store.dir).await?.as_ref() == Some(&store.live()) => {
            drop_leftover(store, &db).await
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    locks::release(&release);
    Ok(result?)
}

impl IdbStore {
    /// Follows another tab's swap: binds to the generation the directory names now, if
    /// it is not this store's.
    pub async fn follow(&self) -> Result<(), StoreError> {
        if self.closed.get() {
            return Err(StoreError::Closed);
        }
        let _one = self.rebinding.lock().await;
        if directory::read_live(&self.dir).await?.as_ref() != Some(&self.live()) {
            self.rebind().await?;
        }
        Ok(())
    }

    /// Binds to the generation the directory names now (another tab swapped one in).
    pub(super) async fn rebind(&self) -> Result<(), StoreError> {
        let live = directory::read_live(&self.dir).await?.ok_or_else(|| StoreError::Corrupt("the replica's directory names no live generation".into()))?;
        if live.layout != self.schema.layout() {
            self.closed.set(true);
            return Err(if live.schema_version > self.schema.version {
                StoreError::VersionTooOld { stored: live.schema_version, current: self.schema.version }
            } else {
                StoreError::Corrupt(format!("the live generation {} has another layout than this schema's", live.db))
            });
        }
        let (db, _) = generation::open(&live.db, &self.schema).await?;
        db.as_sys().set_onversionchange(Some(self.on_db_change.as_ref().unchecked_ref()));
        let old = self.db.replace(db);
        old.as_sys().set_onversionchange(None);
        old.as_sys().close();
        *self.live.borrow_mut() = live;
        self.stale.set(false);
        Ok(())
    }

    /// Releases the rebuild lock and wakes this tab's writers waiting for the rebuild.
    fn release_rebuild(&self) {
        if let Some(release) = self.rebuild_lock.borrow_mut().take() {
            locks::release(&release);
        }
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Tells the change listener that every collection changed (after a swap: live
    /// queries re-read once, and other tabs follow).
    fn changed_all(&self) {
        let f = self.on_change.borrow().clone();
        if let Some(f) = f {
            let arr: js_sys::Array = self.schema.collections.keys().map(|c| JsValue::from_str(c)).collect();
            let _ = f.call1(&JsValue::NULL, &arr);
        }
    }
}
