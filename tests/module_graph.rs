//! The engine's modules form layers (see the crate guide in `src/lib.rs`): no module
//! imports one that, directly or through others, imports it back. Read from the sources,
//! so a new `use` that closes a cycle fails here with the cycle spelled out.

#![cfg(not(target_arch = "wasm32"))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (`sync::send`, `idb`) → the sibling or crate modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
            parts.pop();
        }
        if parts.is_empty() {
            continue;
        }
        // Submodules of `idb` and `wasm` are one unit each: only the engine's layers are checked inside.
        let unit = if matches!(parts[0].as_str(), "idb" | "wasm") { parts[0].clone() } else { parts.join("::") };
        let parent = parts[..parts.len() - 1].join("::");
        let text = std::fs::read_to_string(&f).unwrap();
        // Everything before `mod tests` (tests may reach anywhere).
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = g.entry(unit.clone()).or_default();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.clone())] {
            for piece in code.split(prefix).skip(1) {
                let name: String = piece.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name.is_empty() {
                    continue;
                }
                let mut target = if base.is_empty() { name.clone() } else { format!("{base}::{name}") };
                // `crate::sync::send::X` names the submodule `sync::send`.
                if prefix == "crate::" && name == "sync" {
                    let rest: String = piece[name.len()..].strip_prefix("::").unwrap_or("").chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !rest.is_empty() && src.join("sync").join(format!("{rest}.rs")).exists() {
                        target = format!("sync::{rest}");
                    }
                }
                if matches!(name.as_str(), "idb" | "wasm") {
                    target = name.clone();
                }
                let known = src.join(format!("{}.rs", target.replace("::", "/"))).exists() || src.join(target.replace("::", "/")).is_dir();
                if known && target != unit {
                    deps.insert(target);
                }
            }
        }
    }
    g
}

fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    fn walk(g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        let here = path.last().unwrap().clone();
        for next in g.get(&here).into_iter().flatten() {
            if *next == path[0] {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(g, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_engine_has_no_import_cycle() {
    let g = graph();
    assert!(g.len() > 20, "the graph was read: {g:?}");
    assert!(g["replica"].contains("work") && g["sync::send"].contains("sync::apply"), "edges are found: {g:?}");
    for m in g.keys() {
        if let Some(cycle) = cycle_from(&g, m) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}
