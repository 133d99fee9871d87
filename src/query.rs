//! Queries: parsing the JS query object, choosing an index, and the filter/sort rules
//! every store applies to what its scan returns.
//!
//! The planner is shared by every store, so an in-memory replica and an IndexedDB one
//! pick the same index, scan the same range, and return the same documents in the same
//! order.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::QueryError;
use crate::key::{self, cmp, encode, top};
use crate::path::Path;
use crate::schema::Collection;

/// A condition on one field.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Eq(Value),
    /// A range within one type; bounds are encoded values, `true` = inclusive.
    Range { lower: (Value, bool), upper: (Value, bool) },
    StartsWith(String),
    /// Not equal (as `Eq` compares); a missing field is not equal to anything.
    Ne(Value),
    /// Equal to one of the values.
    In(Vec<Value>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub conds: Vec<(Path, Cond)>,
    pub order: Option<(Path, bool)>,
    pub limit: Option<usize>,
}

/// An inclusive or exclusive bound on an index key.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    pub key: Value,
    pub open: bool,
}

/// Where a query's candidates come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// One document by primary key.
    Get(String),
    /// Every document, in primary-key order.
    Primary,
    /// An index range.
    Index { name: String, lower: Option<Bound>, upper: Option<Bound> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub source: Source,
    /// Scan in descending order.
    pub reverse: bool,
    /// Conditions the source does not already guarantee.
    pub residual: Vec<(Path, Cond)>,
    /// Sort needed after the scan: (field, descending).
    pub sort: Option<(Path, bool)>,
    pub limit: Option<usize>,
}

impl Plan {
    /// Whether the scan's output is the answer as is (no filter, no sort), so a store can
    /// hand back stored documents without looking inside them.
    pub fn is_direct(&self) -> bool {
        self.residual.is_empty() && self.sort.is_none()
    }

    /// Whether a document passes the conditions the scan does not guarantee.
    pub fn matches(&self, doc: &Map<String, Value>) -> bool {
        self.residual.iter().all(|(p, c)| c.matches(p.get(doc)))
    }

    /// Puts filtered documents in the order the query asked for, then applies the limit.
    pub fn finish(&self, docs: &mut Vec<Map<String, Value>>, primary_key: &str) {
        if let Some((field, desc)) = &self.sort {
            let pk = |d: &Map<String, Value>| d.get(primary_key).and_then(Value::as_str).unwrap_or("").to_string();
            crate::sort::sort_by(docs, |a, b| {
                let o = cmp(&encode(field.get(a)), &encode(field.get(b))).then_with(|| key::cmp_utf16(&pk(a), &pk(b)));
                if *desc { o.reverse() } else { o }
            });
        }
        if let Some(n) = self.limit {
            docs.truncate(n);
        }
    }
}

impl Cond {
    pub fn matches(&self, v: Option<&Value>) -> bool {
        match self {
            Cond::Eq(want) => equal(v, want),
            Cond::Range { lower, upper } => {
                let e = encode(v);
                let lo = cmp(&e, &lower.0);
                let hi = cmp(&e, &upper.0);
                (lo == Ordering::Greater || (lower.1 && lo == Ordering::Equal))
                    && (hi == Ordering::Less || (upper.1 && hi == Ordering::Equal))
            }
            Cond::StartsWith(p) => matches!(v, Some(Value::String(s)) if s.starts_with(p.as_str())),
            Cond::Ne(want) => !equal(v, want),
            Cond::In(values) => values.iter().any(|want| equal(v, want)),
        }
    }

    /// The encoded bounds of this condition on one field when an index can serve it:
    /// `None` for `ne` (no single range) and an empty `in`. An `in` is served by the one
    /// range from its smallest to its largest value; the condition itself stays in the
    /// residual filter to drop what lies between.
    fn index_bounds(&self) -> Option<((Value, bool), (Value, bool))> {
        match self {
            Cond::Ne(_) => None,
            Cond::In(values) => {
                let keys: Vec<Value> = values.iter().map(|v| encode(Some(v))).collect();
                let lo = keys.iter().min_by(|a, b| cmp(a, b))?.clone();
                let hi = keys.iter().max_by(|a, b| cmp(a, b))?.clone();
                Some(((lo, true), (hi, true)))
            }
            c => Some(c.bounds()),
        }
    }

    /// Whether an index scan over `index_bounds` answers this condition exactly.
    fn exact_by_index(&self) -> bool {
        !matches!(self, Cond::In(_) | Cond::Ne(_))
    }

    /// The encoded bounds of this condition on one field, for an index scan.
    fn bounds(&self) -> ((Value, bool), (Value, bool)) {
        match self {
            Cond::Eq(v) => ((encode(Some(v)), true), (encode(Some(v)), true)),
            Cond::Ne(_) | Cond::In(_) => unreachable!("index_bounds serves ne and in"),
            Cond::Range { lower, upper } => (lower.clone(), upper.clone()),
            Cond::StartsWith(p) => {
                let lower = (encode(Some(&Value::String(p.clone()))), true);
                let upper = match successor(p) {
                    Some(s) => (encode(Some(&Value::String(s))), false),
                    None => (Value::Array(vec![(key::TAG_STRING + 1).into()]), false),
                };
                (lower, upper)
            }
        }
    }
}

/// Equality as queries define it: JSON equality, with numbers compared by value (1 = 1.0).
fn equal(v: Option<&Value>, want: &Value) -> bool {
    v.is_some_and(|v| v == want || (v.is_number() && cmp(&encode(Some(v)), &encode(Some(want))) == Ordering::Equal))
}

/// The smallest string greater than every string starting with `p` (in UTF-16 order), if
/// one is easy to name.
fn successor(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    let last = chars.pop()?;
    let next = match last as u32 {
        0xD7FF => '\u{E000}',
        0xFFFF => return None,
        n => char::from_u32(n + 1)?,
    };
    chars.push(next);
    Some(chars.into_iter().collect())
}

impl Query {
    /// Parses `{ where, orderBy, limit }`.
    pub fn parse(q: &Value) -> Result<Query, QueryError> {
        let bad = |m: String| QueryError::Invalid(m);
        let obj = match q {
            Value::Null => return Ok(Query { conds: vec![], order: None, limit: None }),
            Value::Object(o) => o,
            _ => return Err(bad("a query is an object like { where, orderBy, limit }".into())),
        };
        let mut query = Query { conds: vec![], order: None, limit: None };
        for (k, v) in obj {
            match k.as_str() {
                "where" => match v {
                    Value::Null => {}
                    Value::Object(w) => {
                        for (field, c) in w {
                            let path = Path::parse(field).ok_or_else(|| bad(format!("{field:?} is not a field path")))?;
                            query.conds.push((path, parse_cond(field, c)?));
                        }
                    }
                    _ => return Err(bad("`where` must be an object of field conditions".into())),
                },
                "orderBy" => {
                    let (field, desc) = match v {
                        Value::Null => continue,
                        Value::String(f) => (f.clone(), false),
                        Value::Object(o) if o.len() == 1 => {
                            let (f, d) = o.iter().next().expect("one entry");
                            match d.as_str() {
                                Some("asc") => (f.clone(), false),
                                Some("desc") => (f.clone(), true),
                                _ => return Err(bad(format!("orderBy direction for {f:?} must be 'asc' or 'desc'"))),
                            }
                        }
                        _ => return Err(bad("orderBy is a field name or { field: 'asc' | 'desc' }".into())),
                    };
                    let path = Path::parse(&field).ok_or_else(|| bad(format!("{field:?} is not a field path")))?;
                    query.order = Some((path, desc));
                }
                "limit" => match v {
                    Value::Null => {}
                    Value::Number(n) if n.as_u64().is_some() => query.limit = Some(n.as_u64().unwrap() as usize),
                    _ => return Err(bad("limit must be a non-negative integer".into())),
                },
                other => return Err(bad(format!("unknown query key {other:?}: use where, orderBy, limit"))),
            }
        }
        Ok(query)
    }

    /// Chooses how to answer this query in `collection`.
    pub fn plan(&self, collection: &Collection) -> Plan {
        let pk = &collection.primary_key;
        // A primary key lookup beats any index.
        if let Some((_, Cond::Eq(Value::String(id)))) = self.conds.iter().find(|(p, c)| p.dotted() == *pk && matches!(c, Cond::Eq(_))) {
            return Plan {
                source: Source::Get(id.clone()),
                reverse: false,
                residual: self.conds.iter().filter(|(p, _)| p.dotted() != *pk).cloned().collect(),
                sort: None,
                limit: self.limit,
            };
        }
        let mut best: Option<((usize, bool), Plan)> = None;
        for index in collection.index_list() {
            let mut used = vec![false; self.conds.len()];
            let mut lower: Vec<Value> = vec![];
            let mut upper: Vec<Value> = vec![];
            let mut bounds_open = (false, false);
            let mut ranged = false;
            let mut next_field = None;
            for f in &index.fields {
                let found = self.conds.iter().enumerate().find(|(i, (p, c))| !used[*i] && p == f && c.index_bounds().is_some());
                match found {
                    Some((i, (_, Cond::Eq(v)))) => {
                        used[i] = true;
                        lower.push(encode(Some(v)));
                        upper.push(encode(Some(v)));
                    }
                    Some((i, (_, c))) => {
                        used[i] = true;
                        let ((lo, lo_inc), (hi, hi_inc)) = c.index_bounds().expect("found only with bounds");
                        lower.push(lo);
                        upper.push(hi);
                        bounds_open = (!lo_inc, !hi_inc);
                        ranged = true;
                        next_field = Some(f.clone());
                        break;
                    }
                    None => {
                        next_field = Some(f.clone());
                        break;
                    }
                }
            }
            let eqs = used.iter().filter(|u| **u).count() - ranged as usize;
            let order_ok = match &self.order {
                None => true,
                Some((f, _)) => next_field.as_ref() == Some(f) || (next_field.is_none() && index.fields.last() == Some(f)),
            };
            let score = (used.iter().filter(|u| **u).count(), order_ok);
            if score.0 == 0 && !(order_ok && self.order.is_some()) {
                continue;
            }
            // Exclusive lower and inclusive upper must step over longer keys with the
            // same prefix: `top()` sorts after every encoded value.
            let (lower, upper) = if eqs + ranged as usize == 0 {
                (None, None)
            } else {
                let mut lo = lower;
                let mut hi = upper;
                if bounds_open.0 {
                    lo.push(top());
                }
                if !bounds_open.1 {
                    hi.push(top());
                }
                (Some(Bound { key: Value::Array(lo), open: false }), Some(Bound { key: Value::Array(hi), open: bounds_open.1 }))
            };
            let plan = Plan {
                source: Source::Index { name: index.name.clone(), lower, upper },
                reverse: order_ok && self.order.as_ref().is_some_and(|(_, d)| *d),
                residual: self.conds.iter().enumerate().filter(|(i, (_, c))| !used[*i] || !c.exact_by_index()).map(|(_, c)| c.clone()).collect(),
                sort: if order_ok { None } else { self.order.clone() },
                limit: self.limit,
            };
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, plan));
            }
        }
        if let Some((_, plan)) = best {
            return plan;
        }
        let by_pk = self.order.as_ref().is_some_and(|(f, _)| f.dotted() == *pk);
        Plan {
            source: Source::Primary,
            reverse: by_pk && self.order.as_ref().is_some_and(|(_, d)| *d),
            residual: self.conds.clone(),
            sort: if by_pk { None } else { self.order.clone() },
            limit: self.limit,
        }
    }
}

fn parse_cond(field: &str, c: &Value) -> Result<Cond, QueryError> {
    const OPS: [&str; 8] = ["eq", "ne", "in", "gt", "gte", "lt", "lte", "startsWith"];
    const ALONE: [&str; 4] = ["eq", "ne", "in", "startsWith"];
    let bad = |m: String| QueryError::Invalid(format!("condition on {field:?}: {m}"));
    // An object is always a set of operators, never a value to compare with: equality on
    // an object is `{ eq: {...} }`, so a typo'd operator cannot silently match nothing.
    let ops = match c {
        Value::Object(o) => o,
        other => return Ok(Cond::Eq(other.clone())),
    };
    if ops.is_empty() {
        return Err(bad("an empty object is not a condition: give a value, or operators (eq, ne, in, gt, gte, lt, lte, startsWith)".into()));
    }
    if let Some(k) = ops.keys().find(|k| !OPS.contains(&k.as_str())) {
        return Err(bad(format!("unknown operator {k:?}: use eq, ne, in, gt, gte, lt, lte, startsWith (for equality with an object, use {{ eq: {{...}} }})")));
    }
    if ops.len() == 1 {
        let (k, v) = ops.iter().next().expect("one operator");
        match k.as_str() {
            "eq" => return Ok(Cond::Eq(v.clone())),
            "ne" => return Ok(Cond::Ne(v.clone())),
            "in" => {
                return match v {
                    Value::Array(values) => Ok(Cond::In(values.clone())),
                    _ => Err(bad("in needs an array of values".into())),
                }
            }
            "startsWith" => {
                return match v {
                    Value::String(s) => Ok(Cond::StartsWith(s.clone())),
                    _ => Err(bad("startsWith needs a string".into())),
                }
            }
            _ => {}
        }
    }
    if let Some(k) = ALONE.iter().find(|k| ops.contains_key(**k)) {
        return Err(bad(format!("{k} cannot be combined with other operators")));
    }
    if (ops.contains_key("gt") && ops.contains_key("gte")) || (ops.contains_key("lt") && ops.contains_key("lte")) {
        return Err(bad("give at most one lower (gt/gte) and one upper (lt/lte) bound".into()));
    }
    let mut ty = None;
    let mut enc = |v: &Value| -> Result<Value, QueryError> {
        let e = encode(Some(v));
        let t = key::tag(&e);
        if !matches!(v, Value::Number(_) | Value::String(_)) {
            return Err(bad("range bounds must be numbers or strings".into()));
        }
        if ty.is_some_and(|x| x != t) {
            return Err(bad("both range bounds must have the same type".into()));
        }
        ty = Some(t);
        Ok(e)
    };
    let lower = match (ops.get("gt"), ops.get("gte")) {
        (Some(v), _) => Some((enc(v)?, false)),
        (_, Some(v)) => Some((enc(v)?, true)),
        _ => None,
    };
    let upper = match (ops.get("lt"), ops.get("lte")) {
        (Some(v), _) => Some((enc(v)?, false)),
        (_, Some(v)) => Some((enc(v)?, true)),
        _ => None,
    };
    let t = ty.expect("at least one bound");
    // A one-sided range stays within its type: [t] is below and [t+1] above every value of it.
    Ok(Cond::Range {
        lower: lower.unwrap_or((Value::Array(vec![t.into()]), true)),
        upper: upper.unwrap_or((Value::Array(vec![(t + 1).into()]), false)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    fn todos() -> Collection {
        Schema::from_json(json!({"version": 1, "collections": {"todos": {"primaryKey": "id",
            "indexes": {"byDone": "done", "byListDate": ["list", "createdAt"]}}}}))
        .unwrap()
        .collections["todos"]
        .clone()
    }

    #[test]
    fn compound_prefix_with_range_and_order_uses_the_index() {
        let q = Query::parse(&json!({"where": {"list": "inbox", "createdAt": {"gte": 10, "lt": 20}},
            "orderBy": {"createdAt": "desc"}})).unwrap();
        let p = q.plan(&todos());
        assert!(matches!(&p.source, Source::Index { name, .. } if name == "byListDate"));
        assert!(p.reverse && p.is_direct());
    }

    #[test]
    fn equality_with_foreign_order_sorts_after_scan() {
        let q = Query::parse(&json!({"where": {"done": false}, "orderBy": "createdAt", "limit": 5})).unwrap();
        let p = q.plan(&todos());
        assert!(matches!(&p.source, Source::Index { name, .. } if name == "byDone"));
        assert!(p.sort.is_some());
    }

    #[test]
    fn unindexed_query_scans() {
        let q = Query::parse(&json!({"where": {"title": {"startsWith": "Mi"}}})).unwrap();
        let p = q.plan(&todos());
        assert_eq!(p.source, Source::Primary);
        assert_eq!(p.residual.len(), 1);
        assert!(p.matches(json!({"title": "Milk"}).as_object().unwrap()));
        assert!(!p.matches(json!({"title": "Bread"}).as_object().unwrap()));
    }

    #[test]
    fn primary_key_equality_is_a_get() {
        let p = Query::parse(&json!({"where": {"id": "a", "done": true}})).unwrap().plan(&todos());
        assert_eq!(p.source, Source::Get("a".into()));
        assert_eq!(p.residual.len(), 1);
    }

    #[test]
    fn bad_queries_are_refused() {
        for q in [json!(5), json!({"where": 1}), json!({"limit": -1}), json!({"orderBy": {"a": "up"}}),
            json!({"where": {"a": {"gt": 1, "zz": 2}}}), json!({"where": {"a": {"gt": 1, "lt": "x"}}}),
            json!({"where": {"a": {"gt": true}}}), json!({"select": 1}), json!({"where": {"a": {"startsWith": 1}}})] {
            assert!(Query::parse(&q).is_err(), "{q}");
        }
    }

    #[test]
    fn unknown_operators_are_refused_not_compared() {
        for q in [json!({"where": {"n": {"between": 3}}}), json!({"where": {"v": {"$gt": 3}}}), json!({"where": {"v": {}}}),
            json!({"where": {"v": {"in": 3}}}), json!({"where": {"v": {"in": [1], "gt": 0}}}), json!({"where": {"v": {"ne": 1, "lt": 5}}})] {
            let e = Query::parse(&q).unwrap_err();
            assert_eq!(crate::error::Error::from(e).code(), "INVALID_QUERY", "{q}");
        }
        // Equality with an object is spelled out.
        let c = parse_cond("o", &json!({"eq": {"a": 1}})).unwrap();
        assert!(c.matches(Some(&json!({"a": 1}))) && !c.matches(Some(&json!({"a": 2}))));
    }

    #[test]
    fn in_and_ne() {
        let c = parse_cond("n", &json!({"in": [1, "x", null]})).unwrap();
        assert!(c.matches(Some(&json!(1.0))) && c.matches(Some(&json!("x"))) && c.matches(Some(&Value::Null)));
        assert!(!c.matches(Some(&json!(2))) && !c.matches(None));
        assert!(!parse_cond("n", &json!({"in": []})).unwrap().matches(Some(&json!(1))));
        let c = parse_cond("n", &json!({"ne": 1})).unwrap();
        assert!(!c.matches(Some(&json!(1.0))) && c.matches(Some(&json!(2))) && c.matches(None) && c.matches(Some(&json!("1"))));
    }

    #[test]
    fn in_scans_one_index_range_and_filters_ne_never_uses_an_index() {
        let p = Query::parse(&json!({"where": {"done": {"in": [true, false]}}})).unwrap().plan(&todos());
        assert!(matches!(&p.source, Source::Index { name, lower: Some(_), upper: Some(_) } if name == "byDone"));
        assert_eq!(p.residual.len(), 1, "the in stays as a filter");
        let p = Query::parse(&json!({"where": {"list": {"in": ["a", "b"]}}, "orderBy": "list"})).unwrap().plan(&todos());
        assert!(matches!(&p.source, Source::Index { name, .. } if name == "byListDate") && p.sort.is_none());
        let p = Query::parse(&json!({"where": {"done": {"ne": true}}})).unwrap().plan(&todos());
        assert_eq!(p.source, Source::Primary);
        let p = Query::parse(&json!({"where": {"done": {"in": []}}})).unwrap().plan(&todos());
        assert_eq!(p.source, Source::Primary);
    }

    #[test]
    fn ranges_stay_within_their_type() {
        let c = parse_cond("n", &json!({"gte": 10})).unwrap();
        assert!(c.matches(Some(&json!(11))));
        assert!(!c.matches(Some(&json!("11"))));
        assert!(!c.matches(Some(&json!(9))));
        assert!(!c.matches(None));
    }
}
