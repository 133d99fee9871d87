//! Answering a planned query over documents held in memory: the reference selection of
//! every store without native indexes (the in-memory store, the server's SQLite and
//! PostgreSQL stores). Primary scans go in UTF-16 id order and index scans in index-key
//! order within the plan's bounds — IndexedDB's orders — then the residual filter and
//! `plan.finish`, so every store answers exactly as IndexedDB does.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::key::{cmp, cmp_utf16};
use crate::query::{Bound, Plan, Source};
use crate::store::StoredDoc;

/// Picks, orders and trims a query's results from a collection's documents.
pub fn select<'a>(docs: impl IntoIterator<Item = &'a StoredDoc>, primary_key: &str, plan: &Plan) -> Vec<Map<String, Value>> {
    let mut candidates: Vec<&StoredDoc> = match &plan.source {
        Source::Get(id) => docs.into_iter().filter(|d| d.id == *id).collect(),
        Source::Primary => {
            let mut all: Vec<&StoredDoc> = docs.into_iter().collect();
            crate::sort::sort_by(&mut all, |a, b| cmp_utf16(&a.id, &b.id));
            all
        }
        Source::Index { name, lower, upper } => {
            let mut hits: Vec<(&Value, &StoredDoc)> = docs
                .into_iter()
                .filter_map(|d| d.index_keys.get(name).map(|k| (k, d)))
                .filter(|(k, _)| above(k, lower.as_ref()) && below(k, upper.as_ref()))
                .collect();
            crate::sort::sort_by(&mut hits, |a, b| cmp(a.0, b.0).then_with(|| cmp_utf16(&a.1.id, &b.1.id)));
            hits.into_iter().map(|(_, d)| d).collect()
        }
    };
    if plan.reverse {
        candidates.reverse();
    }
    let mut out = Vec::new();
    for d in candidates {
        let Some(doc) = &d.doc else { continue };
        if plan.matches(doc) {
            out.push(doc.clone());
            if plan.sort.is_none() && plan.limit.is_some_and(|n| out.len() >= n) {
                break;
            }
        }
    }
    plan.finish(&mut out, primary_key);
    out
}

fn above(k: &Value, lower: Option<&Bound>) -> bool {
    lower.is_none_or(|b| match cmp(k, &b.key) {
        Ordering::Greater => true,
        Ordering::Equal => !b.open,
        Ordering::Less => false,
    })
}

fn below(k: &Value, upper: Option<&Bound>) -> bool {
    upper.is_none_or(|b| match cmp(k, &b.key) {
        Ordering::Less => true,
        Ordering::Equal => !b.open,
        Ordering::Greater => false,
    })
}
