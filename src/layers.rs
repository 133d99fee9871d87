//! A document's *layers*: one merge state per schema version it was written under
//! (DESIGN §6), and how migration output is recognised among them.
//!
//! Ops of version v merge into layer v only. The view an app reads is computed from the
//! layers by `migrate::views`; storing the layers (not just the view) is what lets a late
//! op of an older version land where it belongs and the document be migrated forward again.
//!
//! Migration output is written as ops stamped `(V, wall 0, node "~m…")`: after every op of
//! older versions and before any real write of V. Replicas that can migrate recompute it
//! and ignore received migration output (`strip_migrations`); relays keep it, so the
//! schema-agnostic server holds the migrated state too.

use std::collections::BTreeMap;


use crate::clock::Stamp;
use crate::merge::{DocState, Merged, ROOT};
use crate::op::Op;

/// Node prefix of the stamps of migration output.
pub const MIGRATION_NODE: &str = "~m";

/// Whether a stamp marks migration output.
pub fn is_migration(ts: &Stamp) -> bool {
    ts.wall == 0 && ts.node.starts_with(MIGRATION_NODE)
}

/// A document's layers, one merge state per schema version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layers(pub BTreeMap<u32, DocState>);

impl Layers {
    /// A stored record's layers: those of other versions (`others`) plus `top`, the one of
    /// version `v`.
    pub fn of(v: u32, top: DocState, others: &BTreeMap<u32, DocState>) -> Layers {
        let mut l = others.clone();
        if !top.stamps.is_empty() {
            l.insert(v, top);
        }
        Layers(l)
    }

    /// Whether the layer of version `v` carries migration output (the document was
    /// migrated into `v` and its view is that layer materialized).
    pub fn migrated_into(&self, v: u32) -> bool {
        self.0.get(&v).and_then(|l| l.stamps.get(ROOT)).is_some_and(is_migration)
    }

    /// Merges an op into the layer of its version. Returns whether anything changed.
    pub fn apply(&mut self, op: &Op) -> bool {
        self.0.entry(op.schema_version).or_default().apply(op)
    }

    /// Merges another replica's layers (a snapshot) and returns the registers that
    /// changed, per version. `skip_migrations` drops migration output (replicas that
    /// can migrate compute it themselves).
    pub fn merge(&mut self, other: &Layers, skip_migrations: bool) -> Vec<(u32, Merged)> {
        let mut out = Vec::new();
        for (v, theirs) in &other.0 {
            let mut theirs = theirs.clone();
            if skip_migrations {
                strip_migrations(&mut theirs);
                if theirs.stamps.is_empty() {
                    continue;
                }
            }
            let changed = self.0.entry(*v).or_default().merge_state(&theirs);
            if !changed.is_empty() {
                out.push((*v, changed));
            }
        }
        out
    }

    /// The newest stamp among layers below `version`.
    pub fn newest_below(&self, version: u32) -> Option<Stamp> {
        self.0.range(..version).filter_map(|(_, l)| l.newest().cloned()).max()
    }
}

/// Removes migration output from a layer, keeping the real registers above it.
pub fn strip_migrations(state: &mut DocState) {
    if state.stamps.get(ROOT).is_some_and(is_migration) {
        // A migration root only ever sits under newer real registers of its layer, which
        // stay valid without it; without the root the layer's own doc is just those.
        let regs: Vec<_> = state.registers().into_iter().filter(|(_, s, _)| !is_migration(s)).collect();
        let mut fresh = DocState::default();
        for (p, s, v) in regs {
            fresh.apply_register(&p, &s, v);
        }
        fresh.conflicts = std::mem::take(&mut state.conflicts);
        *state = fresh;
    }
}
