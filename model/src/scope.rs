//! How big a world the checker explores: replicas, writes, passes, caps and the budget of
//! faults (backups, restores, clock jumps, duplicated messages). Every bound is what keeps
//! the state space finite; the presets name the scopes the tests and `make verify` use.

/// Bounds of one exhaustive check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Replicas in the world (2 or 3).
    pub replicas: u8,
    /// Writes each replica may make (index = replica).
    pub writes: [u8; 3],
    /// Fields written: field 0 is in collection A, field 1 in collection B.
    pub fields: u8,
    /// A replica whose schema lacks collection B (a browser at an older version): it never
    /// writes field 1 and keeps its registers only to forward them.
    pub unkept: Option<u8>,
    /// Passes started in total (each mints a session).
    pub passes: u8,
    /// Passes in flight at once.
    pub concurrent: u8,
    /// Sessions remembered per peer and direction (the real code keeps 8).
    pub history: u8,
    /// Rows per batch and batches per pass.
    pub per_diff: u8,
    pub max_diffs: u8,
    /// Whether the seed-000 gap rule may choose a snapshot.
    pub snapshots: bool,
    /// Backups taken and restores from them, in total.
    pub backups: u8,
    pub restores: u8,
    /// Wall clocks that may jump far ahead, in total.
    pub jumps: u8,
    /// Messages the transport may duplicate, in total.
    pub dups: u8,
    /// Whether the transport may deliver a pass's messages out of order.
    pub reorder: bool,
}

impl Scope {
    const BASE: Scope = Scope {
        replicas: 2,
        writes: [1, 1, 0],
        fields: 1,
        unkept: None,
        passes: 3,
        concurrent: 1,
        history: 2,
        per_diff: 1,
        max_diffs: 1,
        snapshots: true,
        backups: 0,
        restores: 0,
        jumps: 0,
        dups: 0,
        reorder: false,
    };

    /// Two replicas, two fields, capped passes and snapshots, writes during passes, and a
    /// transport that duplicates and reorders.
    pub const fn pair() -> Scope {
        Scope { writes: [2, 1, 0], fields: 2, passes: 3, dups: 1, reorder: true, ..Scope::BASE }
    }

    /// Two replicas and a restore from a backup.
    pub const fn pair_restore() -> Scope {
        Scope { writes: [2, 1, 0], passes: 3, backups: 1, restores: 1, snapshots: false, ..Scope::BASE }
    }

    /// Two replicas, a restore, and a history of one session per peer.
    pub const fn history() -> Scope {
        Scope { writes: [2, 0, 0], passes: 3, backups: 1, restores: 1, history: 1, snapshots: false, ..Scope::BASE }
    }

    /// A wall clock that jumps to the end of the stamp domain.
    pub const fn skew() -> Scope {
        Scope { writes: [2, 1, 0], passes: 2, jumps: 1, ..Scope::BASE }
    }

    /// Replica 0 lacks collection B; replica 1 writes it.
    pub const fn unkept() -> Scope {
        Scope { writes: [1, 1, 0], fields: 2, unkept: Some(0), passes: 3, backups: 1, restores: 1, ..Scope::BASE }
    }

    /// A transport that duplicates and reorders, over a two-chunk snapshot.
    pub const fn snapshot_transport() -> Scope {
        Scope { writes: [2, 0, 0], fields: 2, passes: 1, dups: 1, reorder: true, ..Scope::BASE }
    }

    /// Three replicas, capped passes, forwarded tables.
    pub const fn trio_capped() -> Scope {
        Scope { replicas: 3, writes: [1, 0, 1], passes: 3, snapshots: false, ..Scope::BASE }
    }

    /// Three replicas, transitive entries and a restore.
    pub const fn trio_restore() -> Scope {
        Scope { replicas: 3, writes: [2, 0, 0], passes: 3, backups: 1, restores: 1, snapshots: false, ..Scope::BASE }
    }

    /// The scopes `cargo test` checks exhaustively, by name.
    pub fn small() -> Vec<(&'static str, Scope)> {
        vec![
            ("pair", Scope::pair()),
            ("pair_restore", Scope::pair_restore()),
            ("history", Scope::history()),
            ("skew", Scope::skew()),
            ("unkept", Scope::unkept()),
            ("snapshot_transport", Scope::snapshot_transport()),
            ("trio_capped", Scope::trio_capped()),
            ("trio_restore", Scope::trio_restore()),
        ]
    }

    /// The larger scopes `make verify` adds: each grows a small one along one axis, or
    /// combines every fault between two replicas.
    pub fn large() -> Vec<(&'static str, Scope)> {
        vec![
            ("pair_faults", Scope { writes: [1, 1, 0], fields: 2, passes: 3, backups: 1, restores: 1, jumps: 1, dups: 1, reorder: true, ..Scope::BASE }),
            ("pair_5_passes", Scope { passes: 5, ..Scope::pair() }),
            ("pair_restore_4_passes", Scope { passes: 4, ..Scope::pair_restore() }),
            ("trio_unkept", Scope { replicas: 3, ..Scope::unkept() }),
            ("trio_3_writers", Scope { writes: [1, 1, 1], passes: 4, ..Scope::trio_capped() }),
            ("trio_2_concurrent", Scope { concurrent: 2, passes: 4, ..Scope::trio_capped() }),
            ("trio_restore_4_passes", Scope { passes: 4, ..Scope::trio_restore() }),
        ]
    }

    /// Total writes in the world.
    pub fn total_writes(&self) -> u8 {
        self.writes.iter().take(self.replicas as usize).sum()
    }

    /// Whether replica `r` keeps (and may write) `field`.
    pub fn keeps(&self, r: u8, field: u8) -> bool {
        !(field == 1 && self.unkept == Some(r))
    }
}
