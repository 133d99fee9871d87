//! DESIGN §9's last scenario: five replicas, random writes, random partitions, capped and
//! interrupted passes in random directions — after healing, all converge to identical
//! documents, equal to merging every write ever made (no acknowledged write lost).

#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;

use futures::executor::block_on;
use proptest::prelude::*;
use serde_json::{json, Value};
use tidemark::memory::MemoryStore;
use tidemark::merge::DocState;
use tidemark::store::Store;
use tidemark::sync::pass::{self, Limits};
use tidemark::sync::transport::pipe;
use tidemark::{Replica, Schema, Write};

fn schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "indexes": {"byA": "a"}}}})).unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sync(s: &Replica<MemoryStore>, r: &Replica<MemoryStore>, limits: Limits, cut: Option<usize>) -> Option<bool> {
    let (mut a, mut b) = pipe();
    a.cut_after = cut;
    let session = tidemark::sync::peer::new_session();
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let (x, y) = block_on(futures::future::join(
        pass::send(s, &mut a, &rid, &session, limits, &mut |_| {}),
        pass::receive(r, &mut b, &sid, &session, &mut |_| {}),
    ));
    match (x, y) {
        (Ok(rep), Ok(_)) => Some(rep.capped),
        _ => None,
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed | 1);
    let replicas: Vec<Replica<MemoryStore>> = (0..5)
        .map(|i| block_on(Replica::open(MemoryStore::new(), schema(), Box::new(move || 1_000 + i * 7))).unwrap())
        .collect();
    for step in 0..300 {
        let who = rng.below(5) as usize;
        if rng.below(3) > 0 {
            let id = format!("d{}", rng.below(12));
            let w = match rng.below(4) {
                0 => Write::Delete { collection: "docs".into(), id },
                1 => Write::Patch { collection: "docs".into(), id, fields: json!({"b.x": step, "a": rng.below(4)}).as_object().unwrap().clone() },
                _ => Write::Put { collection: "docs".into(), doc: json!({"id": id, "a": rng.below(4), "b": {"y": step}}).as_object().unwrap().clone() },
            };
            // Patches of documents this replica does not have are refused, which is fine.
            let _ = block_on(replicas[who].write(vec![w]));
        } else {
            // A pass between a random pair: small caps, sometimes cut mid-way. Replicas 3
            // and 4 are partitioned from 0 and 1 for the first half.
            let to = rng.below(5) as usize;
            let partitioned = step < 150 && ((who < 2 && to >= 3) || (who >= 3 && to < 2));
            if to != who && !partitioned {
                let cut = (rng.below(5) == 0).then(|| rng.below(6) as usize);
                let limits = Limits { per_diff: 1 + rng.below(4) as usize, max_diffs: 1 + rng.below(3) as usize };
                sync(&replicas[who], &replicas[to], limits, cut);
            }
        }
    }
    // Heal: a few rounds of complete passes in a ring, both ways.
    let full = Limits { per_diff: 7, max_diffs: 2 };
    for _ in 0..4 {
        for i in 0..5 {
            for j in [(i + 1) % 5, (i + 4) % 5] {
                while sync(&replicas[i], &replicas[j], full, None) == Some(true) {}
            }
        }
    }
    // Reference: every op ever logged anywhere by its writer, merged in one place.
    let mut reference: BTreeMap<String, DocState> = BTreeMap::new();
    for r in &replicas {
        for row in block_on(r.store().rows_after(0, usize::MAX)).unwrap() {
            if row.from.is_none() {
                reference.entry(row.op.id.clone()).or_default().apply(&row.op);
            }
        }
    }
    let expected: Vec<Value> = reference.iter().filter_map(|(id, st)| st.materialize("id", id)).map(Value::Object).collect();
    let first = replicas[0].store().dump("docs");
    for r in &replicas {
        let dump = r.store().dump("docs");
        assert_eq!(serde_json::to_string(&dump).unwrap(), serde_json::to_string(&first).unwrap(), "seed {seed}: replicas differ");
        let docs: Vec<Value> = block_on(r.query("docs", &json!({}))).unwrap().into_iter().map(Value::Object).collect();
        assert_eq!(docs, expected, "seed {seed}: a write was lost or resurrected");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn five_replicas_converge(seed in any::<u64>()) {
        run(seed);
    }
}
