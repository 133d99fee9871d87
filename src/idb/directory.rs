//! The directory database `tidemark:{replica}`: one tiny record saying which generation
//! is live. Rebuilds (migrations, resets) write a whole new generation and then change
//! only this record, in one transaction, so a crash leaves either the old or the new
//! generation live and never a mixture (DESIGN §4).

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use crate::error::StoreError;

use super::codec;
use super::error::{from_idb, from_open};

const DIR: &str = "dir";
const LIVE: &str = "live";
/// The generation being built beside the live one, if any: what a crashed rebuild left
/// behind, for the next opener to delete.
const STAGING: &str = "staging";

/// The live pointer. `layout` is what decides whether a schema can use the stored data
/// as is; `schemaVersion` is the version that data was written under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    pub generation: u32,
    pub db: String,
    pub schema_version: u32,
    pub layout: String,
}

/// What a compare-and-set of the live pointer did.
#[derive(Clone, Debug, PartialEq)]
pub enum Flip {
    Done,
    /// Someone else (another tab) changed the pointer first; this is what it is now.
    Lost(Option<Live>),
}

pub fn name(replica: &str) -> String {
    format!("tidemark:{replica}")
}

pub async fn open(replica: &str) -> Result<Database, StoreError> {
    Database::open(name(replica))
        .with_version(1u32)
        .with_on_upgrade_needed(|_, db| db.create_object_store(DIR).build().map(|_| ()))
        .await
        .map_err(from_open)
}

pub async fn read_live(dir: &Database) -> Result<Option<Live>, StoreError> {
    let tx = dir.transaction(DIR).build().map_err(from_idb)?;
    let store = tx.object_store(DIR).map_err(from_idb)?;
    let live: Option<JsValue> = store.get(JsValue::from_str(LIVE)).primitive().map_err(from_idb)?.await.map_err(from_idb)?;
    live.map(|v| codec::from_js(&v)).transpose()
}

/// Points the replica at `new` if the pointer still is `expected`, and forgets the
/// staging record, in one transaction.
pub async fn flip_live(dir: &Database, expected: Option<&Live>, new: &Live) -> Result<Flip, StoreError> {
    let tx = dir.transaction(DIR).with_mode(TransactionMode::Readwrite).build().map_err(from_idb)?;
    {
        let store = tx.object_store(DIR).map_err(from_idb)?;
        let current: Option<JsValue> = store.get(JsValue::from_str(LIVE)).primitive().map_err(from_idb)?.await.map_err(from_idb)?;
        let current: Option<Live> = current.map(|v| codec::from_js(&v)).transpose()?;
        if current.as_ref() != expected {
            return Ok(Flip::Lost(current));
        }
        store.put(codec::to_js(new)?).with_key(JsValue::from_str(LIVE)).without_key_type().primitive().map_err(from_idb)?;
        store.delete(JsValue::from_str(STAGING)).primitive().map_err(from_idb)?;
    }
    tx.commit().await.map_err(from_idb)?;
    Ok(Flip::Done)
}

/// The staging record: the generation being built (or left by a crashed rebuild).
pub async fn read_staging(dir: &Database) -> Result<Option<Live>, StoreError> {
    let tx = dir.transaction(DIR).build().map_err(from_idb)?;
    let store = tx.object_store(DIR).map_err(from_idb)?;
    let staging: Option<JsValue> = store.get(JsValue::from_str(STAGING)).primitive().map_err(from_idb)?.await.map_err(from_idb)?;
    staging.map(|v| codec::from_js(&v)).transpose()
}

/// Records (or, with `None`, forgets) the generation being built.
pub async fn write_staging(dir: &Database, staging: Option<&Live>) -> Result<(), StoreError> {
    let tx = dir.transaction(DIR).with_mode(TransactionMode::Readwrite).build().map_err(from_idb)?;
    {
        let store = tx.object_store(DIR).map_err(from_idb)?;
        match staging {
            Some(s) => store.put(codec::to_js(s)?).with_key(JsValue::from_str(STAGING)).without_key_type().primitive().map_err(from_idb)?,
            None => store.delete(JsValue::from_str(STAGING)).primitive().map_err(from_idb)?,
        };
    }
    tx.commit().await.map_err(from_idb)
}
