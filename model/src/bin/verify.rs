//! `make verify`: checks the protocol with every rule at the small and the large scopes,
//! then every mutation, and prints a table of states explored, time and counterexamples.
//! `verify small` runs only the small scopes (what `cargo test` checks), `verify one NAME`
//! one named scope.

use tidemark_model::check::{self, Summary};
use tidemark_model::{mutations, Scope};

fn row(name: &str, s: &Summary) {
    let failures: Vec<String> = s.failures.iter().map(|(n, l)| format!("{n} ({l} steps)")).collect();
    println!(
        "| {name} | {} | {} | {} | {:.1} s | {} |",
        s.states,
        s.unique,
        s.depth,
        s.elapsed.as_secs_f64(),
        if failures.is_empty() { "none".to_string() } else { failures.join(", ") }
    );
}

fn scopes(which: &str) -> Vec<(&'static str, Scope)> {
    let small = vec![("pair", Scope::pair()), ("pair_restore", Scope::pair_restore()), ("history", Scope::history()), ("skew", Scope::skew()), ("unkept", Scope::unkept()), ("snapshot_transport", Scope::snapshot_transport()), ("trio_capped", Scope::trio_capped()), ("trio_restore", Scope::trio_restore())];
    match which {
        "small" => small,
        "large" => Scope::large(),
        name => small.into_iter().chain(Scope::large()).filter(|(n, _)| *n == name).collect(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    if mode == "trace" {
        // verify trace SCOPE PROPERTY-PREFIX: the shortest counterexample with every rule.
        let scope = scopes(args.get(1).map(String::as_str).unwrap_or(""))[0].1;
        let model = tidemark_model::ProtocolModel::new(tidemark_model::Rules::all(), scope);
        let prefix = args.get(2).cloned().unwrap_or_default();
        let name = tidemark_model::properties::all().into_iter().map(|p| p.name).find(|n| n.starts_with(&prefix)).expect("a property");
        match check::path_of(model, name) {
            Some((actions, last)) => println!("{name}\n{}\n{last}", actions.join("\n")),
            None => println!("{name}: no counterexample"),
        }
        return;
    }
    if mode == "mutation" {
        // verify mutation NAME-PREFIX: a mutation's counterexample.
        let prefix = args.get(1).cloned().unwrap_or_default();
        let mut m = mutations::all().into_iter().find(|m| m.name.starts_with(&prefix)).expect("a mutation");
        if let Some(p) = args.get(2) {
            m.breaks = tidemark_model::properties::all().into_iter().map(|q| q.name).find(|n| n.starts_with(p.as_str())).expect("a property");
        }
        if let (tidemark_model::Target::Protocol(scope), true) = (m.target, m.breaks.starts_with("P4")) {
            use stateright::{Checker, Model};
            let model = tidemark_model::ProtocolModel::new(m.rules, scope);
            let c = model.clone().checker().finish_when(stateright::HasDiscoveries::AnyOf([m.breaks].into())).spawn_bfs().join();
            if let Some(path) = c.discovery(m.breaks) {
                println!("sync_everyone: {:?}", tidemark_model::converge::sync_everyone(&model, path.last_state()).err());
            }
        }
        match check::counterexample(&m) {
            Some((actions, last)) => println!("{} breaks {}\n{}\n{last}", m.name, m.breaks, actions.join("\n")),
            None => println!("{}: no counterexample", m.name),
        }
        return;
    }
    let runs: Vec<(&str, Scope)> = match mode {
        "one" => scopes(args.get(1).map(String::as_str).unwrap_or("")),
        "small" => scopes("small"),
        "large" => scopes("large"),
        "mutations" => Vec::new(),
        _ => scopes("small").into_iter().chain(scopes("large")).collect(),
    };
    println!("| scope | states | unique | depth | time | failed properties |\n|---|---|---|---|---|---|");
    let mut failed = false;
    for (name, scope) in runs {
        let s = check::protocol(scope);
        failed |= !s.failures.is_empty();
        row(name, &s);
        eprintln!("{name}: examples {:?}", s.examples);
    }
    if mode == "all" || mode == "mutations" {
        println!("\n| mutation | breaks | found | counterexample | states | time |\n|---|---|---|---|---|---|");
        for m in mutations::all() {
            let s = check::mutation(&m);
            let len = s.failed(m.breaks);
            failed |= len.is_none();
            println!("| {} | {} | {} | {} | {} | {:.1} s |", m.name, m.breaks, if len.is_some() { "yes" } else { "NO" }, len.map_or("-".into(), |l| format!("{l} steps")), s.states, s.elapsed.as_secs_f64());
            eprintln!("{}: all failures {:?}", m.name, s.failures);
        }
    }
    std::process::exit(i32::from(failed));
}
