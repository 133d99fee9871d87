//! The deterministic simulation (`tidemark_testkit::sim`) over many seeds.
//!
//! - `TIDEMARK_SEED=<n>`: replay one seed (prints its stats, or the failure and the last
//!   actions before it);
//! - `TIDEMARK_SEEDS=<n>`: how many seeds (default 2000), from `TIDEMARK_SEED_BASE` (0).
//!
//! Seeds run on two threads; every failing seed is printed with the command that
//! reproduces it.

use std::time::Instant;

use tidemark_testkit::sim;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")))
}

fn repro(seed: u64) -> String {
    format!("TIDEMARK_SEED={seed} cargo test -p tidemark-testkit --test simulation -- --nocapture")
}

#[test]
fn simulation_keeps_every_property() {
    if let Some(seed) = env("TIDEMARK_SEED") {
        match sim::run(seed) {
            Ok(r) => println!("seed {seed}: ok, {:?}", r.stats),
            Err(f) => panic!("seed {seed} failed: {f}"),
        }
        return;
    }
    let seeds = env("TIDEMARK_SEEDS").unwrap_or(2000);
    let base = env("TIDEMARK_SEED_BASE").unwrap_or(0);
    let started = Instant::now();
    let threads = 2;
    let results: Vec<(Vec<(u64, String)>, sim::world::Stats)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut failures = Vec::new();
                    let mut total = sim::world::Stats::default();
                    for seed in (base + t..base + seeds).step_by(threads as usize) {
                        match sim::run(seed) {
                            Ok(r) => add(&mut total, &r.stats),
                            Err(f) => {
                                add(&mut total, &f.stats);
                                failures.push((seed, f.to_string()));
                            }
                        }
                    }
                    (failures, total)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a simulation thread")).collect()
    });
    let mut total = sim::world::Stats::default();
    let mut failures = Vec::new();
    for (f, s) in results {
        failures.extend(f);
        add(&mut total, &s);
    }
    failures.sort_by_key(|(seed, _)| *seed);
    println!("{seeds} seeds in {:.1?}: {total:?}", started.elapsed());
    for (seed, f) in &failures {
        println!("seed {seed} FAILED: {f}\n  reproduce: {}\n", repro(*seed));
    }
    assert!(failures.is_empty(), "{} of {seeds} seeds failed; first: seed {} — reproduce with `{}`", failures.len(), failures[0].0, repro(failures[0].0));
    // The runs did what they are for: faults, passes of every kind, restores.
    assert!(total.passes_ok > seeds && total.snapshots > 0 && total.resets > 0 && total.capped > 0, "{total:?}");
    assert!(total.crashes > 0 && total.restores > 0 && total.cuts > 0 && total.acked > seeds, "{total:?}");
}

fn add(t: &mut sim::world::Stats, s: &sim::world::Stats) {
    t.steps += s.steps;
    t.polls += s.polls;
    t.frames += s.frames;
    t.acked += s.acked;
    t.passes_ok += s.passes_ok;
    t.passes_failed += s.passes_failed;
    t.snapshots += s.snapshots;
    t.resets += s.resets;
    t.capped += s.capped;
    t.crashes += s.crashes;
    t.backups += s.backups;
    t.restores += s.restores;
    t.cuts += s.cuts;
    t.lost_by_restore += s.lost_by_restore;
    t.quiesce_rounds += s.quiesce_rounds;
}

/// The same seed replays exactly: same final documents, logs and points.
#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17] {
        let (a, b) = (sim::run(seed), sim::run(seed));
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a.digest, b.digest, "seed {seed} replayed differently"),
            (Err(a), Err(b)) => assert_eq!(a.violation, b.violation, "seed {seed} failed differently"),
            _ => panic!("seed {seed} passed once and failed once"),
        }
    }
}

/// P2 on a duplicating transport (seeds of `make verify`'s 20,000, model/README.md §6
/// item 5): a duplicated snapshot chunk was acked as the next one and, with that next
/// chunk lost, the sender ended the snapshot and the receiver's point passed documents it
/// never merged. Snapshot chunks and their acks are numbered now (`pass::chunk_ack`).
#[test]
fn no_point_passes_a_snapshot_chunk_lost_behind_a_duplicated_one() {
    for seed in [16658, 17251, 18882] {
        if let Err(f) = sim::run(seed) {
            panic!("seed {seed} failed: {f}\n  reproduce: {}", repro(seed));
        }
    }
}

/// P4 (seeds of `make verify`'s 20,000, model/README.md §6 item 6): a late version-1 op
/// older than the newest input of a migration left a relay with stale migration output
/// (14799, 14335; 11586 through a reset), and a version-1 client dropped a version-2
/// client's output it then claimed to have (5989). Unit regressions in
/// `tests/simulation_regressions.rs`.
#[test]
fn quiescent_replicas_converge_after_late_ops_below_a_migrations_newest_input() {
    for seed in [5989, 11586, 14335, 14799] {
        if let Err(f) = sim::run(seed) {
            panic!("seed {seed} failed: {f}\n  reproduce: {}", repro(seed));
        }
    }
}
