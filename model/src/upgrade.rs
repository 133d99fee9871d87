//! The browser's open-time upgrade with a second tab (DESIGN §4, §6; src/idb/upgrade.rs):
//! the upgrading tab copies the live generation's op log into a new generation and flips
//! the directory's live pointer (compare-and-set), then deletes the old generation, while
//! a tab still open on the old generation keeps writing. The rule: the upgrade holds a lock
//! from before the copy to after the flip, and a write takes the same lock and lands only
//! if its generation is still live (else it is refused and the tab reopens the live one).
//! Without the fence a write acknowledged between the copy and the flip stays behind in
//! the dead generation.

use stateright::{Model, Property};

use crate::mutations::Rules;

pub const NO_WRITE_LOST: &str = "U1 every acknowledged write is in the live generation";
pub const EX_UPGRADED: &str = "example: the upgrade flipped the pointer";
pub const EX_WRITE_AFTER: &str = "example: the other tab wrote after the upgrade";

/// Writes the other tab makes.
const WRITES: u8 = 2;
/// Upgrade attempts (a crashed one is retried on the next open).
const ATTEMPTS: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not upgrading (yet, or after a crash).
    Idle,
    Locked,
    Copied,
    Flipped,
    Released,
    /// The old generation is deleted.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpgradeState {
    /// Op logs of generation 0 (the old) and 1 (the new); `None` once deleted.
    pub gens: [Option<Vec<u8>>; 2],
    pub live: u8,
    /// Whether the upgrading tab holds the lock (a write takes it only for its own step).
    pub locked: bool,
    pub phase: Phase,
    pub attempts: u8,
    /// The generation the other tab has open, and the writes it made.
    pub tab_gen: u8,
    pub writes: u8,
    /// Ghost: acknowledged ops (op 0 was written before anything else happened).
    pub acked: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpgradeAction {
    Lock,
    Copy,
    Flip,
    Release,
    DeleteOld,
    /// The upgrading tab closes or crashes before the flip.
    Crash,
    /// The other tab writes its next op.
    Write,
    /// The other tab, refused, reopens the live generation.
    Reopen,
}

pub struct UpgradeModel {
    pub rules: Rules,
}

impl UpgradeModel {
    fn fenced(&self) -> bool {
        self.rules.upgrade_fence
    }
}

impl Model for UpgradeModel {
    type State = UpgradeState;
    type Action = UpgradeAction;

    fn init_states(&self) -> Vec<UpgradeState> {
        vec![UpgradeState { gens: [Some(vec![0]), None], live: 0, locked: false, phase: Phase::Idle, attempts: 0, tab_gen: 0, writes: 0, acked: vec![0] }]
    }

    fn actions(&self, st: &UpgradeState, out: &mut Vec<UpgradeAction>) {
        use UpgradeAction::*;
        match st.phase {
            Phase::Idle if st.attempts < ATTEMPTS => out.push(Lock),
            Phase::Locked => out.extend([Copy, Crash]),
            Phase::Copied => out.extend([Flip, Crash]),
            Phase::Flipped => out.push(Release),
            Phase::Released => out.push(DeleteOld),
            _ => {}
        }
        let can_write = !self.fenced() || !st.locked;
        if st.writes < WRITES && can_write && st.gens[st.tab_gen as usize].is_some() {
            out.push(Write);
        }
        if st.tab_gen != st.live {
            out.push(Reopen);
        }
    }

    fn next_state(&self, last: &UpgradeState, action: UpgradeAction) -> Option<UpgradeState> {
        let mut st = last.clone();
        match action {
            UpgradeAction::Lock => {
                st.attempts += 1;
                st.locked = self.fenced();
                st.phase = Phase::Locked;
            }
            UpgradeAction::Copy => {
                st.gens[1] = st.gens[0].clone();
                st.phase = Phase::Copied;
            }
            UpgradeAction::Flip => {
                if st.live == 0 {
                    st.live = 1;
                }
                st.phase = Phase::Flipped;
            }
            UpgradeAction::Release => {
                st.locked = false;
                st.phase = Phase::Released;
            }
            UpgradeAction::DeleteOld => {
                st.gens[0] = None;
                st.phase = Phase::Done;
            }
            UpgradeAction::Crash => {
                // Web Locks are released with the tab; the half-built generation is garbage.
                st.locked = false;
                st.gens[1] = None;
                st.phase = Phase::Idle;
            }
            UpgradeAction::Write => {
                st.writes += 1;
                if self.fenced() && st.tab_gen != st.live {
                    // Refused under the lock: this tab's generation is no longer live.
                    return Some(st);
                }
                let op = st.writes;
                st.gens[st.tab_gen as usize].as_mut().expect("an open generation").push(op);
                st.acked.push(op);
            }
            UpgradeAction::Reopen => st.tab_gen = st.live,
        }
        Some(st)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(NO_WRITE_LOST, |_, st: &UpgradeState| {
                let live = st.gens[st.live as usize].as_ref();
                st.acked.iter().all(|op| live.is_some_and(|g| g.contains(op)))
            }),
            Property::sometimes(EX_UPGRADED, |_, st: &UpgradeState| st.live == 1),
            Property::sometimes(EX_WRITE_AFTER, |_, st: &UpgradeState| st.live == 1 && st.acked.len() as u8 == WRITES + 1),
        ]
    }
}
