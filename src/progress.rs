//! Progress of long work (sync passes, upgrades, resets): what is being done, how much
//! of it is done, of how much.

use serde::Serialize;

/// Which part of the work a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Rows sent or received in diffs.
    Rows,
    /// Snapshot documents sent or received.
    Snapshot,
    /// A reset or upgrade copying the op log into the new generation.
    Copy,
    /// A reset merging the replica's own documents into the new generation.
    Merge,
    /// Documents migrated to the app's schema version.
    Migrate,
    /// The new generation swapped in (0 of 1, then 1 of 1).
    Swap,
}

/// Rows or documents handled so far in `phase`, and how many there are in all.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}
