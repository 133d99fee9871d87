//! The model's state: replicas (their durable store, backup, incarnation and wall clock),
//! the passes in flight with their messages, and the ghost record of acknowledged writes
//! that only the properties read. Also the store operations every step is made of: merging
//! an op (per-field last-writer-wins), noting a session in a history, the common point.

use crate::clock::{self, Last};

/// A replica's index.
pub type Rid = u8;
/// A row number in one replica's log; rows start at 1 and 0 means "nothing yet".
pub type Row = u8;
/// A pass's session id (random in the real protocol; minted in order here).
pub type Session = u16;

/// Fields in the world: field 0 belongs to collection A, field 1 to collection B.
pub const FIELDS: usize = 2;
/// Replicas the state has room for.
pub const REPLICAS: usize = 3;
/// Incarnations (restores + 1) a replica's origin id can go through.
pub const INCARNATIONS: usize = 3;
/// `from` of a row the replica wrote itself.
pub const OWN: Rid = u8::MAX;

/// Who wrote an op: a replica in one incarnation (its db id between restores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub replica: Rid,
    pub inc: u8,
}

/// A hybrid-logical timestamp; derives the real order (wall, counter, node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    pub wall: u8,
    pub counter: u8,
    pub node: Origin,
}

/// One write to one field. Ordered by stamp first (last-writer-wins); the rest only breaks
/// ties between equal stamps, which the real protocol never produces (see `clock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Op {
    pub stamp: Stamp,
    /// The origin's op counter (`originRow`).
    pub seq: u8,
    pub field: u8,
    /// Ghost: which of its replica's writes this is, so two ops are never confused.
    pub uid: u8,
}

impl Op {
    pub fn origin(&self) -> Origin {
        self.stamp.node
    }
}

/// A row of a replica's log: the op and the peer it came from (`OWN` for a local write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogRow {
    pub op: Op,
    pub from: Rid,
}

/// One remembered session: the pass `session` established `row`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub session: Session,
    pub row: Row,
    /// Learned from a forwarded table, not from a pass with this peer.
    pub transitive: bool,
}

/// What a replica remembers of one peer (src/sync/peer.rs `PeerRecord`, without the
/// status-only `outgoing` number).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerRecord {
    /// `incoming[peer]`: the highest row of the peer's row space recorded here, max-merged.
    /// A status number: passes start from a session both sides remember, never from it.
    pub incoming: Row,
    /// Sessions that carried the peer's rows here.
    pub inh: Vec<Entry>,
    /// Sessions in which this replica's rows were acknowledged by the peer.
    pub outh: Vec<Entry>,
}

/// How a history is kept short: at most `cap` entries; when full, `by_age` evicts the entry
/// noted first, else (src/sync/peer.rs) the entry with the lowest row.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    pub cap: u8,
    pub by_age: bool,
}

/// Per-origin high-water marks: for each origin, the highest op counter merged contiguously.
pub type Marks = [[u8; INCARNATIONS]; REPLICAS];

/// A replica's durable store: everything one backup copies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Store {
    /// Row k is `log[k - 1]`.
    pub log: Vec<LogRow>,
    /// The winning op of every field (a register per field).
    pub doc: [Option<Op>; FIELDS],
    /// The clock's newest (wall, counter).
    pub clock: Last,
    pub peers: [PeerRecord; REPLICAS],
    pub marks: Marks,
    /// Ops written in the current incarnation.
    pub seq: u8,
}

/// A replica: its store, one backup slot, and what a backup does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub store: Store,
    pub backup: Option<Store>,
    /// The incarnation it writes under (bumped by a restore when `restore_mints_origin`).
    pub inc: u8,
    /// Its wall clock.
    pub now: u8,
    /// Ghost: writes made ever, and restores suffered.
    pub writes: u8,
    pub restores: u8,
}

/// One row of a forwarded `incoming` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableEntry {
    pub replica: Rid,
    pub session: Session,
    pub row: Row,
}

/// The messages of one pass (src/sync/message.rs), without the session id: every pass has
/// its own connection, closed when either side aborts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    /// Sender → receiver: the sessions the sender remembers with the receiver.
    Preflight { sessions: Vec<Entry> },
    /// Receiver → sender: its point, the transitive candidates, its per-origin marks and
    /// the sessions in which it sent rows to the sender.
    Point { point: Row, matched: Option<Session>, candidates: Vec<Entry>, marks: Marks, sent: Vec<Session> },
    Begin { start: Row, snapshot: bool },
    Batch { after: Row, covers: Row, ops: Vec<Op> },
    /// `index`: the chunk's number (0 when acks do not name chunks).
    Chunk { index: u8, ops: Vec<Op> },
    Ack { point: Row },
    /// `max_row`: for a snapshot, the sender's max row it represents; `marks`: the marks a
    /// snapshot vouches for.
    End { complete: bool, max_row: Row, table: Vec<TableEntry>, marks: Option<Marks> },
    Done,
}

/// A message on its way, to the pass's receiver or back to its sender.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    pub to_receiver: bool,
    pub msg: Msg,
}

/// How the sender decides a row need not be sent (it is still covered).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The receiver's per-origin marks prove it holds the op.
    Marks(Marks),
    /// The real code's heuristic: skip ops the receiver originated or sent, when `continuous`.
    Echo { continuous: bool },
}

/// The sending side of a pass.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    AwaitPoint,
    Diffs { start: Row, cursor: Row, awaiting: Row, batches: u8, skip: Skip, idle_at: Option<Row> },
    Snapshot { start: Row, awaiting: Row, next: u8, ops: Vec<Op>, max_row: Row, marks: Marks },
    AwaitDone { complete: bool, end: Row, idle: bool },
}

/// Where the receiving side of a pass started: its point, whether a session matched, the
/// start the sender chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Opening {
    pub point: Row,
    pub matched: bool,
    pub start: Row,
}

/// The receiving side of a pass.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Receiver {
    AwaitPreflight,
    AwaitBegin { point: Row, matched: bool, ceiling: Row },
    Diffs { open: Opening, expected: Row },
    /// A batch committed in two steps (only when a batch rule is off): `noted`, its point
    /// is recorded and `ops` wait to be merged and acked; else its rows are merged and
    /// acked and the point waits to be recorded.
    Pending { open: Opening, covers: Row, ops: Vec<Op>, noted: bool },
    Snapshot { open: Opening, chunks: u8 },
    Finished,
}

/// One pass from `from` (S) to `to` (R).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pass {
    pub from: Rid,
    pub to: Rid,
    pub session: Session,
    /// The sender's `incoming` table, taken before the pass began.
    pub table: Vec<TableEntry>,
    pub snd: Sender,
    pub rcv: Receiver,
    pub chan: Vec<Envelope>,
    /// Ghost: messages delivered so far, and whether either side committed anything yet.
    pub steps: u8,
    pub durable: bool,
}

/// Ghost: a write a replica acknowledged to its app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ack {
    pub op: Op,
    /// The op the field held on its replica just before (what the write must beat).
    pub prior: Option<Op>,
    /// Its replica's restore count when it wrote.
    pub epoch: u8,
    /// Lost with the last copy in a restore: nobody held it any more afterwards.
    pub exempt: bool,
}

/// Ghost: the highest `incoming` points and marks seen, per owner, since its last restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HighWater {
    pub incoming: [[Row; REPLICAS]; REPLICAS],
    pub marks: [Marks; REPLICAS],
}

/// Fault and pass budgets spent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Spent {
    pub passes: u8,
    pub backups: u8,
    pub restores: u8,
    pub jumps: u8,
    pub dups: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub nodes: Vec<Node>,
    /// Sorted by (from, to); at most one per ordered pair.
    pub passes: Vec<Pass>,
    pub next_session: Session,
    pub spent: Spent,
    /// Ghost, sorted.
    pub acked: Vec<Ack>,
    pub high: HighWater,
    /// Ghost: a pass was cut while its receiver's durable point was behind a batch it had
    /// acknowledged, or a capped pass ended without moving the point.
    pub lost_progress: bool,
}

impl State {
    pub fn new(replicas: u8) -> State {
        let node = Node { store: Store::default(), backup: None, inc: 0, now: clock::NOW, writes: 0, restores: 0 };
        State {
            nodes: vec![node; replicas as usize],
            passes: Vec::new(),
            next_session: 1,
            spent: Spent::default(),
            acked: Vec::new(),
            high: HighWater::default(),
            lost_progress: false,
        }
    }

    pub fn pass(&self, from: Rid, to: Rid) -> Option<usize> {
        self.passes.iter().position(|p| p.from == from && p.to == to)
    }

    /// Whether any replica holds `op` (see `Store::holds`).
    pub fn anyone_holds(&self, op: &Op) -> bool {
        self.nodes.iter().any(|n| n.store.holds(op))
    }
}

impl Store {
    pub fn max_row(&self) -> Row {
        self.log.len() as Row
    }

    /// Whether this store has merged `op`: its field holds `op` or a newer write.
    pub fn holds(&self, op: &Op) -> bool {
        self.doc[op.field as usize].is_some_and(|cur| cur >= *op)
    }

    /// Merges a received op: the clock observes its stamp, the field keeps the newer write,
    /// an op that changed the field is logged as this replica's next row, and the op's
    /// origin mark advances if it is the next op of that origin. Returns whether it changed.
    pub fn merge(&mut self, op: Op, from: Rid) -> bool {
        self.clock = clock::observe(self.clock, &op.stamp);
        let f = op.field as usize;
        let changed = self.doc[f].is_none_or(|cur| op > cur);
        if changed {
            self.doc[f] = Some(op);
            self.log.push(LogRow { op, from });
        }
        self.mark(&op);
        changed
    }

    pub fn mark(&mut self, op: &Op) {
        let o = op.origin();
        let m = &mut self.marks[o.replica as usize][o.inc as usize];
        if *m + 1 == op.seq {
            *m = op.seq;
        }
    }

    /// The row the newest entry for `session` in `peer`'s incoming history reached.
    pub fn in_point(&self, peer: Rid, session: Session) -> Option<Row> {
        self.peers[peer as usize].inh.iter().find(|e| e.session == session).map(|e| e.row)
    }

    /// The row this replica remembers a peer acknowledged in `session`, over all its peers
    /// (how a sender vouches for a transitive entry of its own rows).
    pub fn remembered(&self, session: Session) -> Option<Row> {
        self.peers.iter().flat_map(|p| p.outh.iter()).filter(|e| e.session == session).map(|e| e.row).max()
    }
}

impl PeerRecord {
    /// The newest direct incoming entry whose session the peer still remembers, at the
    /// smaller of the two rows (`PeerRecord::common_point`).
    pub fn common_point(&self, theirs: &[Entry]) -> Option<(Row, Session)> {
        self.inh
            .iter()
            .filter(|e| !e.transitive)
            .filter_map(|e| theirs.iter().find(|p| p.session == e.session).map(|p| (e.row.min(p.row), e.session)))
            .max_by_key(|(row, _)| *row)
    }

    /// The newest direct incoming entry, whatever the peer remembers.
    pub fn newest_direct(&self) -> Option<(Row, Session)> {
        self.inh.iter().filter(|e| !e.transitive).map(|e| (e.row, e.session)).max_by_key(|(row, _)| *row)
    }

    /// Records that `session` carried the peer's rows up to `row` here (`note_incoming`).
    pub fn note_incoming(&mut self, session: Session, row: Row, transitive: bool, keep: Keep) {
        self.incoming = self.incoming.max(row);
        note(&mut self.inh, session, row, transitive, keep);
    }

    /// Records that the peer acknowledged own rows up to `row` in `session`.
    pub fn note_outgoing(&mut self, session: Session, row: Row, keep: Keep) {
        note(&mut self.outh, session, row, false, keep);
    }
}

/// Records that `session` reached `row` in a history (`peer::note`): rows only grow, a
/// direct entry stays direct, and a full history drops one entry as `keep` says.
fn note(history: &mut Vec<Entry>, session: Session, row: Row, transitive: bool, keep: Keep) {
    if let Some(e) = history.iter_mut().find(|e| e.session == session) {
        e.row = e.row.max(row);
        e.transitive &= transitive;
    } else {
        history.push(Entry { session, row, transitive });
    }
    if !keep.by_age {
        history.sort_by_key(|e| e.row);
    }
    let cap = keep.cap as usize;
    if history.len() > cap {
        let drop = history.len() - cap;
        history.drain(..drop);
    }
}
