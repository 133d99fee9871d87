//! Running a checker and reading its result: how many states it explored, how deep, how
//! long it took, which `always` properties failed (with the length of the shortest
//! counterexample, since the search is breadth-first) and which `sometimes` examples it met.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};

use crate::actions::ProtocolModel;
use crate::mutations::{Mutation, Rules, Target};
use crate::scope::Scope;
use crate::upgrade::UpgradeModel;

/// What one exhaustive (or stopped-at-first-failure) run found.
#[derive(Clone, Debug)]
pub struct Summary {
    pub states: usize,
    pub unique: usize,
    pub depth: usize,
    pub elapsed: Duration,
    /// Failed properties, each with its counterexample's number of actions.
    pub failures: Vec<(&'static str, usize)>,
    /// `sometimes` properties an example was found for.
    pub examples: BTreeSet<&'static str>,
}

impl Summary {
    pub fn failed(&self, name: &str) -> Option<usize> {
        self.failures.iter().find(|(n, _)| *n == name).map(|(_, len)| *len)
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Explores `model` exhaustively (depth-first, on every core), or — given `stop_at`, a
/// property — breadth-first on one thread until that property fails, so the
/// counterexample found is among the shortest.
pub fn run<M>(model: M, stop_at: Option<&'static str>) -> Summary
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    let started = Instant::now();
    match stop_at {
        // Depth-first keeps only a path's worth of states besides the fingerprints, so an
        // exhaustive check needs little memory.
        None => summarize(model.checker().threads(threads()).spawn_dfs().join_and_report(&mut Progress::from_env()), started),
        Some(name) => summarize(model.checker().finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name]))).spawn_bfs().join(), started),
    }
}

/// Prints the checker's progress to stderr every `TIDEMARK_MODEL_PROGRESS` seconds (for
/// the long runs of `make verify`); silent when the variable is unset.
struct Progress {
    every: Option<Duration>,
    next: Duration,
}

impl Progress {
    fn from_env() -> Progress {
        let every = std::env::var("TIDEMARK_MODEL_PROGRESS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs);
        Progress { every, next: every.unwrap_or_default() }
    }
}

impl<M: Model> Reporter<M> for Progress {
    fn report_checking(&mut self, d: ReportData) {
        if let Some(every) = self.every.filter(|_| !d.done && d.duration >= self.next) {
            eprintln!("  … {} states ({} unique), depth {}, {:.0} s", d.total_states, d.unique_states, d.max_depth, d.duration.as_secs_f64());
            self.next += every;
        }
    }

    fn report_discoveries(&mut self, _: &M, _: BTreeMap<&'static str, ReportDiscovery<M>>) {}

    /// How often the checker is polled (a finished run waits at most this long).
    fn delay(&self) -> Duration {
        Duration::from_millis(100)
    }
}

fn summarize<M, C>(checker: C, started: Instant) -> Summary
where
    M: Model,
    M::State: Clone + Debug + Hash + PartialEq,
    M::Action: Clone + Debug + PartialEq,
    C: Checker<M>,
{
    let elapsed = started.elapsed();
    let found = checker.discoveries();
    let mut failures = Vec::new();
    let mut examples = BTreeSet::new();
    for p in checker.model().properties() {
        if let Some(path) = found.get(p.name) {
            match p.expectation {
                Expectation::Sometimes => {
                    examples.insert(p.name);
                }
                _ => failures.push((p.name, trimmed(checker.model(), p.condition, path.clone()).len())),
            }
        }
    }
    Summary {
        states: checker.state_count(),
        unique: checker.unique_state_count(),
        depth: checker.max_depth(),
        elapsed,
        failures,
        examples,
    }
}

/// The protocol with every rule, explored exhaustively in `scope`.
pub fn protocol(scope: Scope) -> Summary {
    run(ProtocolModel::new(Rules::all(), scope), None)
}

/// Runs one mutation until the property it must break fails (or the space is exhausted).
pub fn mutation(m: &Mutation) -> Summary {
    match m.target {
        Target::Protocol(scope) => run(ProtocolModel::new(m.rules, scope), Some(m.breaks)),
        Target::Upgrade => run(UpgradeModel { rules: m.rules }, Some(m.breaks)),
    }
}

/// The actions of `path` up to the first state where `condition` fails. (The checker keeps
/// the last violating path it met, which may run on past the violation.)
fn trimmed<M: Model>(model: &M, condition: fn(&M, &M::State) -> bool, path: Path<M::State, M::Action>) -> Vec<M::Action> {
    let mut actions = Vec::new();
    for (state, action) in path.into_vec() {
        if !condition(model, &state) {
            break;
        }
        actions.extend(action);
    }
    actions
}

/// A short path to a state where property `name` fails: its actions and the state it ends in.
pub fn path_of<M>(model: M, name: &'static str) -> Option<(Vec<M::Action>, M::State)>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    let condition = model.properties().into_iter().find(|p| p.name == name)?.condition;
    let checker = model.checker().finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name]))).spawn_bfs().join();
    let path = checker.discovery(name)?;
    let actions = trimmed(checker.model(), condition, path.clone());
    let last = path.into_states().into_iter().nth(actions.len())?;
    Some((actions, last))
}
