//! Progress of long work (sync passes, upgrades, resets): how much is done of how much.

/// Rows or documents handled so far, and how many there are in all.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}
