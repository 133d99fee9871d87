//! Opening a replica whose stored data is at an older schema version (DESIGN §4, §6):
//! build the next generation from the live one with `migrate::upgrade`, flip the live
//! pointer in one transaction, then delete the old generation. Until the flip the old
//! generation stays live and untouched, so a page closed at any step reopens to all its
//! data and starts the upgrade again; a half-built generation left by a crash is
//! deleted and rebuilt.

use super::directory::{self, Flip, Live};
use super::{check_name, generation, persist, IdbStore};
use crate::error::{Error, MigrateError, OpenError};
use crate::migrate::{Migrator, Schemas};
use crate::progress::Progress;

impl IdbStore {
    /// Opens the replica `name` for `schemas.current`, first migrating data stored under
    /// an older version. Data of a newer version is refused (`VERSION_TOO_OLD`), as is a
    /// path with a missing schema or migration (`MISSING_SCHEMA`, `MISSING_MIGRATION`):
    /// in every refusal the live store is left as it was.
    pub async fn open_migrating(name: &str, schemas: &Schemas, migrator: &dyn Migrator, progress: &mut impl FnMut(Progress)) -> Result<IdbStore, Error> {
        check_name(name)?;
        let current = &schemas.current;
        let dir = directory::open(name).await?;
        let live = directory::read_live(&dir).await;
        dir.close();
        let live = match live? {
            Some(l) if l.schema_version < current.version => l,
            Some(l) if l.schema_version > current.version => {
                return Err(MigrateError::Newer { stored: l.schema_version, current: current.version }.into());
            }
            // New, or already at this version: nothing to migrate.
            _ => return IdbStore::open(name, current).await,
        };
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
        let next = Live {
            generation: live.generation + 1,
            db: generation::name(name, live.generation + 1),
            schema_version: current.version,
            layout: current.layout(),
        };
        // A leftover of an upgrade that crashed before its flip is garbage.
        generation::delete(&next.db).await?;
        let db = generation::create(name, next.generation, current).await?;
        let new = IdbStore::new(name, current, next.clone(), directory::open(name).await?, db);
        if let Err(e) = crate::upgrade::upgrade(&old, &new, schemas, migrator, progress).await {
            new.close();
            old.close();
            let _ = generation::delete(&next.db).await;
            return Err(e);
        }
        let flipped = directory::flip_live(&new.dir, Some(&live), &next).await;
        old.close();
        match flipped {
            Ok(Flip::Done) => {
                // Best effort: a failure leaves garbage, never a wrong live store.
                let _ = generation::delete(&live.db).await;
                Ok(new)
            }
            Ok(Flip::Lost(_)) => {
                // Another tab upgraded first: use its generation.
                new.close();
                let _ = generation::delete(&next.db).await;
                IdbStore::open(name, current).await
            }
            Err(e) => {
                new.close();
                let _ = generation::delete(&next.db).await;
                Err(e.into())
            }
        }
    }
}
