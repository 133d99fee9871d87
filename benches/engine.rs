//! Native engine benchmarks (criterion): how fast the merge rules and snapshot
//! materialization run, without IndexedDB or wasm in the way.
//!
//! `make bench` runs them with a short measurement time and copies the numbers into
//! bench/results.json (see bench/run.mjs). By hand: `cargo bench --bench engine`.
//!
//! - `merge/apply_10k_ops`: 10,000 realistic ops (puts of ~200-byte documents, patches of
//!   one or two fields, nested-path patches, rewrites, deletes) from three writers, partly
//!   out of order, merged with `DocState::apply` into 1,000 document states.
//! - `snapshot/merge_state_10k_into_empty`: a fresh replica merging 10,000 snapshot
//!   document states (`DocState::merge_state`).
//! - `snapshot/merge_state_10k_into_existing`: the same snapshot merged into a replica
//!   that already holds every document, half of them with a newer local patch.
//! - `snapshot/stored_doc_10k`: `rebuild::stored_doc` for 10,000 states (materialized
//!   document, primary key, the two index keys `kind` and `[kind, n]`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Map, Value};
use tidemark::clock::{Clock, Stamp};
use tidemark::merge::DocState;
use tidemark::op::{Kind, Op};
use tidemark::rebuild::stored_doc;
use tidemark::Schema;

const VERSION: u32 = 1;

/// A small deterministic PRNG (xorshift64*), so every run merges the same ops.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The browser benchmark's document (bench/src/workload.js): ~200 bytes of JSON.
fn doc(i: u64) -> Map<String, Value> {
    let v = json!({
        "id": format!("doc-{i:05}"),
        "kind": format!("k{}", i % 5),
        "n": (i * 7919) % 1000,
        "title": format!("Lorem ipsum dolor sit amet {i}"),
        "body": "consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore",
        "done": i % 2 == 0,
        "createdAt": 1_700_000_000_000u64 + i,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// One stamp from writer `node` at wall time `wall` (through the engine's own clock, so
/// the stamp layout is whatever the engine uses).
fn stamp(node: &str, wall: u64) -> Stamp {
    Clock::new(node, VERSION, None).tick(wall).expect("a stamp within the encodable range")
}

fn op(node: &str, wall: u64, id: &str, kind: Kind, fields: Option<Map<String, Value>>) -> Op {
    Op {
        origin: node.to_string(),
        origin_row: wall,
        ts: stamp(node, wall),
        schema_version: VERSION,
        collection: "docs".into(),
        id: id.to_string(),
        kind,
        fields,
        seen: None,
        resolution: false,
    }
}

fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// 10,000 ops over 1,000 documents: each document is created by a put, then changed nine
/// times by three writers (70% patches of top-level fields, 10% nested-path patches, 15%
/// whole rewrites, 5% deletes). Ops arrive shuffled within windows of 64, so some of them
/// lose to newer ones already merged — as after a sync.
fn realistic_ops() -> (Vec<String>, Vec<(usize, Op)>) {
    const DOCS: u64 = 1_000;
    const PER_DOC: u64 = 10;
    let nodes = ["a1b2c3d4e5f60708", "1122334455667788", "99aabbccddeeff00"];
    let mut rng = Rng(0x7d1e_5eed_0bad_cafe);
    let ids: Vec<String> = (0..DOCS).map(|i| format!("doc-{i:05}")).collect();
    let mut ops = Vec::with_capacity((DOCS * PER_DOC) as usize);
    let mut wall = 1_700_000_000_000u64;
    for round in 0..PER_DOC {
        for d in 0..DOCS {
            wall += 1;
            let id = &ids[d as usize];
            let node = nodes[rng.below(3) as usize];
            let o = if round == 0 {
                op(node, wall, id, Kind::Put, Some(doc(d)))
            } else {
                match rng.below(100) {
                    0..=69 => {
                        let f = match rng.below(3) {
                            0 => fields(&[("title", json!(format!("Edited {round} {d}")))]),
                            1 => fields(&[("n", json!(rng.below(1000))), ("done", json!(rng.below(2) == 0))]),
                            _ => fields(&[("kind", json!(format!("k{}", rng.below(5))))]),
                        };
                        op(node, wall, id, Kind::Patch, Some(f))
                    }
                    70..=79 => op(node, wall, id, Kind::Patch, Some(fields(&[("meta.by", json!(node)), ("meta.at", json!(wall))]))),
                    80..=94 => {
                        // A rewrite: new field values, the same primary key.
                        let mut m = doc(d + round * DOCS);
                        m.insert("id".into(), json!(id));
                        op(node, wall, id, Kind::Put, Some(m))
                    }
                    _ => op(node, wall, id, Kind::Delete, None),
                }
            };
            ops.push((d as usize, o));
        }
    }
    // Shuffle within windows: a replica sees most ops in order, some late.
    for chunk in ops.chunks_mut(64) {
        for i in (1..chunk.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            chunk.swap(i, j);
        }
    }
    (ids, ops)
}

/// 10,000 snapshot states as a server holds them: each document put by one writer and
/// patched by another.
fn snapshot_states() -> Vec<(String, DocState)> {
    (0..10_000u64)
        .map(|i| {
            let id = format!("doc-{i:05}");
            let mut st = DocState::default();
            st.apply(&op("a1b2c3d4e5f60708", 1_700_000_000_000 + i, &id, Kind::Put, Some(doc(i))));
            st.apply(&op("1122334455667788", 1_700_000_100_000 + i, &id, Kind::Patch, Some(fields(&[("title", json!(format!("Edited {i}")))]))));
            (id, st)
        })
        .collect()
}

/// The receiving replica's own states for the same documents: the original put, and for
/// every other document a local patch newer than anything in the snapshot.
fn local_states() -> Vec<DocState> {
    (0..10_000u64)
        .map(|i| {
            let id = format!("doc-{i:05}");
            let mut st = DocState::default();
            st.apply(&op("a1b2c3d4e5f60708", 1_700_000_000_000 + i, &id, Kind::Put, Some(doc(i))));
            if i % 2 == 0 {
                st.apply(&op("ffeeddccbbaa9988", 1_700_000_200_000 + i, &id, Kind::Patch, Some(fields(&[("done", json!(true))]))));
            }
            st
        })
        .collect()
}

fn schema() -> Schema {
    Schema::from_json(json!({"version": VERSION, "collections": {"docs": {"primaryKey": "id",
        "indexes": {"byKind": "kind", "byKindN": ["kind", "n"]}}}}))
    .expect("valid schema")
}

fn merge(c: &mut Criterion) {
    let (ids, ops) = realistic_ops();
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(ops.len() as u64));
    g.bench_function("apply_10k_ops", |b| {
        b.iter_batched_ref(
            || vec![DocState::default(); ids.len()],
            |states| {
                let mut changed = 0usize;
                for (d, o) in &ops {
                    changed += states[*d].apply(o) as usize;
                }
                black_box(changed)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let snap = snapshot_states();
    let local = local_states();
    let schema = schema();
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements(snap.len() as u64));
    g.bench_function("merge_state_10k_into_empty", |b| {
        b.iter_batched_ref(
            || vec![DocState::default(); snap.len()],
            |states| {
                let mut regs = 0usize;
                for (st, (_, s)) in states.iter_mut().zip(&snap) {
                    regs += st.merge_state(s).len();
                }
                black_box(regs)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("merge_state_10k_into_existing", |b| {
        b.iter_batched_ref(
            || local.clone(),
            |states| {
                let mut regs = 0usize;
                for (st, (_, s)) in states.iter_mut().zip(&snap) {
                    regs += st.merge_state(s).len();
                }
                black_box(regs)
            },
            BatchSize::LargeInput,
        )
    });
    // `stored_doc` takes each state by value (it moves into the stored document): the
    // copies are made in the setup, outside the timing.
    g.bench_function("stored_doc_10k", |b| {
        b.iter_batched(
            || snap.clone(),
            |states| {
                let mut n = 0usize;
                for (id, s) in states {
                    n += stored_doc(Some(&schema), "docs", &id, s, VERSION).index_keys.len();
                }
                black_box(n)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    // Short runs: `make bench` should stay well under ten minutes on a shared 2-core box.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! { name = engine; config = config(); targets = merge, snapshot }
criterion_main!(engine);
