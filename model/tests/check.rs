//! The exhaustive checks `cargo test` runs: every property holds with every rule at each
//! small scope (and the scope really reaches the situations it is for), and every mutation
//! — one rule off — is caught with a counterexample for the property it breaks.

use tidemark_model::check::{self, Summary};
use tidemark_model::properties::names::*;
use tidemark_model::upgrade::{UpgradeModel, EX_UPGRADED, EX_WRITE_AFTER};
use tidemark_model::{mutations, Rules, Scope};

fn report(name: &str, s: &Summary) {
    eprintln!("{name}: {} states ({} unique), depth {}, {:.1} s", s.states, s.unique, s.depth, s.elapsed.as_secs_f64());
}

/// Checks `scope` with every rule: no property fails, at least `min_states` distinct states
/// were explored, and each of `examples` was met.
fn holds(name: &str, scope: Scope, min_states: usize, examples: &[&str]) {
    let s = check::protocol(scope);
    report(name, &s);
    assert!(s.failures.is_empty(), "{name}: with every rule, these properties failed: {:?}", s.failures);
    assert!(s.unique >= min_states, "{name}: only {} states explored", s.unique);
    for e in examples {
        assert!(s.examples.contains(e), "{name}: the scope never reached {e:?} (met {:?})", s.examples);
    }
}

#[test]
fn every_property_holds_with_all_rules_between_two_replicas() {
    holds("pair", Scope::pair(), 50_000, &[EX_SNAPSHOT, EX_CAPPED]);
}

#[test]
fn every_property_holds_with_all_rules_across_a_restore() {
    holds("pair_restore", Scope::pair_restore(), 100_000, &[EX_CAPPED, EX_RESTORE]);
}

#[test]
fn every_property_holds_with_all_rules_with_a_history_of_one_session() {
    holds("history", Scope::history(), 20_000, &[EX_RESTORE]);
}

#[test]
fn every_property_holds_with_all_rules_when_a_clock_jumps() {
    holds("skew", Scope::skew(), 5_000, &[EX_REFUSED, EX_SNAPSHOT]);
}

#[test]
fn every_property_holds_with_all_rules_with_an_unkept_collection() {
    holds("unkept", Scope::unkept(), 100_000, &[EX_SNAPSHOT, EX_RESTORE]);
}

#[test]
fn every_property_holds_with_all_rules_on_a_duplicating_reordering_transport() {
    holds("snapshot_transport", Scope::snapshot_transport(), 500, &[EX_SNAPSHOT]);
}

#[test]
fn every_property_holds_with_all_rules_between_three_replicas() {
    holds("trio_capped", Scope::trio_capped(), 50_000, &[EX_CAPPED, EX_TRANSITIVE]);
}

#[test]
fn every_property_holds_with_all_rules_between_three_replicas_across_a_restore() {
    holds("trio_restore", Scope::trio_restore(), 500_000, &[EX_TRANSITIVE, EX_RESTORE]);
}

#[test]
fn the_fenced_upgrade_loses_no_write_of_another_tab() {
    let s = check::run(UpgradeModel { rules: Rules::all() }, None);
    report("upgrade", &s);
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    assert!(s.examples.contains(EX_UPGRADED) && s.examples.contains(EX_WRITE_AFTER), "{:?}", s.examples);
}

/// Runs the mutation whose name starts with `prefix` and asserts the checker finds a
/// counterexample for the property it breaks.
fn caught(prefix: &str) {
    let m = mutations::all().into_iter().find(|m| m.name.starts_with(prefix)).expect("a mutation by that name");
    let s = check::mutation(&m);
    report(m.name, &s);
    let len = s.failed(m.breaks);
    assert!(len.is_some(), "{}: no counterexample for {:?} in {} states (failures: {:?})", m.name, m.breaks, s.unique, s.failures);
    eprintln!("{}: {} fails after {} steps", m.name, m.breaks, len.unwrap());
}

#[test]
fn mutation_a_without_the_clock_skew_check_a_later_write_loses() {
    caught("(a)");
}

#[test]
fn mutation_b_a_snapshot_omitting_unkept_collections_passes_unmerged_rows() {
    caught("(b)");
}

#[test]
fn mutation_c_an_unfenced_upgrade_loses_another_tabs_write() {
    caught("(c)");
}

#[test]
fn mutation_a_point_recorded_after_its_batch_loses_acknowledged_progress() {
    caught("point recorded after");
}

#[test]
fn mutation_a_point_recorded_before_its_rows_passes_unmerged_rows() {
    caught("point recorded before");
}

#[test]
fn mutation_a_stale_batch_that_does_not_advance_loses_progress() {
    caught("stale batch");
}

#[test]
fn mutation_a_table_forwarded_after_a_capped_pass_passes_unmerged_rows() {
    caught("table forwarded");
}

#[test]
fn mutation_a_table_that_replaces_moves_points_backwards() {
    caught("table replaces");
}

#[test]
fn mutation_the_history_eviction_of_src_sync_loses_progress() {
    caught("history evicts");
}

#[test]
fn mutation_fast_forward_without_the_session_check_passes_unmerged_rows() {
    caught("fast-forward");
}

#[test]
fn mutation_a_point_the_sender_cannot_vouch_for_stops_convergence() {
    caught("point not checked");
}

#[test]
fn mutation_the_echo_heuristic_of_src_sync_passes_unmerged_rows() {
    caught("echo suppression");
}

#[test]
fn mutation_a_restore_that_keeps_its_origin_id_passes_unmerged_rows() {
    caught("restore keeps");
}

#[test]
fn mutation_unnumbered_snapshot_chunks_pass_unmerged_rows() {
    caught("snapshot chunks");
}

#[test]
fn every_mutation_has_a_test() {
    // Each mutation above is looked up by prefix; this keeps the list and the tests in step.
    let prefixes = ["(a)", "(b)", "(c)", "point recorded after", "point recorded before", "stale batch", "table forwarded", "table replaces", "history evicts", "fast-forward", "point not checked", "echo suppression", "restore keeps", "snapshot chunks"];
    let all = mutations::all();
    assert_eq!(all.len(), prefixes.len());
    for m in &all {
        assert_eq!(prefixes.iter().filter(|p| m.name.starts_with(*p)).count(), 1, "{} has no test of its own", m.name);
    }
}
