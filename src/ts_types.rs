//! TypeScript for the Rust types the JS API hands out — sync reports, progress, status —
//! generated with `ts-rs` into `tests/types/generated/` on every `cargo test`, so the
//! hand-written `js/index.d.ts` cannot drift from them: `tests/types/generated.ts` checks
//! each generated type and its `index.d.ts` counterpart are assignable both ways.

use ts_rs::{Config, TS};

#[test]
fn export_js_api_types() {
    // serde writes u64/i64 as JSON numbers, which JS reads as `number`.
    let cfg = Config::new().with_large_int("number").with_out_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/types/generated"));
    crate::sync::session::RoundReport::export_all(&cfg).unwrap();
    crate::sync::Progress::export_all(&cfg).unwrap();
    crate::replica::Status::export_all(&cfg).unwrap();
}
