//! Running a checker and reading its result: how many states it explored, how deep, how
//! long it took, which `always` properties failed (with the length of the shortest
//! counterexample, since the search is breadth-first) and which `sometimes` examples it met.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

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
    /// Whether the whole state space was explored.
    pub complete: bool,
}

impl Summary {
    pub fn failed(&self, name: &str) -> Option<usize> {
        self.failures.iter().find(|(n, _)| *n == name).map(|(_, len)| *len)
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Explores `model` breadth-first; stops early once `stop_at` (a property) fails. A search
/// for a counterexample runs on one thread, so that breadth-first order holds exactly and
/// the counterexample is a shortest one; an exhaustive check uses every core.
pub fn run<M>(model: M, stop_at: Option<&'static str>) -> Summary
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    let props = model.properties();
    let mut builder = model.checker().threads(if stop_at.is_some() { 1 } else { threads() });
    if let Some(name) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name])));
    }
    let started = Instant::now();
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    let found = checker.discoveries();
    let mut failures = Vec::new();
    let mut examples = BTreeSet::new();
    for p in &props {
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
        complete: failures.is_empty() || stop_at.is_none(),
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

/// A short path to a state where property `name` fails, as actions and the state it ends in.
pub fn path_of<M>(model: M, name: &'static str) -> Option<(Vec<String>, String)>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    let condition = model.properties().into_iter().find(|p| p.name == name)?.condition;
    let checker = model.checker().finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name]))).spawn_bfs().join();
    let path = checker.discovery(name)?;
    let actions = trimmed(checker.model(), condition, path.clone());
    let last = path.into_states().into_iter().nth(actions.len()).expect("the violating state");
    Some((actions.iter().map(|a| format!("{a:?}")).collect(), format!("{last:#?}")))
}

/// The counterexample a mutation finds: the actions that lead to it and the state it ends in.
pub fn counterexample(m: &Mutation) -> Option<(Vec<String>, String)> {
    match m.target {
        Target::Protocol(scope) => path_of(ProtocolModel::new(m.rules, scope), m.breaks),
        Target::Upgrade => path_of(UpgradeModel { rules: m.rules }, m.breaks),
    }
}
