//! `make verify`: checks the protocol with every rule at the small scopes (what `cargo test`
//! checks) and the large ones, the two-tab upgrade, then every mutation, and prints
//! markdown tables of states explored, time and counterexamples. Exits non-zero if a
//! property fails with every rule, or a mutation goes uncaught.
//!
//! `verify small|large|mutations` runs one part; `verify scope NAME` one scope;
//! `verify mutation PREFIX [PROPERTY-PREFIX]` prints a mutation's counterexample;
//! `verify trace SCOPE PROPERTY-PREFIX` a counterexample with every rule, if there is one.
//! `TIDEMARK_MODEL_PROGRESS=SECONDS` reports progress during long runs.

use tidemark_model::check::{self, Summary};
use tidemark_model::upgrade::UpgradeModel;
use tidemark_model::{converge, mutations, properties, ProtocolModel, Rules, Scope, Target};

fn row(name: &str, s: &Summary) {
    let failures: Vec<String> = s.failures.iter().map(|(n, l)| format!("{n} ({l} steps)")).collect();
    let failures = if failures.is_empty() { "none".to_string() } else { failures.join(", ") };
    println!("| {name} | {} | {} | {} | {:.1} s | {failures} |", s.states, s.unique, s.depth, s.elapsed.as_secs_f64());
}

fn property(prefix: &str) -> &'static str {
    properties::all().into_iter().map(|p| p.name).find(|n| n.starts_with(prefix)).unwrap_or_else(|| panic!("no property starts with {prefix:?}"))
}

/// Prints a path to a failure of `name` in `model`, and why the replicas did not converge.
fn show(model: ProtocolModel, name: &'static str) {
    match check::path_of(model.clone(), name) {
        Some((actions, last)) => {
            println!("{name} fails after {} steps:", actions.len());
            for a in &actions {
                println!("  {a:?}");
            }
            if let Err(why) = converge::sync_everyone(&model, &last) {
                println!("after that, syncing everyone: {why}");
            }
            println!("{last:#?}");
        }
        None => println!("{name}: no counterexample"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let mode = if args.is_empty() { "all" } else { arg(0) };
    let named = |name: &str| Scope::small().into_iter().chain(Scope::large()).filter(|(n, _)| *n == name).collect::<Vec<_>>();
    match mode {
        "trace" => {
            let (_, scope) = named(arg(1)).pop().expect("a scope name");
            return show(ProtocolModel::new(Rules::all(), scope), property(arg(2)));
        }
        "mutation" => {
            let m = mutations::all().into_iter().find(|m| m.name.starts_with(arg(1))).expect("a mutation name prefix");
            let breaks = if args.len() > 2 { property(arg(2)) } else { m.breaks };
            match m.target {
                Target::Protocol(scope) => show(ProtocolModel::new(m.rules, scope), breaks),
                Target::Upgrade => match check::path_of(UpgradeModel { rules: m.rules }, breaks) {
                    Some((actions, last)) => println!("{breaks} fails after {actions:?}\n{last:#?}"),
                    None => println!("{breaks}: no counterexample"),
                },
            }
            return;
        }
        _ => {}
    }
    let runs = match mode {
        "scope" => named(arg(1)),
        "small" => Scope::small(),
        "large" => Scope::large(),
        "mutations" => Vec::new(),
        _ => Scope::small().into_iter().chain(Scope::large()).collect(),
    };
    let mut failed = false;
    if !runs.is_empty() {
        println!("| scope | states | distinct | depth | time | failed properties |\n|---|---|---|---|---|---|");
    }
    for (name, scope) in runs {
        let s = check::protocol(scope);
        failed |= !s.failures.is_empty();
        row(name, &s);
    }
    if mode == "all" || mode == "small" {
        let s = check::run(UpgradeModel { rules: Rules::all() }, None);
        failed |= !s.failures.is_empty();
        row("upgrade (two tabs)", &s);
    }
    if mode == "all" || mode == "mutations" {
        println!("\n| mutation (rule off) | must break | caught | counterexample | states searched | time |\n|---|---|---|---|---|---|");
        for m in mutations::all() {
            let s = check::mutation(&m);
            let len = s.failed(m.breaks);
            failed |= len.is_none();
            let caught = if len.is_some() { "yes" } else { "NO" };
            let len = len.map_or("-".into(), |l| format!("{l} steps"));
            println!("| {} | {} | {caught} | {len} | {} | {:.1} s |", m.name, m.breaks, s.states, s.elapsed.as_secs_f64());
        }
    }
    std::process::exit(i32::from(failed));
}
