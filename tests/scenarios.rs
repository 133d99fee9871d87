//! DESIGN §9's protocol scenarios (`tidemark_testkit::scenarios`) over the engine's
//! in-memory store — the same bodies the server runs over SQLite — and the five-replica
//! convergence fuzz over many more seeds.

#![cfg(not(target_arch = "wasm32"))]

use proptest::prelude::*;
use tidemark_testkit::conformance;
use tidemark_testkit::scenarios::{self, Memory};

conformance!(memory, Memory);

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn five_replicas_converge_for_any_seed(seed in any::<u64>()) {
        scenarios::five_replicas_converge(&Memory, seed);
    }
}
