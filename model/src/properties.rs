//! The properties the checker verifies in every reachable state (issue 14, point 1), and
//! `sometimes` examples that show a scope really reaches the situations that matter.
//! Temporal properties are made state predicates with ghost state the actions keep
//! (`State::acked`, `State::high`, `State::lost_progress`, `Pass::steps`).

use stateright::Property;

use crate::actions::ProtocolModel;
use crate::converge;
use crate::state::*;

/// Property names, shared with the mutation table and the README.
pub mod names {
    pub const WRITES_KEPT: &str = "P1a acknowledged writes are kept";
    pub const WRITE_WINS: &str = "P1b a write beats every write its replica had merged";
    pub const NO_POINT_PASSES: &str = "P2 no point passes a row its owner has not merged";
    pub const POINTS_FORWARD: &str = "P3 sync points never move backwards";
    pub const CONVERGE: &str = "P4 quiescent replicas converge";
    pub const PASSES_PROGRESS: &str = "P5 every pass ends and keeps its progress";
    pub const EX_SNAPSHOT: &str = "example: a snapshot pass";
    pub const EX_CAPPED: &str = "example: a capped pass";
    pub const EX_TRANSITIVE: &str = "example: a transitive entry";
    pub const EX_RESTORE: &str = "example: a restored replica";
    pub const EX_REFUSED: &str = "example: a far-future stamp in a log";
}
use names::*;

pub fn all() -> Vec<Property<ProtocolModel>> {
    vec![
        Property::always(WRITES_KEPT, writes_kept),
        Property::always(WRITE_WINS, write_wins),
        Property::always(NO_POINT_PASSES, no_point_passes),
        Property::always(POINTS_FORWARD, points_forward),
        Property::always(CONVERGE, converge::converges),
        Property::always(PASSES_PROGRESS, passes_progress),
        Property::sometimes(EX_SNAPSHOT, |_, st: &State| st.passes.iter().any(|p| matches!(p.snd, Sender::Snapshot { .. }))),
        Property::sometimes(EX_CAPPED, |_, st: &State| st.passes.iter().any(|p| matches!(p.snd, Sender::AwaitDone { complete: false, .. }))),
        Property::sometimes(EX_TRANSITIVE, |_, st: &State| st.nodes.iter().any(|n| n.store.peers.iter().any(|p| p.inh.iter().any(|e| e.transitive)))),
        Property::sometimes(EX_RESTORE, |_, st: &State| st.nodes.iter().any(|n| n.restores > 0)),
        Property::sometimes(EX_REFUSED, |_, st: &State| st.nodes.iter().any(|n| n.store.log.iter().any(|r| r.op.stamp.wall == crate::clock::MAX_WALL))),
    ]
}

/// P1a: every acknowledged write is present or dominated (a newer write holds its field) in
/// its replica's store; once that replica was restored from a backup that predates it,
/// some replica must still hold it — unless the restore destroyed its last copy.
pub fn writes_kept(_: &ProtocolModel, st: &State) -> bool {
    st.acked.iter().filter(|a| !a.exempt).all(|a| {
        let owner = &st.nodes[a.op.origin().replica as usize];
        if owner.restores == a.epoch {
            owner.store.holds(&a.op)
        } else {
            st.anyone_holds(&a.op)
        }
    })
}

/// P1b: a write is newer than every write its replica had merged into that field when it
/// issued it — what a far-future stamp breaks.
pub fn write_wins(_: &ProtocolModel, st: &State) -> bool {
    st.acked.iter().all(|a| a.prior.is_none_or(|p| a.op > p))
}

/// P2: no point a pass could start from passes a row the replica has not merged. For every
/// entry of R's incoming history for S whose session S still remembers (at row q), R holds
/// every op of S's rows up to min(entry, q); and R holds every op its per-origin marks claim.
pub fn no_point_passes(_: &ProtocolModel, st: &State) -> bool {
    for (ri, rn) in st.nodes.iter().enumerate() {
        let r = &rn.store;
        for (si, sn) in st.nodes.iter().enumerate().filter(|(si, _)| *si != ri) {
            let s = &sn.store;
            for e in &r.peers[si].inh {
                if let Some(q) = s.remembered(e.session) {
                    let upto = e.row.min(q).min(s.max_row()) as usize;
                    if !s.log[..upto].iter().all(|row| r.holds(&row.op)) {
                        return false;
                    }
                }
            }
        }
        let claimed = |a: &&Ack| a.op.seq <= r.marks[a.op.origin().replica as usize][a.op.origin().inc as usize];
        if !st.acked.iter().filter(claimed).all(|a| r.holds(&a.op)) {
            return false;
        }
    }
    true
}

/// P3: no `incoming[S]` point and no per-origin mark is below the highest it ever was
/// (the ghost `high` is reset only when its owner is restored from a backup).
pub fn points_forward(_: &ProtocolModel, st: &State) -> bool {
    st.nodes.iter().enumerate().all(|(r, n)| {
        (0..REPLICAS).all(|p| n.store.peers[p].incoming >= st.high.incoming[r][p])
            && n.store.marks.iter().flatten().zip(st.high.marks[r].iter().flatten()).all(|(m, h)| m >= h)
    })
}

/// The most messages a pass can take in the scope: preflight, point, begin, end and done,
/// a batch and its ack per capped batch, per row that can be covered and per snapshot
/// chunk, and every duplicate.
pub fn step_bound(m: &ProtocolModel) -> u8 {
    let sc = &m.scope;
    let rows = sc.total_writes() * (sc.restores + 1);
    5 + 2 * (sc.max_diffs + rows + FIELDS as u8) + sc.dups
}

/// P5: every pass in flight is within the step bound; no pass was ever cut while its
/// receiver's durable point lagged behind a batch it had acknowledged, and no capped pass
/// ended without moving the point — so a pass cut at any step, or capped, resumes past
/// everything the receiver acknowledged.
pub fn passes_progress(m: &ProtocolModel, st: &State) -> bool {
    let bound = step_bound(m);
    !st.lost_progress && st.passes.iter().all(|p| p.steps <= bound)
}
