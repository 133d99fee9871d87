//! A document's *layers*: one merge state per schema version it was written under
//! (DESIGN §6), and how migration output is recognised among them.
//!
//! Ops of version v merge into layer v only. The view an app reads is computed from the
//! layers by `migrate::views`; storing the layers (not just the view) is what lets a late
//! op of an older version land where it belongs and the document be migrated forward again.
//!
//! Migration output is written as ops stamped `(V, wall 0, node "~m…")`: after every op of
//! older versions and before any real write of V. Replicas that can migrate recompute the
//! output of their version and older and ignore received output (`strip_migrations`),
//! except their own output under a later stamp (`Layers::adopts`); relays keep all of it,
//! and so does every replica for versions newer than its own (`Output`), so the
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

/// The part of a migration stamp that names its output (the hash after the last `.`):
/// two migration stamps with the same one carry the same output.
pub fn migration_output(ts: &Stamp) -> &str {
    ts.node.rsplit_once('.').map_or("", |(_, hash)| hash)
}

/// Which received migration output a merge of layers takes in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output {
    /// All of it: a relay keeps every layer as it is.
    All,
    /// A replica at schema `version` computes the output of versions up to its own and
    /// takes in only what a document adopts (`Layers::adopts`); output of newer versions
    /// it keeps like any newer op, for it cannot compute that (and it forwards it: a
    /// version-1 client dropped a version-2 client's output while its table said it had
    /// it, so the relay it passed that table to never got it — seed 5989).
    ///
    /// `held`: the output at `version` too, kept in that layer only as the output a
    /// document about to be migrated again is built on (its `held` stamp, see
    /// `migrate`): a reset migrates every such document again, and its new output must
    /// order after what the relays and this replica hold, or they keep that (seed 11586).
    /// The view never reads it (`migrate::Forward` strips it).
    Computed { version: u32, held: bool },
}

impl Output {
    /// Whether received migration output of version `v`, stamped `ts`, merges into a
    /// document's `layers` (`None`: a document this replica does not keep).
    pub fn takes(self, layers: Option<&Layers>, v: u32, ts: &Stamp) -> bool {
        match self {
            Output::All => true,
            Output::Computed { version, .. } if v > version => true,
            Output::Computed { version, held: true } if v == version => true,
            Output::Computed { .. } => layers.is_some_and(|l| l.adopts(v, ts)),
        }
    }
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
        self.migration_root(v).is_some()
    }

    /// The migration output the layer of version `v` is built on, if it was migrated into.
    pub fn migration_root(&self, v: u32) -> Option<&Stamp> {
        self.0.get(&v).and_then(|l| l.stamps.get(ROOT)).filter(|s| is_migration(s))
    }

    /// Whether received migration output stamped `ts` at version `v` is taken in by a
    /// replica that migrates (which otherwise ignores received output and computes its
    /// own): only when it carries the very output this document's layer is built on, under
    /// a later stamp. Taking it in changes no value, only the stamp, so every replica that
    /// computed that output ends up with the stamp the relays keep (the highest one).
    pub fn adopts(&self, v: u32, ts: &Stamp) -> bool {
        is_migration(ts) && self.migration_root(v).is_some_and(|root| root < ts && migration_output(root) == migration_output(ts))
    }

    /// Merges an op into the layer of its version. Returns whether anything changed.
    pub fn apply(&mut self, op: &Op) -> bool {
        self.0.entry(op.schema_version).or_default().apply(op)
    }

    /// Merges another replica's layers (a snapshot) and returns the registers that
    /// changed, per version. `output` says which received migration output is taken in.
    pub fn merge(&mut self, other: &Layers, output: Output) -> Vec<(u32, Merged)> {
        self.merge_owned(other.clone(), output)
    }

    /// `merge`, taking `other`'s layers: one this document has no layer of is moved in
    /// whole when it is a single root register (a put or a delete, what nearly every
    /// snapshot document is), rather than rebuilt register by register — the same state,
    /// without copying the document twice (a reset merges 10,000 of them).
    pub fn merge_owned(&mut self, other: Layers, output: Output) -> Vec<(u32, Merged)> {
        let mut out = Vec::new();
        for (v, mut theirs) in other.0 {
            if theirs.stamps.get(ROOT).is_some_and(|ts| is_migration(ts) && !output.takes(Some(self), v, ts)) {
                strip_migrations(&mut theirs);
                if theirs.stamps.is_empty() {
                    continue;
                }
            }
            let changed = match self.0.get_mut(&v) {
                None if theirs.is_single_root() => {
                    let changed = theirs.everything();
                    self.0.insert(v, theirs);
                    changed
                }
                None => self.0.entry(v).or_default().merge_state(&theirs),
                Some(mine) => mine.merge_state(&theirs),
            };
            if !changed.is_empty() {
                out.push((v, changed));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn stamp(wall: u64) -> Stamp {
        Stamp { version: 1, wall, counter: 0, node: "a".into() }
    }

    /// The state merging `other` register by register into an empty layer gives, and what
    /// that merge reports as changed: what `merge_owned`'s move must equal.
    fn by_registers(other: &DocState) -> (DocState, Merged) {
        let mut state = DocState::default();
        let changed = state.merge_state(other);
        (state, changed)
    }

    #[test]
    fn a_single_root_register_moved_in_is_the_state_merging_it_register_by_register_gives() {
        let doc = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let put = DocState { doc: doc(json!({"a": 1, "b": {"c": [1, 2]}})), stamps: [(ROOT.to_string(), stamp(5))].into(), deleted: false, conflicts: BTreeMap::new() };
        let delete = DocState { doc: Map::new(), stamps: [(ROOT.to_string(), stamp(6))].into(), deleted: true, conflicts: BTreeMap::new() };
        let patched = DocState { doc: doc(json!({"a": 2, "b": 1})), stamps: [(ROOT.to_string(), stamp(5)), ("a".to_string(), stamp(7))].into(), deleted: false, conflicts: BTreeMap::new() };
        // Fields under a delete are not what a delete register gives: not moved.
        let odd = DocState { doc: doc(json!({"a": 1})), stamps: [(ROOT.to_string(), stamp(6))].into(), deleted: true, conflicts: BTreeMap::new() };
        assert!(put.is_single_root() && delete.is_single_root());
        assert!(!patched.is_single_root() && !odd.is_single_root());
        for theirs in [put, delete, patched, odd] {
            let (expected, changed) = by_registers(&theirs);
            let mut layers = Layers::default();
            let got = layers.merge_owned(Layers([(1, theirs.clone())].into()), Output::All);
            assert_eq!(layers.0.get(&1), Some(&expected), "{theirs:?}");
            assert_eq!(got, vec![(1, changed)], "{theirs:?}");
        }
    }
}
