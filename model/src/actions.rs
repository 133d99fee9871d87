//! The model's actions and the stateright `Model` that enumerates them: local writes,
//! wall-clock jumps, backups and restores, starting a pass, and the transport's choices
//! for a pass in flight (deliver a message — any of them when it may reorder —,
//! duplicate one, or cut the pass: a crash, a lost message, a timeout).

use stateright::{Model, Property};

use crate::clock;
use crate::mutations::Rules;
use crate::pass::{self, Ctx, Flow};
use crate::properties;
use crate::scope::Scope;
use crate::state::*;

/// The pass protocol between `scope.replicas` replicas under `rules`.
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    pub rules: Rules,
    pub scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A local write to `field`, acknowledged to the app.
    Write { replica: Rid, field: u8 },
    /// The replica's wall clock jumps to the end of the stamp domain.
    ClockJump { replica: Rid },
    /// A copy of the replica's store is put aside.
    Backup { replica: Rid },
    /// The replica's store is replaced by its backup (its passes are cut).
    Restore { replica: Rid },
    /// A pass from `from` to `to` begins.
    Start { from: Rid, to: Rid },
    /// The transport hands message `msg` of the pass to its side.
    Deliver { from: Rid, to: Rid, msg: u8 },
    /// The transport duplicates message `msg` of the pass.
    Duplicate { from: Rid, to: Rid, msg: u8 },
    /// The pass is cut: a crash of either side, a lost message or a timeout.
    Abort { from: Rid, to: Rid },
    /// The receiver takes the second step of a batch committed in two (a batch rule off).
    FinishBatch { from: Rid, to: Rid },
}

impl ProtocolModel {
    pub fn new(rules: Rules, scope: Scope) -> ProtocolModel {
        ProtocolModel { rules, scope }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx { rules: &self.rules, scope: &self.scope }
    }

    /// Messages of a pass the transport may deliver next: the oldest in each direction, or
    /// any when it reorders.
    fn deliverable(&self, p: &Pass) -> Vec<usize> {
        // A receiver between the two steps of a batch reads nothing else.
        let busy = matches!(p.rcv, Receiver::Pending { .. });
        let open = |e: &Envelope| !(busy && e.to_receiver);
        if self.scope.reorder {
            return (0..p.chan.len()).filter(|&i| open(&p.chan[i])).collect();
        }
        [true, false].iter().filter_map(|&dir| p.chan.iter().position(|e| e.to_receiver == dir)).filter(|&i| open(&p.chan[i])).collect()
    }

    fn write(&self, st: &mut State, r: Rid, field: u8) {
        let node = &mut st.nodes[r as usize];
        let stamp = clock::tick(node.store.clock, node.now, Origin { replica: r, inc: node.inc });
        node.store.clock = (stamp.wall, stamp.counter);
        node.store.seq += 1;
        node.writes += 1;
        let op = Op { stamp, seq: node.store.seq, field, uid: node.writes };
        let prior = node.store.doc[field as usize];
        if prior.is_none_or(|p| op > p) {
            node.store.doc[field as usize] = Some(op);
        }
        node.store.log.push(LogRow { op, from: OWN });
        node.store.mark(&op);
        st.acked.push(Ack { op, prior, epoch: node.restores, exempt: false });
        st.acked.sort();
    }

    fn restore(&self, st: &mut State, r: Rid) {
        st.passes.retain(|p| p.from != r && p.to != r);
        let node = &mut st.nodes[r as usize];
        node.store = node.backup.clone().expect("restore needs a backup");
        node.restores += 1;
        if self.rules.restore_mints_origin {
            node.inc += 1;
            node.store.seq = 0;
        }
        // The owner's points legitimately go back to the backup's.
        let (store, high) = (&st.nodes[r as usize].store, &mut st.high);
        for p in 0..REPLICAS {
            high.incoming[r as usize][p] = store.peers[p].incoming;
        }
        high.marks[r as usize] = store.marks;
        // A write whose last copy the restore destroyed is lost by the restore, not the protocol.
        for i in 0..st.acked.len() {
            if !st.acked[i].exempt && !st.anyone_holds(&st.acked[i].op) {
                st.acked[i].exempt = true;
            }
        }
    }

    /// Ghost: remembers the highest point of every history and mark, for property 3.
    fn raise_high_water(st: &mut State) {
        for (r, node) in st.nodes.iter().enumerate() {
            for p in 0..REPLICAS {
                let h = &mut st.high.incoming[r][p];
                *h = (*h).max(node.store.peers[p].incoming);
            }
            for (h, m) in st.high.marks[r].iter_mut().flatten().zip(node.store.marks.iter().flatten()) {
                *h = (*h).max(*m);
            }
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State::new(self.scope.replicas)]
    }

    fn actions(&self, st: &State, out: &mut Vec<Action>) {
        let sc = &self.scope;
        let n = sc.replicas;
        for r in 0..n {
            let node = &st.nodes[r as usize];
            if node.writes < sc.writes[r as usize] {
                for field in (0..sc.fields).filter(|&f| sc.keeps(r, f)) {
                    out.push(Action::Write { replica: r, field });
                }
            }
            if st.spent.jumps < sc.jumps && node.now != clock::MAX_WALL {
                out.push(Action::ClockJump { replica: r });
            }
            if st.spent.backups < sc.backups {
                out.push(Action::Backup { replica: r });
            }
            if st.spent.restores < sc.restores && node.backup.is_some() {
                out.push(Action::Restore { replica: r });
            }
        }
        if st.spent.passes < sc.passes && st.passes.len() < sc.concurrent as usize {
            for from in 0..n {
                for to in (0..n).filter(|&to| to != from && st.pass(from, to).is_none()) {
                    out.push(Action::Start { from, to });
                }
            }
        }
        for p in &st.passes {
            let (from, to) = (p.from, p.to);
            for i in self.deliverable(p) {
                out.push(Action::Deliver { from, to, msg: i as u8 });
            }
            if st.spent.dups < sc.dups {
                for i in 0..p.chan.len() {
                    out.push(Action::Duplicate { from, to, msg: i as u8 });
                }
            }
            if matches!(p.rcv, Receiver::Pending { .. }) {
                out.push(Action::FinishBatch { from, to });
            }
            // Cutting a pass before either side committed anything leads where not starting
            // it does (with one pass less to spend), so only later cuts are explored.
            if p.durable {
                out.push(Action::Abort { from, to });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut st = last.clone();
        match action {
            Action::Write { replica, field } => self.write(&mut st, replica, field),
            Action::ClockJump { replica } => {
                st.spent.jumps += 1;
                st.nodes[replica as usize].now = clock::MAX_WALL;
            }
            Action::Backup { replica } => {
                st.spent.backups += 1;
                let node = &mut st.nodes[replica as usize];
                node.backup = Some(node.store.clone());
            }
            Action::Restore { replica } => {
                st.spent.restores += 1;
                self.restore(&mut st, replica);
            }
            Action::Start { from, to } => {
                st.spent.passes += 1;
                pass::start(&mut st, from, to);
            }
            Action::Deliver { from, to, msg } => {
                let idx = st.pass(from, to)?;
                let _: Flow = pass::deliver(&mut st, self.ctx(), idx, msg as usize);
            }
            Action::Duplicate { from, to, msg } => {
                st.spent.dups += 1;
                let idx = st.pass(from, to)?;
                let copy = st.passes[idx].chan[msg as usize].clone();
                st.passes[idx].chan.push(copy);
            }
            Action::Abort { from, to } => {
                let idx = st.pass(from, to)?;
                pass::abort(&mut st, idx);
            }
            Action::FinishBatch { from, to } => {
                let idx = st.pass(from, to)?;
                pass::finish_batch(&mut st, self.ctx(), idx);
            }
        }
        Self::raise_high_water(&mut st);
        Some(st)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}
