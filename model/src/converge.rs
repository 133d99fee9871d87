//! Property 4, quiescent replicas converge, checked as a state predicate: from the state,
//! cut every pass in flight, let time pass (every wall clock catches up with the one that
//! jumped, so no stamp is too far ahead any more), then run rounds of passes between every
//! ordered pair, each repeated until it completes, delivering messages in order, with the
//! same step functions the model explores. The documents must then be identical and hold
//! every acknowledged write not destroyed by a restore.
//!
//! Cutting the passes first reaches a state the checker explores anyway (each cut is an
//! `Abort` action), so the predicate is only evaluated where no pass is in flight.

use crate::actions::ProtocolModel;
use crate::clock;
use crate::pass::{self, Flow};
use crate::state::*;

/// Rounds of all-pairs passes before giving up, and passes per pair per round.
const ROUNDS: usize = 4;
const PASSES_PER_PAIR: usize = 24;

pub fn converges(m: &ProtocolModel, st: &State) -> bool {
    !st.passes.is_empty() || sync_everyone(m, st).is_ok()
}

/// Runs the fair schedule from `st`; the converged state, or why it did not converge.
pub fn sync_everyone(m: &ProtocolModel, st: &State) -> Result<State, String> {
    let mut w = st.clone();
    w.passes.clear();
    for n in &mut w.nodes {
        n.now = clock::MAX_WALL;
    }
    let n = w.nodes.len() as Rid;
    let docs = |w: &State| w.nodes.iter().map(|n| n.store.doc).collect::<Vec<_>>();
    let mut settled = false;
    for _ in 0..ROUNDS {
        let before = docs(&w);
        for s in 0..n {
            for r in (0..n).filter(|&r| r != s) {
                complete_pass(m, &mut w, s, r)?;
            }
        }
        if docs(&w) == before {
            settled = true;
            break;
        }
    }
    if !settled {
        return Err(format!("documents still changing after {ROUNDS} rounds"));
    }
    let first = w.nodes[0].store.doc;
    if let Some(i) = w.nodes.iter().position(|n| n.store.doc != first) {
        return Err(format!("replica {i} ends with {:?}, replica 0 with {first:?}", w.nodes[i].store.doc));
    }
    if let Some(a) = st.acked.iter().find(|a| !a.exempt && !w.nodes[0].store.holds(&a.op)) {
        return Err(format!("acknowledged write {:?} is gone after converging", a.op));
    }
    Ok(w)
}

/// Passes from `s` to `r` until one completes.
fn complete_pass(m: &ProtocolModel, w: &mut State, s: Rid, r: Rid) -> Result<(), String> {
    for _ in 0..PASSES_PER_PAIR {
        pass::start(w, s, r);
        loop {
            let idx = w.pass(s, r).expect("the pass is in flight");
            if matches!(w.passes[idx].rcv, Receiver::Pending { .. }) {
                pass::finish_batch(w, m.ctx(), idx);
                continue;
            }
            match pass::deliver(w, m.ctx(), idx, 0) {
                Flow::Continue => {}
                Flow::Finished { complete: true } => return Ok(()),
                Flow::Finished { complete: false } => break,
                Flow::Aborted => return Err(format!("pass {s}→{r} aborted on an in-order transport")),
            }
        }
    }
    Err(format!("pass {s}→{r} still capped after {PASSES_PER_PAIR} passes"))
}
