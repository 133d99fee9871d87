//! The errors each operation can return. Every error has a stable `code()` that the JS
//! layer puts on the `Error` object, so apps can branch on it without parsing messages.

use thiserror::Error;

/// Something wrong with a schema the app passed in.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SchemaError {
    #[error("invalid schema: {0}")]
    Invalid(String),
}

/// Why a write (put, patch, delete) was refused. Nothing was stored.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WriteError {
    #[error("unknown collection {0:?}: declare it in schema.collections")]
    UnknownCollection(String),
    #[error("document has no string primary key {field:?}: give every document a non-empty string `{field}`")]
    MissingPrimaryKey { field: String },
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    #[error("value is not JSON: {0}")]
    NotJson(String),
    #[error("invalid patch: {0}")]
    InvalidPatch(String),
    #[error("document {id:?} does not exist in {collection:?}: put it before patching it")]
    NotFound { collection: String, id: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Why a query was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QueryError {
    #[error("unknown collection {0:?}: declare it in schema.collections")]
    UnknownCollection(String),
    #[error("invalid query: {0}")]
    Invalid(String),
}

/// A failure of the storage underneath (IndexedDB, memory, SQLite).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("storage quota exceeded: free space or call navigator.storage.persist(); nothing was written")]
    QuotaExceeded,
    #[error("the replica is closed")]
    Closed,
    /// The live generation is being rebuilt (a reset or an upgrade): writers wait for the
    /// new generation (`Store::settle`) and retry there.
    #[error("the replica is being rebuilt; the write will go into the new generation")]
    Sealed,
    /// Another tab upgraded the stored data past this app's schema version.
    #[error("the stored data has schema version {stored}, newer than this app's {current}: reload the page to run the newer app")]
    VersionTooOld { stored: u32, current: u32 },
    /// This store cannot do what was asked (a server's store has no generations).
    #[error("not supported by this store: {0}")]
    Unsupported(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Backend(String),
    /// A server's disk is full: nothing was written; retry once space is freed.
    #[error("the disk is full; nothing was written")]
    DiskFull,
}

/// Why a replica could not be opened.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OpenError {
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("stored data has schema version {stored} but the app opened version {opened}: {hint}")]
    SchemaMismatch { stored: u32, opened: u32, hint: String },
}

/// Why a sync pass stopped. Whatever was committed before the failure stays committed and
/// consistent; the next pass resumes from the stored points.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SyncError {
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the peer refused: {code}: {message}")]
    Remote { code: String, message: String },
    #[error("sync is not configured: pass `sync: {{ url, library }}` to openReplica")]
    NotConfigured,
    /// A received op could not be applied here and was set aside (`status().quarantined`);
    /// the sync point moved past it and every other op applied.
    #[error("an op was quarantined: {0}")]
    Quarantined(String),
    /// The token a live connection was opened with has expired (the server closes it).
    #[error("the sync token expired: give `sync.token` as a function that returns a fresh one, or reopen with a new token")]
    TokenExpired,
}

/// Why data could not be brought to the app's schema version. The live store is
/// untouched.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MigrateError {
    #[error("no schema for version {0}: add it to `history` so stored data of that version can be migrated")]
    MissingSchema(u32),
    #[error("no migration to version {0}: add `migrations[{0}]` (a function, or null if only indexes, collections or defaults change)")]
    MissingMigration(u32),
    #[error("stored data has schema version {stored}, newer than this app's {current}: upgrade the app")]
    Newer { stored: u32, current: u32 },
    #[error("invalid history: {0}")]
    BadHistory(String),
    #[error("a migration failed: {0}")]
    Failed(String),
    /// The app's function threw on the `index`-th document of a batch (the engine names
    /// the document: `Failed`).
    #[error("a migration threw on document {index} of its batch: {message}")]
    Threw { index: usize, message: String },
    /// The app's function returned `undefined` for the `index`-th document of a batch (a
    /// forgotten `return`, most likely): never read as "delete", which is `null`.
    #[error("a migration returned undefined for document {index} of its batch: return the document, or null to delete it")]
    ReturnedUndefined { index: usize },
}

/// Any Tidemark error.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

impl Error {
    /// The stable, machine-readable code of this error (`err.code` in JS).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Schema(SchemaError::Invalid(_)) => "INVALID_SCHEMA",
            Error::Write(e) => match e {
                WriteError::UnknownCollection(_) => "UNKNOWN_COLLECTION",
                WriteError::MissingPrimaryKey { .. } => "MISSING_PRIMARY_KEY",
                WriteError::InvalidDocument(_) => "INVALID_DOCUMENT",
                WriteError::NotJson(_) => "NOT_JSON",
                WriteError::InvalidPatch(_) => "INVALID_PATCH",
                WriteError::NotFound { .. } => "NOT_FOUND",
                WriteError::InvalidArgument(_) => "INVALID_ARGUMENT",
            },
            Error::Query(QueryError::UnknownCollection(_)) => "UNKNOWN_COLLECTION",
            Error::Query(QueryError::Invalid(_)) => "INVALID_QUERY",
            Error::Store(e) => match e {
                StoreError::QuotaExceeded => "QUOTA_EXCEEDED",
                StoreError::Closed => "CLOSED",
                StoreError::Sealed | StoreError::Unsupported(_) => "STORAGE_ERROR",
                StoreError::VersionTooOld { .. } => "VERSION_TOO_OLD",
                StoreError::Corrupt(_) => "CORRUPT",
                StoreError::Backend(_) => "STORAGE_ERROR",
                StoreError::DiskFull => "DISK_FULL",
            },
            Error::Open(OpenError::InvalidOptions(_)) => "INVALID_OPTIONS",
            Error::Open(OpenError::SchemaMismatch { .. }) => "SCHEMA_MISMATCH",
            Error::Migrate(e) => match e {
                MigrateError::MissingSchema(_) => "MISSING_SCHEMA",
                MigrateError::MissingMigration(_) => "MISSING_MIGRATION",
                MigrateError::Newer { .. } => "VERSION_TOO_OLD",
                MigrateError::BadHistory(_) => "INVALID_SCHEMA",
                MigrateError::Failed(_) | MigrateError::Threw { .. } | MigrateError::ReturnedUndefined { .. } => "MIGRATION_FAILED",
            },
            Error::Sync(e) => match e {
                SyncError::Connection(_) => "SYNC_CONNECTION",
                SyncError::Protocol(_) => "SYNC_PROTOCOL",
                // The peer's own code, when it is one of the vocabulary.
                SyncError::Remote { code, .. } => CODES.iter().find(|c| **c == code).copied().unwrap_or("SYNC_REFUSED"),
                SyncError::NotConfigured => "SYNC_NOT_CONFIGURED",
                SyncError::TokenExpired => "SYNC_TOKEN_EXPIRED",
                SyncError::Quarantined(_) => "OP_QUARANTINED",
            },
        }
    }
}

/// Every error code, on both sides of a connection: a protocol `error` message carries
/// one of these, and a refusal received from a peer keeps its code (`SYNC_REFUSED` for
/// one outside the vocabulary). The last group is only ever sent by servers.
pub const CODES: &[&str] = &[
    "INVALID_SCHEMA",
    "UNKNOWN_COLLECTION",
    "MISSING_PRIMARY_KEY",
    "INVALID_DOCUMENT",
    "NOT_JSON",
    "INVALID_PATCH",
    "NOT_FOUND",
    "INVALID_ARGUMENT",
    "INVALID_QUERY",
    "QUOTA_EXCEEDED",
    "CLOSED",
    "CORRUPT",
    "STORAGE_ERROR",
    "INVALID_OPTIONS",
    "SCHEMA_MISMATCH",
    "MISSING_SCHEMA",
    "MISSING_MIGRATION",
    "VERSION_TOO_OLD",
    "MIGRATION_FAILED",
    "SYNC_CONNECTION",
    "SYNC_PROTOCOL",
    "SYNC_REFUSED",
    "SYNC_NOT_CONFIGURED",
    "OP_QUARANTINED",
    // Server refusals and faults.
    "UNAUTHORIZED",
    "FORBIDDEN",
    "BAD_LIBRARY",
    "UNKNOWN_LIBRARY",
    "TIMEOUT",
    "FRAME_TOO_LARGE",
    "INTERNAL",
    "DISK_FULL",
    "SYNC_TOKEN_EXPIRED",
    "TOO_MANY_CONNECTIONS",
    "RATE_LIMITED",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_in_the_vocabulary_and_remote_codes_are_kept() {
        let errors: Vec<Error> = vec![
            SchemaError::Invalid(String::new()).into(),
            WriteError::UnknownCollection(String::new()).into(),
            WriteError::MissingPrimaryKey { field: String::new() }.into(),
            WriteError::InvalidDocument(String::new()).into(),
            WriteError::NotJson(String::new()).into(),
            WriteError::InvalidPatch(String::new()).into(),
            WriteError::NotFound { collection: String::new(), id: String::new() }.into(),
            WriteError::InvalidArgument(String::new()).into(),
            QueryError::UnknownCollection(String::new()).into(),
            QueryError::Invalid(String::new()).into(),
            StoreError::QuotaExceeded.into(),
            StoreError::Closed.into(),
            StoreError::Sealed.into(),
            StoreError::Corrupt(String::new()).into(),
            StoreError::Backend(String::new()).into(),
            StoreError::DiskFull.into(),
            OpenError::InvalidOptions(String::new()).into(),
            OpenError::SchemaMismatch { stored: 1, opened: 2, hint: String::new() }.into(),
            MigrateError::MissingSchema(1).into(),
            MigrateError::MissingMigration(1).into(),
            MigrateError::Newer { stored: 2, current: 1 }.into(),
            MigrateError::BadHistory(String::new()).into(),
            MigrateError::Failed(String::new()).into(),
            MigrateError::Threw { index: 0, message: String::new() }.into(),
            MigrateError::ReturnedUndefined { index: 0 }.into(),
            SyncError::Connection(String::new()).into(),
            SyncError::Protocol(String::new()).into(),
            SyncError::NotConfigured.into(),
            SyncError::TokenExpired.into(),
            SyncError::Quarantined(String::new()).into(),
        ];
        for e in &errors {
            assert!(CODES.contains(&e.code()), "{} is not in CODES", e.code());
        }
        let remote = |code: &str| Error::from(SyncError::Remote { code: code.into(), message: String::new() }).code();
        assert_eq!(remote("FRAME_TOO_LARGE"), "FRAME_TOO_LARGE");
        assert_eq!(remote("SYNC_PROTOCOL"), "SYNC_PROTOCOL");
        assert_eq!(remote("made up"), "SYNC_REFUSED");
        assert_eq!(remote("SYNC_TOKEN_EXPIRED"), "SYNC_TOKEN_EXPIRED");
    }

    /// The `ErrorCode` union of js/index.d.ts lists exactly the codes a JS `Error` can
    /// carry: every code here, and the two the JS wrapper makes before the engine loads.
    #[test]
    fn the_typescript_error_codes_are_these() {
        let dts = include_str!("../js/index.d.ts");
        let start = dts.find("export type ErrorCode =").expect("ErrorCode in index.d.ts");
        // One `| 'CODE'` per line, between comments; the last ends with `;`.
        let mut declared = Vec::new();
        for line in dts[start..].lines().skip(1).map(str::trim) {
            let Some(code) = line.strip_prefix("| '") else { continue };
            declared.push(code.trim_end_matches(';').strip_suffix('\'').expect("| 'CODE'"));
            if line.ends_with(';') {
                break;
            }
        }
        declared.sort();
        let mut want: Vec<&str> = CODES.iter().copied().chain(["WASM_LOAD_FAILED", "UNSUPPORTED_ENVIRONMENT"]).collect();
        want.sort();
        assert_eq!(declared, want);
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
