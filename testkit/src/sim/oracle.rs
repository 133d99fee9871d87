//! What must hold, checked against an oracle of acknowledged writes (issue 14, P1–P5):
//! - P1 no acknowledged write is lost (unless a restore destroyed its last copy), and a
//!   write beats everything its replica had merged before it;
//! - P2 no point passes a row its owner has not merged, and no per-origin mark claims an
//!   op the replica does not hold;
//! - P3 sync points (and marks) never move backwards, except by a restore;
//! - P4 quiescent replicas converge to identical stored documents;
//! - P5 every pass ends, and the healing rounds quiesce within a bound.

use std::collections::BTreeMap;

use tidemark::clock::Stamp;
use tidemark::op::Op;

use super::nodes::{Role, View};
use super::world::World;

/// A property that failed, with what showed it.
pub type Violation = String;

pub struct Acked {
    pub node: usize,
    pub op: Op,
    /// A restore destroyed every copy: no longer owed.
    pub lost: bool,
    /// Its replica was restored from a backup since: it is owed by the others only.
    pub restored: bool,
}

#[derive(Default)]
pub struct Oracle {
    pub acked: Vec<Acked>,
    /// The highest incoming point and newest stamp seen, by (node, peer db id).
    high: BTreeMap<(usize, String), (i64, Option<Stamp>)>,
}

impl Oracle {
    /// A write was acknowledged: it must beat what its replica had merged (P1b) and be
    /// visible there at once (P1a).
    pub fn wrote(&mut self, w: &World, node: usize, op: Op, before: Stamp) -> Result<(), Violation> {
        if (op.ts.wall, op.ts.counter) <= (before.wall, before.counter) {
            return Err(format!("P1 {}: write {}/{} stamped {} is not after the clock {} it had merged", w.nodes[node].name, op.collection, op.id, op.ts, before));
        }
        if !w.nodes[node].view().holds(&op) {
            return Err(format!("P1 {}: acknowledged write {}/{} at {} is not in its own store", w.nodes[node].name, op.collection, op.id, op.ts));
        }
        self.acked.push(Acked { node, op, lost: false, restored: false });
        Ok(())
    }

    /// After `node` was restored from a backup: writes no node holds any more are lost
    /// by the restore, not by the protocol. Its points may start lower again.
    pub fn restored(&mut self, w: &World, node: usize) -> u64 {
        let views: Vec<View> = w.nodes.iter().map(|n| n.view()).collect();
        let mut lost = 0;
        for a in self.acked.iter_mut().filter(|a| !a.lost) {
            a.restored |= a.node == node;
            if !views.iter().any(|v| v.holds(&a.op)) {
                a.lost = true;
                lost += 1;
            }
        }
        self.high.retain(|(n, _), _| *n != node);
        lost
    }

    /// P3, after every step: no incoming point or mark stamp below its high-water mark.
    pub fn points(&mut self, w: &World) -> Result<(), Violation> {
        for (i, n) in w.nodes.iter().enumerate() {
            for (peer, rec) in n.peers() {
                let key = (i, peer.clone());
                let (row, stamp) = self.high.get(&key).cloned().unwrap_or((-1, None));
                if rec.incoming < row {
                    return Err(format!("P3 {}: incoming[{}] moved back from {row} to {}", n.name, name_of(w, &peer), rec.incoming));
                }
                if stamp.is_some() && rec.newest < stamp {
                    return Err(format!("P3 {}: the mark stamp for {} moved back", n.name, name_of(w, &peer)));
                }
                self.high.insert(key, (rec.incoming, rec.newest.clone()));
            }
        }
        Ok(())
    }

    /// P1a on every replica that wrote: each acknowledged write (not lost by a restore)
    /// is still held where it was written — and, when `everywhere`, by every node.
    pub fn kept(&self, w: &World, everywhere: bool) -> Result<(), Violation> {
        let views: Vec<View> = w.nodes.iter().map(|n| n.view()).collect();
        for a in self.acked.iter().filter(|a| !a.lost) {
            let at: Vec<usize> = match (everywhere, a.restored) {
                (true, _) => (0..w.nodes.len()).collect(),
                (false, false) => vec![a.node],
                (false, true) => continue,
            };
            for i in at {
                if !views[i].holds(&a.op) {
                    return Err(format!(
                        "P1 {}: acknowledged write of {} ({}/{} {:?} at {}) is missing",
                        w.nodes[i].name, w.nodes[a.node].name, a.op.collection, a.op.id, a.op.kind, a.op.ts
                    ));
                }
            }
        }
        Ok(())
    }
}

/// P2: for every direct incoming entry of R for S whose session S still remembers (at
/// row q), R holds every op of S's log up to min(entry, q); and R holds every op of an
/// origin X within its mark for X (origin row and stamp).
pub fn points_are_honest(w: &World) -> Result<(), Violation> {
    let views: Vec<View> = w.nodes.iter().map(|n| n.view()).collect();
    let logs: Vec<_> = w.nodes.iter().map(|n| n.log()).collect();
    let peers: Vec<_> = w.nodes.iter().map(|n| n.peers()).collect();
    for (r, rn) in w.nodes.iter().enumerate() {
        for (s, sn) in w.nodes.iter().enumerate() {
            if r == s {
                continue;
            }
            let Some(rec) = peers[r].get(&sn.db_id) else { continue };
            let theirs = peers[s].get(&rn.db_id);
            for e in rec.in_history.iter().filter(|e| !e.transitive) {
                let Some(q) = theirs.and_then(|t| t.out_history.iter().find(|o| o.session == e.session)).map(|o| o.row) else { continue };
                let bound = e.row.min(q);
                if let Some(row) = logs[s].iter().take_while(|row| row.row as i64 <= bound).find(|row| !views[r].holds(&row.op)) {
                    return Err(format!(
                        "P2 {}: its point {} for {} (session both remember, {} there) passes row {} ({}/{} at {}, origin {} row {}) it does not hold",
                        rn.name, e.row, sn.name, q, row.row, row.op.collection, row.op.id, row.op.ts, name_of(w, &row.op.origin), row.op.origin_row
                    ));
                }
            }
            // The mark for S as an origin.
            if rec.incoming > 0 {
                if let Some(stamp) = &rec.newest {
                    let claimed = logs[s].iter().filter(|row| row.is_own(&sn.db_id) && row.op.origin_row > 0);
                    if let Some(row) = claimed.filter(|row| row.op.origin_row as i64 <= rec.incoming && row.op.ts <= *stamp).find(|row| !views[r].holds(&row.op)) {
                        return Err(format!(
                            "P2 {}: its mark for {} (row {}, stamp {}) claims op {}/{} at {} (origin row {}) it does not hold",
                            rn.name, sn.name, rec.incoming, stamp, row.op.collection, row.op.id, row.op.ts, row.op.origin_row
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// P4: every pair of nodes of the same role holds identical stored documents (stamps,
/// layers and migration marks included); and every node that keeps a layer holds it as
/// every other does.
pub fn converged(w: &World) -> Result<(), Violation> {
    let dumps: Vec<_> = w.nodes.iter().map(|n| n.dump()).collect();
    for i in 0..w.nodes.len() {
        for j in (i + 1)..w.nodes.len() {
            if w.nodes[i].role != w.nodes[j].role {
                continue;
            }
            for (c, docs) in &dumps[i] {
                // `migrated` only says which migration output this replica logged already.
                let strip = |d: &[tidemark::store::StoredDoc]| d.iter().map(|d| tidemark::store::StoredDoc { migrated: None, ..d.clone() }).collect::<Vec<_>>();
                if strip(docs) != strip(&dumps[j][c]) {
                    let diff = first_difference(docs, &dumps[j][c]);
                    if std::env::var_os("TIDEMARK_SIM_TRACE").is_some() {
                        for n in &w.nodes {
                            eprintln!("{} ({}):", n.name, n.db_id);
                            for r in n.log() {
                                eprintln!("  row {} from {:?}: {}/{} {:?} {} origin {} row {}", r.row, r.from.as_deref().map(|f| name_of(w, f)), r.op.collection, r.op.id, r.op.kind, r.op.ts, name_of(w, &r.op.origin), r.op.origin_row);
                            }
                        }
                    }
                    return Err(format!("P4 {} and {} differ in {c}: {diff}", w.nodes[i].name, w.nodes[j].name));
                }
            }
        }
    }
    // Across roles: the layers a client keeps equal the server's (migration output aside).
    let Some(server) = w.nodes.iter().position(|n| n.role == Role::Server) else { return Ok(()) };
    for (i, n) in w.nodes.iter().enumerate() {
        let Role::Client(v) = n.role else { continue };
        for (c, docs) in &dumps[i] {
            let theirs: BTreeMap<&str, _> = dumps[server][c].iter().map(|d| (d.id.as_str(), d.all_layers())).collect();
            for d in docs {
                let mine = d.all_layers();
                for (ver, layer) in mine.0.iter().filter(|(ver, _)| **ver <= v) {
                    let mut a = layer.clone();
                    tidemark::layers::strip_migrations(&mut a);
                    let mut b = theirs.get(d.id.as_str()).and_then(|l| l.0.get(ver)).cloned().unwrap_or_default();
                    tidemark::layers::strip_migrations(&mut b);
                    // A client's current layer is its view, which carries the primary key.
                    a.doc.remove("id");
                    b.doc.remove("id");
                    if a.stamps != b.stamps || a.deleted != b.deleted || (a.doc != b.doc && !a.stamps.is_empty()) {
                        return Err(format!("P4 {} and {} differ at {c}/{} version {ver}: {:?} vs {:?}", n.name, w.nodes[server].name, d.id, a, b));
                    }
                }
            }
        }
    }
    Ok(())
}

fn first_difference(a: &[tidemark::store::StoredDoc], b: &[tidemark::store::StoredDoc]) -> String {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return format!("{} vs {}", serde_json::to_string(x).unwrap_or_default(), serde_json::to_string(y).unwrap_or_default());
        }
    }
    format!("{} documents vs {}", a.len(), b.len())
}

pub fn name_of(w: &World, db_id: &str) -> String {
    w.nodes.iter().find(|n| n.db_id == db_id).map_or_else(|| db_id.to_string(), |n| n.name.clone())
}
