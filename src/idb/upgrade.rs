//! Opening a replica whose stored data is at an older schema version (DESIGN §4, §6):
//! stage the next generation beside the live one (sealing it), build it with
//! `upgrade::upgrade`, and swap it in with a compare-and-set of the live pointer; the old
//! generation is deleted after. Until the flip the old generation stays live and whole,
//! so a page closed at any step reopens to all its data (its seal lifted) and starts the
//! upgrade again; a half-built generation left by a crash is deleted and rebuilt.

use super::{check_name, directory, persist, IdbStore};
use crate::error::{Error, MigrateError, OpenError, StoreError};
use crate::migrate::{Migrator, Schemas};
use crate::progress::Progress;
use crate::store::Store;
use crate::upgrade::upgrade;

impl IdbStore {
    /// Opens the replica `name` for `schemas.current`, first migrating data stored under
    /// an older version. Data of a newer version is refused (`VERSION_TOO_OLD`), as is a
    /// path with a missing schema or migration (`MISSING_SCHEMA`, `MISSING_MIGRATION`):
    /// in every refusal the live store is left as it was.
    ///
    /// The upgrade is a rebuild like a reset's (`generations`): it seals the old
    /// generation — a tab still running the older app finds its writes refused until it
    /// reloads, never written into a dead generation — builds the new one, and swaps.
    pub async fn open_migrating(name: &str, schemas: &Schemas, migrator: &dyn Migrator, progress: &mut impl FnMut(Progress)) -> Result<IdbStore, Error> {
        check_name(name)?;
        let current = &schemas.current;
        current.validate()?;
        loop {
            let dir = directory::open(name).await?;
            let live = match directory::read_live(&dir).await {
                Ok(Some(l)) if l.schema_version < current.version => l,
                Ok(Some(l)) if l.schema_version > current.version => {
                    dir.close();
                    return Err(MigrateError::Newer { stored: l.schema_version, current: current.version }.into());
                }
                // New, or already at this version: nothing to migrate, and the directory
                // just read serves the store.
                Ok(live) => return IdbStore::open_in(name, current, dir, live).await,
                Err(e) => {
                    dir.close();
                    return Err(e.into());
                }
            };
            dir.close();
            schemas.check_path(live.schema_version, migrator)?;
            let old_schema = schemas.get(live.schema_version).ok_or(MigrateError::MissingSchema(live.schema_version))?;
            if old_schema.layout() != live.layout {
                return Err(OpenError::SchemaMismatch {
                    stored: live.schema_version,
                    opened: current.version,
                    hint: format!("history's schema for version {} does not match the stored collections and indexes", live.schema_version),
                }
                .into());
            }
            persist::ask_once();
            let old = IdbStore::open(name, old_schema).await?;
            let staging = match old.stage(current).await {
                Ok(s) => s,
                // Another tab is rebuilding (perhaps upgrading too): wait, then look again.
                Err(Error::Store(StoreError::Sealed)) => {
                    old.settle().await?;
                    old.close();
                    continue;
                }
                Err(e) => {
                    old.close();
                    return Err(e);
                }
            };
            if let Err(e) = upgrade(&old, &staging, schemas, migrator, progress).await {
                let _ = old.abandon(staging).await;
                old.close();
                return Err(e);
            }
            let swapped = old.swap(staging).await;
            old.close();
            swapped?;
            return IdbStore::open(name, current).await;
        }
    }
}
