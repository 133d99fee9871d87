//! The protocol rules the model can switch off, one boolean each. `Rules::all()` is the
//! protocol of DESIGN §5; every mutation below turns exactly one rule off, and says which
//! property the checker must then break and in which scope it looks (mutation tests and
//! `verify` run them all).

use crate::scope::Scope;

/// One boolean per protocol rule; all `true` is the real protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rules {
    /// A received stamp more than `maxClockSkew` ahead of the receiver's wall clock is
    /// refused before anything is stored (bug (a) of issue 14 without it).
    pub clock_skew_check: bool,
    /// A snapshot carries every register it claims to cover, also those of collections the
    /// sender's own schema does not keep (bug (b) of issue 14 without it).
    pub snapshot_carries_unkept: bool,
    /// The receiver moves `incoming[S]` in the same step (transaction) as the batch it
    /// covers. Off: it merges the rows and acks them, and records the point in a later step.
    pub point_in_batch_tx: bool,
    /// The same rule the other way round. Off: the receiver records the point first and
    /// merges the rows in a later step (a backup can catch the state in between).
    pub point_not_before_rows: bool,
    /// A stale batch (every row already known, echoed or dominated) still advances the point.
    pub stale_batch_advances: bool,
    /// The sender's `incoming` table is forwarded (and accepted) only after a complete pass.
    pub table_only_when_complete: bool,
    /// A forwarded table is max-merged into the receiver's records (added as transitive
    /// entries). Off: an entry replaces the receiver's record of that replica.
    pub table_max_merges: bool,
    /// A full session history evicts the entry noted first. Off: it evicts the entry with
    /// the lowest row, as src/sync/peer.rs does — which can be the entry just noted.
    pub history_evicts_oldest: bool,
    /// A transitive entry fast-forwards a pass only if the origin still remembers its session.
    pub fast_forward_session_check: bool,
    /// The receiver's point is the newest entry whose session the sender still remembers
    /// (seed 001). Off: the receiver answers its newest direct entry, remembered or not.
    pub session_checked_point: bool,
    /// Rows are skipped (only covered) when the receiver proves it holds them with its
    /// per-origin marks. Off: the echo heuristic of src/sync/pass.rs — skip rows the receiver
    /// originated or sent, unless its history shows it forgot a session ("continuous").
    pub echo_by_proof: bool,
    /// A replica restored from a backup writes under a fresh origin id (a new incarnation),
    /// so (origin, originRow) and stamps name one op only. Off: it keeps writing as before.
    pub restore_mints_origin: bool,
    /// Snapshot chunks carry their number; the receiver refuses one out of order and acks
    /// the number. Off: chunks are unnumbered and every ack carries the pass start (as in
    /// src/sync/pass.rs), so a duplicated chunk's ack passes for the next chunk's.
    pub chunks_numbered: bool,
    /// The browser's open-time upgrade holds a lock that fences other tabs' writes while it
    /// copies the op log and flips the live pointer (bug (c) of issue 14 without it).
    pub upgrade_fence: bool,
}

impl Rules {
    /// The protocol as designed.
    pub const fn all() -> Rules {
        Rules {
            clock_skew_check: true,
            snapshot_carries_unkept: true,
            point_in_batch_tx: true,
            point_not_before_rows: true,
            stale_batch_advances: true,
            table_only_when_complete: true,
            table_max_merges: true,
            history_evicts_oldest: true,
            fast_forward_session_check: true,
            session_checked_point: true,
            echo_by_proof: true,
            restore_mints_origin: true,
            chunks_numbered: true,
            upgrade_fence: true,
        }
    }
}

/// Which model a mutation runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The pass protocol (`actions::ProtocolModel`) in the given scope.
    Protocol(Scope),
    /// The two-tab upgrade (`upgrade::UpgradeModel`).
    Upgrade,
}

/// One rule switched off, the property it must break, and where the checker looks.
#[derive(Clone, Copy, Debug)]
pub struct Mutation {
    pub name: &'static str,
    pub rules: Rules,
    pub breaks: &'static str,
    pub target: Target,
}

macro_rules! off {
    ($field:ident) => {{
        let mut r = Rules::all();
        r.$field = false;
        r
    }};
}

/// Every mutation, in the order the README lists them.
pub fn all() -> Vec<Mutation> {
    use crate::properties::names::*;
    vec![
        Mutation { name: "(a) no maxClockSkew check", rules: off!(clock_skew_check), breaks: WRITE_WINS, target: Target::Protocol(Scope::skew()) },
        Mutation { name: "(b) snapshot omits unkept collections", rules: off!(snapshot_carries_unkept), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::unkept()) },
        Mutation { name: "(c) upgrade without the write fence", rules: off!(upgrade_fence), breaks: crate::upgrade::NO_WRITE_LOST, target: Target::Upgrade },
        Mutation { name: "point recorded after the batch's transaction", rules: off!(point_in_batch_tx), breaks: PASSES_PROGRESS, target: Target::Protocol(Scope::pair()) },
        Mutation { name: "point recorded before the batch's rows", rules: off!(point_not_before_rows), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::pair_restore()) },
        Mutation { name: "stale batch does not advance the point", rules: off!(stale_batch_advances), breaks: PASSES_PROGRESS, target: Target::Protocol(Scope::pair()) },
        Mutation { name: "table forwarded after a capped pass", rules: off!(table_only_when_complete), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::trio_capped()) },
        Mutation { name: "table replaces instead of max-merging", rules: off!(table_max_merges), breaks: POINTS_FORWARD, target: Target::Protocol(Scope::trio_capped()) },
        Mutation { name: "history evicts the lowest row (src/sync/peer.rs)", rules: off!(history_evicts_oldest), breaks: PASSES_PROGRESS, target: Target::Protocol(Scope::history()) },
        Mutation { name: "fast-forward without the session check", rules: off!(fast_forward_session_check), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::trio_restore()) },
        Mutation { name: "point not checked against the sender's sessions", rules: off!(session_checked_point), breaks: CONVERGE, target: Target::Protocol(Scope::pair_restore()) },
        Mutation { name: "echo suppression by heuristic (src/sync/pass.rs)", rules: off!(echo_by_proof), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::trio_restore()) },
        Mutation { name: "restore keeps the old origin id", rules: off!(restore_mints_origin), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::pair_restore()) },
        Mutation { name: "snapshot chunks unnumbered (src/sync/pass.rs)", rules: off!(chunks_numbered), breaks: NO_POINT_PASSES, target: Target::Protocol(Scope::snapshot_transport()) },
    ]
}
