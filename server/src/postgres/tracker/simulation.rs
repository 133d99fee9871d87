//! A simulation of several instances' trackers around one database, driven the way
//! `positions` drives them, with every interleaving proptest finds: writers joining,
//! allocating (ids drawn, then the writers read after them), committing or rolling back
//! out of order, announcing; notifications delivered late, or lost while a LISTEN connection
//! is down; re-reads issued at one moment and applied at another; writers crashing,
//! restarting, and dropped as dead. After every step no instance may show a row id that some
//! transaction still holds (DESIGN §12: "no client's point passes a row that another writer
//! allocated but has not committed"), nor move backwards; once everything is finished,
//! everyone has heard and re-read, and one more row is written, every instance shows every
//! committed row.
//!
//! It checks the rules the tracker and its driver follow, not the SQL: each step is one
//! statement's effect, as `positions` makes it.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::Tracker;

/// What a committed statement announced (the NOTIFY payloads), in commit order.
#[derive(Clone, Debug)]
enum Note {
    Position(String, i64, i64),
    Gone(String, i64),
}

/// The database: the library's sequence, `stream_positions`, its notifications, and which
/// row ids are committed or held by an open transaction.
#[derive(Default)]
struct Db {
    last_id: i64,
    table: BTreeMap<String, (i64, i64)>,
    next_join: i64,
    notes: Vec<Note>,
    committed: BTreeSet<i64>,
    open: BTreeSet<i64>,
}

impl Db {
    fn snapshot(&self, except: Option<&str>) -> Vec<(String, i64, i64)> {
        self.table.iter().filter(|(i, _)| Some(i.as_str()) != except).map(|(i, &(r, j))| (i.clone(), r, j)).collect()
    }

    /// `join`: an upsert keeping the row's incarnation if it has one.
    fn join(&mut self, instance: &str, start: i64) {
        let next = self.next_join + 1;
        let entry = self.table.entry(instance.to_string()).or_insert((start, next));
        if entry.1 == next {
            self.next_join = next;
        }
        entry.0 = entry.0.max(start);
        let (row, joined) = *entry;
        self.notes.push(Note::Position(instance.to_string(), row, joined));
    }

    /// `store_token` / `announce`: forward only; `false` when the row is gone (dropped).
    fn store(&mut self, instance: &str, token: i64, notify: bool) -> bool {
        let Some(entry) = self.table.get_mut(instance) else { return false };
        entry.0 = entry.0.max(token);
        let (row, joined) = *entry;
        if notify {
            self.notes.push(Note::Position(instance.to_string(), row, joined));
        }
        true
    }
}

/// A transaction of a writer: drawn ids, the writers read after drawing them, and whether
/// it has committed in the database yet (its tracker learns of it afterwards).
struct Txn {
    key: i64,
    ids: Vec<i64>,
    read: Vec<(String, i64, i64)>,
    fetched: bool,
    committed: bool,
}

/// One instance: its tracker, as `Stream`'s state holds it, and its LISTEN connection.
struct Node {
    name: String,
    writer: bool,
    tracker: Tracker,
    /// Where its LISTEN connection is in `Db::notes`; `None` while it is down.
    cursor: Option<usize>,
    /// After a reconnection, notifications wait until the re-read made on it is done
    /// (`listen_loop`).
    blocked: bool,
    epoch: u64,
    /// Re-reads issued and not yet applied: (link epoch, tracker stamp, what they read,
    /// whether it is a reconnection's own, which notifications wait for).
    reads: Vec<(u64, u64, Vec<(String, i64, i64)>, bool)>,
    txns: Vec<Txn>,
    announced: i64,
    shown: i64,
}

impl Node {
    /// `Stream::load`: LISTEN first, then one read of the table and the committed rows.
    fn start(db: &mut Db, name: &str, writer: bool) -> Node {
        let mut tracker = Tracker::new(name, writer);
        let cursor = Some(db.notes.len());
        match tracker.load_positions(db.snapshot(None)) {
            Some(min) => tracker.load_rows(&db.committed.range(min + 1..).copied().collect::<Vec<_>>()),
            None => tracker.load_max_row(db.committed.last().copied().unwrap_or(0)),
        }
        let mut announced = 0;
        if let Some(start) = tracker.finish_load() {
            db.join(name, start);
            announced = db.table[name].0;
        }
        let shown = tracker.persisted_up_to();
        Node { name: name.into(), writer, tracker, cursor, blocked: false, epoch: 1, reads: Vec::new(), txns: Vec::new(), announced, shown }
    }

    fn rejoin(&mut self, db: &mut Db) {
        db.join(&self.name, self.tracker.token_for_writer(&self.name));
    }

    fn apply(&mut self, note: Note) {
        match note {
            Note::Position(i, r, j) if i != self.name => self.tracker.observe(&i, r, Some(j)),
            Note::Gone(i, j) if i != self.name => self.tracker.remove(&i, Some(j)),
            _ => {}
        }
    }

    /// The end of `Positions::refresh` for one library: committed rows above the position
    /// once a writer was removed.
    fn after_removal(&mut self, db: &Db) {
        if self.tracker.take_removed() {
            let above: Vec<i64> = db.committed.range(self.tracker.persisted_up_to() + 1..).copied().collect();
            self.tracker.load_rows(&above);
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Start(usize),
    Crash(usize),
    Allocate(usize, usize),
    Fetched(usize, usize),
    Commit(usize, usize),
    Resolve(usize, usize),
    RollBack(usize, usize),
    Announce(usize),
    Deliver(usize),
    Disconnect(usize),
    Reconnect(usize),
    IssueRead(usize),
    ApplyRead(usize, usize),
    /// A re-read that failed (the database refused the connection): nothing applied. When it
    /// was a reconnection's own, notifications flow regardless (`listen_loop`).
    FailRead(usize, usize),
    DropDead(usize, usize),
}

const NODES: usize = 4;
/// Nodes 0–2 write; node 3 only reads.
fn is_writer(n: usize) -> bool {
    n < 3
}

impl Step {
    /// Which kind of step, for swarm testing (`no_instance_shows_a_row_still_in_flight`).
    fn kind(&self) -> u32 {
        match self {
            Step::Start(_) => 0,
            Step::Crash(_) => 1,
            Step::Allocate(..) => 2,
            Step::Fetched(..) => 3,
            Step::Commit(..) => 4,
            Step::Resolve(..) => 5,
            Step::RollBack(..) => 6,
            Step::Announce(_) => 7,
            Step::Deliver(_) => 8,
            Step::Disconnect(_) => 9,
            Step::Reconnect(_) => 10,
            Step::IssueRead(_) => 11,
            Step::ApplyRead(..) => 12,
            Step::DropDead(..) => 13,
            Step::FailRead(..) => 14,
        }
    }
}

struct World {
    db: Db,
    nodes: Vec<Option<Node>>,
}

impl World {
    fn new() -> World {
        World { db: Db::default(), nodes: (0..NODES).map(|_| None).collect() }
    }

    fn run(&mut self, s: &Step) {
        let db = &mut self.db;
        match *s {
            Step::Start(n) => {
                if self.nodes[n].is_none() {
                    self.nodes[n] = Some(Node::start(db, &format!("n{n}"), is_writer(n)));
                }
            }
            Step::Crash(n) => {
                // Its connections go: PostgreSQL rolls back its open transactions.
                if let Some(node) = self.nodes[n].take() {
                    for t in node.txns.iter().filter(|t| !t.committed) {
                        for id in &t.ids {
                            db.open.remove(id);
                        }
                    }
                }
            }
            Step::DropDead(by, victim) => {
                // `drop_dead_writers`: a row not refreshed lately whose writer holds no open
                // transaction (the `FOR KEY SHARE` lock); alive or not.
                let name = format!("n{victim}");
                let busy = self.nodes[victim].as_ref().is_some_and(|v| v.txns.iter().any(|t| !t.committed));
                let Some(node) = self.nodes[by].as_mut() else { return };
                if busy || !db.table.contains_key(&name) {
                    return;
                }
                let (_, joined) = db.table.remove(&name).expect("checked");
                db.notes.push(Note::Gone(name.clone(), joined));
                node.apply(Note::Gone(name, joined));
                node.after_removal(db);
            }
            _ => {
                let n = match *s {
                    Step::Allocate(n, _) | Step::Fetched(n, _) | Step::Commit(n, _) | Step::Resolve(n, _) | Step::RollBack(n, _) => n,
                    Step::Announce(n) | Step::Deliver(n) | Step::Disconnect(n) | Step::Reconnect(n) | Step::IssueRead(n) | Step::ApplyRead(n, _) | Step::FailRead(n, _) => n,
                    Step::Start(_) | Step::Crash(_) | Step::DropDead(..) => unreachable!(),
                };
                let Some(node) = self.nodes[n].as_mut() else { return };
                node_step(db, node, s);
            }
        }
    }

    /// What node `n` can do now, each step doing something.
    fn enabled(&self, n: usize) -> Vec<Step> {
        let Some(node) = self.nodes[n].as_ref() else { return vec![Step::Start(n)] };
        let mut steps = vec![Step::Crash(n), Step::IssueRead(n)];
        if node.writer {
            steps.push(Step::Announce(n));
            if node.txns.len() < 3 {
                steps.extend([Step::Allocate(n, 1), Step::Allocate(n, 2)]);
            }
        }
        for (i, t) in node.txns.iter().enumerate() {
            match (t.fetched, t.committed) {
                (false, _) => steps.push(Step::Fetched(n, i)),
                (true, false) => steps.extend([Step::Commit(n, i), Step::RollBack(n, i)]),
                (true, true) => steps.push(Step::Resolve(n, i)),
            }
        }
        // `listen_loop` reconnects only once its last reconnection's re-read is over.
        match node.cursor {
            Some(c) => {
                steps.push(Step::Disconnect(n));
                if !node.blocked && c < self.db.notes.len() {
                    steps.push(Step::Deliver(n));
                }
            }
            None if !node.blocked => steps.push(Step::Reconnect(n)),
            None => {}
        }
        steps.extend((0..node.reads.len()).flat_map(|i| [Step::ApplyRead(n, i), Step::FailRead(n, i)]));
        steps.extend((0..NODES).filter(|&v| v != n && self.db.table.contains_key(&format!("n{v}"))).map(|v| Step::DropDead(n, v)));
        steps
    }

    /// No live instance shows an id some open transaction holds, nor moves backwards.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let lowest_open = self.db.open.first().copied();
        for node in self.nodes.iter_mut().flatten() {
            let shown = node.tracker.persisted_up_to();
            if let Some(open) = lowest_open {
                prop_assert!(shown < open, "{} shows up to {shown}, past the open row {open}", node.name);
            }
            prop_assert!(shown >= node.shown, "{} moved back from {} to {shown}", node.name, node.shown);
            node.shown = shown;
        }
        Ok(())
    }
}

fn node_step(db: &mut Db, node: &mut Node, s: &Step) {
    // An index picks among what there is, so that most steps do something.
    let (txns, reads) = (node.txns.len().max(1), node.reads.len().max(1));
    let txn = |i: usize| i % txns;
    let read = |i: usize| i % reads;
    match *s {
        Step::Allocate(_, k) if node.writer && node.txns.len() < 3 => {
            // `allocate`: the fetch begins; the lock on our row, then `nextval` — with no row
            // (dropped) we rejoin first — then the other writers, read after the ids.
            let key = node.tracker.begin_fetch();
            if !db.table.contains_key(&node.name) {
                node.rejoin(db);
            }
            let ids: Vec<i64> = (1..=k as i64).map(|i| db.last_id + i).collect();
            db.last_id += k as i64;
            db.open.extend(&ids);
            let read = db.snapshot(Some(&node.name));
            node.txns.push(Txn { key, ids, read, fetched: false, committed: false });
        }
        Step::Fetched(_, i) => {
            if let Some(t) = node.txns.get_mut(txn(i)).filter(|t| !t.fetched) {
                t.fetched = true;
                node.tracker.learn_new(std::mem::take(&mut t.read));
                node.tracker.end_fetch(t.key, &t.ids);
            }
        }
        Step::Commit(_, i) => {
            if let Some(t) = node.txns.get_mut(txn(i)).filter(|t| t.fetched && !t.committed) {
                t.committed = true;
                for id in &t.ids {
                    db.open.remove(id);
                    db.committed.insert(*id);
                }
            }
        }
        Step::Resolve(_, i) => {
            // `Allocation::committed`: finished, then the token stored and announced.
            let i = txn(i);
            if node.txns.get(i).is_some_and(|t| t.committed) {
                let t = node.txns.remove(i);
                node.tracker.mark_finished(&t.ids);
                let token = node.tracker.token_for_writer(&node.name);
                if db.store(&node.name, token, true) {
                    node.announced = node.announced.max(db.table[&node.name].0);
                } else {
                    node.rejoin(db);
                }
            }
        }
        Step::RollBack(_, i) => {
            let i = txn(i);
            if node.txns.get(i).is_some_and(|t| t.fetched && !t.committed) {
                let t = node.txns.remove(i);
                for id in &t.ids {
                    db.open.remove(id);
                }
                node.tracker.mark_finished(&t.ids);
            }
        }
        Step::Announce(_) if node.writer => {
            let token = node.tracker.token_for_writer(&node.name);
            if db.store(&node.name, token, token > node.announced) {
                node.announced = node.announced.max(db.table[&node.name].0);
            } else {
                node.rejoin(db);
            }
        }
        Step::Deliver(_) => {
            if let (Some(c), false) = (node.cursor, node.blocked) {
                if let Some(note) = db.notes.get(c).cloned() {
                    node.cursor = Some(c + 1);
                    node.apply(note);
                }
            }
        }
        Step::Disconnect(_) => node.cursor = None,
        Step::Reconnect(_) => {
            if node.cursor.is_none() && !node.blocked {
                // `hold_after_gap`, then the new epoch, LISTEN in place, and its re-read.
                node.tracker.set_held(true);
                node.epoch += 1;
                node.cursor = Some(db.notes.len());
                node.blocked = true;
                node.reads.push((node.epoch, node.tracker.stamp(), db.snapshot(None), true));
            }
        }
        Step::IssueRead(_) => node.reads.push((node.epoch, node.tracker.stamp(), db.snapshot(None), false)),
        Step::FailRead(_, i) => {
            let i = read(i);
            if i < node.reads.len() && node.reads.remove(i).3 {
                node.blocked = false;
            }
        }
        Step::ApplyRead(_, i) => {
            let i = read(i);
            if i < node.reads.len() {
                let (mark, issued, read, own) = node.reads.remove(i);
                let present: BTreeSet<String> = read.iter().map(|(i, _, _)| i.clone()).collect();
                node.tracker.observe_all(read.into_iter().map(|(i, r, j)| (i, r, Some(j))));
                node.tracker.remove_absent(&present, issued);
                if mark == node.epoch {
                    node.tracker.set_held(false);
                }
                if own {
                    node.blocked = false;
                }
                node.after_removal(db);
            }
        }
        _ => {}
    }
}

/// Everything finishes, the dead are dropped, everyone listens, announces and re-reads, and
/// one more row is written: then every instance shows every committed row. (Without that
/// write, rows a dead writer committed above an id it rolled back stay unshown: nobody
/// vouches for that id until a later one is finished. Module doc of `positions`.)
fn settle(w: &mut World) -> Result<(), TestCaseError> {
    for n in 0..NODES {
        if let Some(node) = w.nodes[n].as_mut() {
            for i in (0..node.txns.len()).rev() {
                node_step(&mut w.db, node, &Step::Fetched(n, i));
                node_step(&mut w.db, node, &Step::Commit(n, i));
                node_step(&mut w.db, node, &Step::Resolve(n, i));
            }
            node_step(&mut w.db, node, &Step::Reconnect(n));
        }
    }
    w.run(&Step::Start(0));
    for v in 1..NODES {
        if w.nodes[v].is_none() {
            w.run(&Step::DropDead(0, v));
        }
    }
    quiet(w)?;
    for s in [Step::Allocate(0, 1), Step::Fetched(0, 0), Step::Commit(0, 0), Step::Resolve(0, 0)] {
        w.run(&s);
    }
    quiet(w)?;
    let top = w.db.committed.last().copied().unwrap_or(0);
    for node in w.nodes.iter().flatten() {
        prop_assert!(node.tracker.persisted_up_to() >= top, "{} shows up to {} of {top}", &node.name, node.tracker.persisted_up_to());
    }
    Ok(())
}

/// Rounds in which every live instance announces, hears everything and re-reads.
fn quiet(w: &mut World) -> Result<(), TestCaseError> {
    let alive: Vec<usize> = (0..NODES).filter(|&n| w.nodes[n].is_some()).collect();
    for _ in 0..3 {
        for &n in &alive {
            let node = w.nodes[n].as_mut().expect("alive");
            node_step(&mut w.db, node, &Step::Announce(n));
            while node.cursor.is_some_and(|c| c < w.db.notes.len()) || !node.reads.is_empty() {
                node_step(&mut w.db, node, &Step::ApplyRead(n, 0));
                node_step(&mut w.db, node, &Step::Deliver(n));
            }
            node_step(&mut w.db, node, &Step::IssueRead(n));
            node_step(&mut w.db, node, &Step::ApplyRead(n, 0));
        }
        w.check()?;
    }
    Ok(())
}

/// Steps per case, at most.
const STEPS: usize = 60;

/// Cases per run: `TIDEMARK_SIM_CASES`, else 40,000 (~10 s in a debug build).
fn cases() -> u32 {
    std::env::var("TIDEMARK_SIM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Each step is a node and a choice among what it can do then (`World::enabled`).
    /// Swarm testing: each case also leaves out a random set of step kinds (and so runs long
    /// stretches without, say, deliveries or crashes), which reaches the interleavings that
    /// matter far more often than every kind mixed evenly does. Writing is never left out.
    #[test]
    fn no_instance_shows_a_row_still_in_flight(
        left_out in any::<u16>(),
        steps in proptest::collection::vec((0..NODES, any::<u8>()), 1..STEPS),
    ) {
        const WRITING: u16 = 0b11_1101;
        let left_out = left_out & !WRITING;
        let mut w = World::new();
        w.run(&Step::Start(0));
        w.check()?;
        for (n, choice) in steps {
            let enabled: Vec<Step> = w.enabled(n).into_iter().filter(|s| left_out >> s.kind() & 1 == 0).collect();
            if let Some(s) = enabled.get(choice as usize % enabled.len().max(1)) {
                w.run(s);
                w.check()?;
            }
        }
        settle(&mut w)?;
    }
}

/// The case that found `Tracker::observe_all`: a reader's re-read shows one writer past an id
/// that a writer it had not heard of yet holds in flight.
#[test]
fn a_reread_showing_a_joiner_and_an_advanced_writer() -> Result<(), TestCaseError> {
    let mut w = World::new();
    for s in [Step::Start(0), Step::Start(3), Step::Start(2), Step::Allocate(2, 1)] {
        w.run(&s);
        w.check()?;
    }
    for s in [Step::Allocate(0, 1), Step::Fetched(0, 0), Step::Commit(0, 0), Step::Resolve(0, 0), Step::IssueRead(3), Step::ApplyRead(3, 0)] {
        w.run(&s);
        w.check()?;
    }
    Ok(())
}

/// A reconnection whose own re-read failed: the notifications that follow are applied, yet
/// one about a writer past the id of a writer that joined while the connection was down
/// moves nothing until a re-read on the new connection (the hold).
#[test]
fn notifications_after_a_gap_wait_for_a_reread() -> Result<(), TestCaseError> {
    let mut w = World::new();
    let steps = [
        Step::Start(0),
        Step::Start(3),
        Step::Disconnect(3),
        Step::Start(2),
        Step::Reconnect(3),
        Step::FailRead(3, 0),
        Step::Allocate(2, 1),
        Step::Allocate(0, 1),
        Step::Fetched(0, 0),
        Step::Commit(0, 0),
        Step::Resolve(0, 0),
        Step::Deliver(3),
        Step::IssueRead(3),
        Step::ApplyRead(3, 0),
    ];
    for s in steps {
        w.run(&s);
        w.check()?;
    }
    prop_assert!(w.nodes[3].as_ref().is_some_and(|n| !n.tracker.held()), "released by the re-read");
    Ok(())
}
