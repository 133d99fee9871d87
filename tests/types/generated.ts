// The hand-written declarations in js/index.d.ts against the TypeScript that ts-rs
// generates from the Rust types (src/ts_types.rs, written by `cargo test`): each pair must
// be assignable both ways, so a field added, renamed, retyped or made optional on one side
// fails this compile. Fields the JS wrapper adds itself are set aside.
import type { PassReport, Progress, ResetReport, Status, SyncReport } from 'tidemark';
import type { PassReport as RustPassReport } from './generated/PassReport';
import type { Progress as RustProgress } from './generated/Progress';
import type { ResetReport as RustResetReport } from './generated/ResetReport';
import type { RoundReport as RustRoundReport } from './generated/RoundReport';
import type { Status as RustStatus } from './generated/Status';

/** `true` when A and B are assignable to each other, else a type naming the pair. */
type Same<A, B, Name extends string> = [A] extends [B]
  ? ([B] extends [A] ? true : `${Name}: the Rust type is not assignable to index.d.ts's`)
  : `${Name}: index.d.ts's type is not assignable to the Rust type`;

export const reports: true = true as Same<SyncReport, RustRoundReport, 'SyncReport vs RoundReport'>;
export const passes: true = true as Same<PassReport, RustPassReport, 'PassReport'>;
export const resets: true = true as Same<ResetReport, RustResetReport, 'ResetReport'>;
// `direction` is added by the wasm layer's event emitter (src/wasm/client.rs).
export const progress: true = true as Same<Omit<Progress, 'direction'>, RustProgress, 'Progress'>;
// `leader` is added by the JS wrapper (js/replica.js: which tab runs live sync).
export const status: true = true as Same<Omit<Status, 'leader'>, RustStatus, 'Status'>;
