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
    /// A condition nothing meets (an empty `in`): what a field's operators that contradict
    /// each other come to.
    pub fn never() -> Cond {
        Cond::In(Vec::new())
    }

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
/// one is easy to name. After U+D7FF come the characters beyond the BMP (their UTF-16
/// starts with a surrogate, D800 and up), the first of them U+10000 — not U+E000, which
/// would take in every string going on with such a character (an emoji) after `p`
/// without `p`'s last character.
fn successor(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    let last = chars.pop()?;
    let next = match last as u32 {
        0xD7FF => '\u{10000}',
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
                            query.conds.extend(parse_conds(field, c)?.into_iter().map(|c| (path.clone(), c)));
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

    /// Whether a document meets every condition of the query, whatever a plan's source
    /// would already guarantee.
    pub fn matches(&self, doc: &Map<String, Value>) -> bool {
        self.conds.iter().all(|(p, c)| c.matches(p.get(doc)))
    }

    /// Chooses how to answer this query in `collection`.
    pub fn plan(&self, collection: &Collection) -> Plan {
        let pk = &collection.primary_key;
        // A query nothing can meet reads nothing: IndexedDB answers a limit of 0 before it
        // reads, the other stores after one lookup (of the empty id), whose document, if
        // there is one, the condition and the limit drop.
        if let Some((path, never)) = self.conds.iter().find(|(_, c)| *c == Cond::never()) {
            return Plan {
                source: Source::Get(String::new()),
                reverse: false,
                residual: vec![(path.clone(), never.clone())],
                sort: None,
                limit: Some(0),
            };
        }
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

/// Parses one field's condition into the conditions it stands for, all of which a document
/// must meet: a field's operators are ANDed. Each operator is checked on its own first (an
/// unknown one, or a value of the wrong kind, is refused); the conjunction is then put in
/// the form the planner serves best: an `eq` or `in` becomes the values that meet every
/// other operator, the range operators (with a `startsWith`) one range, and a combination
/// nothing can meet one `never` condition.
fn parse_conds(field: &str, c: &Value) -> Result<Vec<Cond>, QueryError> {
    const OPS: [&str; 8] = ["eq", "ne", "in", "gt", "gte", "lt", "lte", "startsWith"];
    let bad = |m: String| QueryError::Invalid(format!("condition on {field:?}: {m}"));
    // An object is always a set of operators, never a value to compare with: equality on
    // an object is `{ eq: {...} }`, so a typo'd operator cannot silently match nothing.
    let ops = match c {
        Value::Object(o) => o,
        other => return Ok(vec![Cond::Eq(other.clone())]),
    };
    if ops.is_empty() {
        return Err(bad("an empty object is not a condition: give a value, or operators (eq, ne, in, gt, gte, lt, lte, startsWith)".into()));
    }
    if let Some(k) = ops.keys().find(|k| !OPS.contains(&k.as_str())) {
        return Err(bad(format!("unknown operator {k:?}: use eq, ne, in, gt, gte, lt, lte, startsWith (for equality with an object, use {{ eq: {{...}} }})")));
    }
    let (mut eq, mut ne, mut one_of, mut prefix, mut range) = (None, None, None, None, None);
    for (k, v) in ops {
        match k.as_str() {
            "eq" => eq = Some(v.clone()),
            "ne" => ne = Some(v.clone()),
            "in" => match v {
                Value::Array(values) => one_of = Some(values.clone()),
                _ => return Err(bad("in needs an array of values".into())),
            },
            "startsWith" => match v {
                Value::String(s) => prefix = Some(s.clone()),
                _ => return Err(bad("startsWith needs a string".into())),
            },
            op => {
                if !matches!(v, Value::Number(_) | Value::String(_)) {
                    return Err(bad("range bounds must be numbers or strings".into()));
                }
                let e = encode(Some(v));
                let t = key::tag(&e);
                // A range stays within its bound's type: [t] is below and [t+1] above
                // every value of it.
                let (lower, upper) = match op {
                    "gt" => ((e, false), (Value::Array(vec![(t + 1).into()]), false)),
                    "gte" => ((e, true), (Value::Array(vec![(t + 1).into()]), false)),
                    "lt" => ((Value::Array(vec![t.into()]), true), (e, false)),
                    _ => ((Value::Array(vec![t.into()]), true), (e, true)),
                };
                range = Some(match range {
                    None => (lower, upper),
                    Some((lo, hi)) => (tighter(lo, lower, Ordering::Greater), tighter(hi, upper, Ordering::Less)),
                });
            }
        }
    }
    let range = range.map(|(lower, upper)| Cond::Range { lower, upper });
    // A lone operator is its own condition.
    if ops.len() == 1 {
        let only = match (eq, one_of, prefix) {
            (Some(v), _, _) => Cond::Eq(v),
            (_, Some(values), _) => Cond::In(values),
            (_, _, Some(p)) => Cond::StartsWith(p),
            _ => ne.map(Cond::Ne).or(range).expect("one known operator"),
        };
        return Ok(vec![only]);
    }
    let prefix = prefix.map(Cond::StartsWith);
    // Equality with one value, or with one of a list, is narrowed to the values the other
    // operators accept: a value equal to one of them meets every operator it meets.
    let not = ne.clone().map(Cond::Ne);
    let others = || range.iter().chain(&prefix).chain(&not);
    if let Some(v) = eq {
        let ok = others().all(|c| c.matches(Some(&v))) && one_of.is_none_or(|values| values.iter().any(|w| equal(Some(&v), w)));
        return Ok(vec![if ok { Cond::Eq(v) } else { Cond::never() }]);
    }
    if let Some(values) = one_of {
        let kept: Vec<Value> = values.into_iter().filter(|v| others().all(|c| c.matches(Some(v)))).collect();
        return Ok(vec![if kept.is_empty() { Cond::never() } else { Cond::In(kept) }]);
    }
    // What is left is a range, a prefix (itself a range of strings) and a `ne`. The range
    // the index scans is their intersection; the prefix stays a condition of its own, so
    // the filter checks it as it checks a lone one.
    let range = match (range, &prefix) {
        (Some(Cond::Range { lower, upper }), Some(p)) => {
            let (lo, hi) = p.bounds();
            Some(Cond::Range { lower: tighter(lower, lo, Ordering::Greater), upper: tighter(upper, hi, Ordering::Less) })
        }
        (r, _) => r,
    };
    if let Some(Cond::Range { lower, upper }) = &range {
        let empty = match cmp(&lower.0, &upper.0) {
            Ordering::Greater => true,
            Ordering::Equal => !(lower.1 && upper.1),
            Ordering::Less => false,
        };
        if empty {
            return Ok(vec![Cond::never()]);
        }
    }
    // A `ne` whose value the range or prefix already leaves out says nothing more.
    let ne = ne.filter(|v| range.iter().chain(&prefix).all(|c| c.matches(Some(v)))).map(Cond::Ne);
    Ok(range.into_iter().chain(prefix).chain(ne).collect())
}

/// The tighter of two bounds: the one further in `direction` (`Greater` for lower bounds,
/// `Less` for upper ones); on equal keys, exclusive if either is.
fn tighter(a: (Value, bool), b: (Value, bool), direction: Ordering) -> (Value, bool) {
    match cmp(&a.0, &b.0) {
        Ordering::Equal => (a.0, a.1 && b.1),
        o if o == direction => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use crate::store::StoredDoc;
    use serde_json::json;

    /// The one condition a field's operators parse to.
    fn parse_cond(field: &str, c: &Value) -> Result<Cond, QueryError> {
        let mut conds = parse_conds(field, c)?;
        assert_eq!(conds.len(), 1, "{c}");
        Ok(conds.remove(0))
    }

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
            json!({"where": {"a": {"gt": 1, "zz": 2}}}), json!({"where": {"a": {"gt": 1, "lt": true}}}),
            json!({"where": {"a": {"gt": true}}}), json!({"select": 1}), json!({"where": {"a": {"startsWith": 1}}})] {
            assert!(Query::parse(&q).is_err(), "{q}");
        }
    }

    #[test]
    fn unknown_operators_are_refused_not_compared() {
        for q in [json!({"where": {"n": {"between": 3}}}), json!({"where": {"v": {"$gt": 3}}}), json!({"where": {"v": {}}}),
            json!({"where": {"v": {"in": 3}}}), json!({"where": {"v": {"in": [1], "gt": 0, "zz": 1}}}),
            json!({"where": {"v": {"ne": 1, "lt": 5, "startsWith": 5}}}), json!({"where": {"v": {"eq": 1, "in": 1}}}),
            json!({"where": {"v": {"ne": 1, "gte": [1]}}})] {
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
        assert_eq!(p.limit, Some(0), "an empty in reads nothing");
    }

    #[test]
    fn ranges_stay_within_their_type() {
        let c = parse_cond("n", &json!({"gte": 10})).unwrap();
        assert!(c.matches(Some(&json!(11))));
        assert!(!c.matches(Some(&json!("11"))));
        assert!(!c.matches(Some(&json!(9))));
        assert!(!c.matches(None));
    }

    /// Stored documents of `coll`, with their index keys, for `scan::select`.
    fn stored(coll: &Collection, docs: &[Value]) -> Vec<StoredDoc> {
        docs.iter().map(|d| StoredDoc::queried(d["id"].as_str().unwrap(), d.as_object().unwrap().clone(), coll.index_list())).collect()
    }

    fn ids_of(coll: &Collection, docs: &[StoredDoc], q: Value) -> Vec<String> {
        let plan = Query::parse(&q).unwrap_or_else(|e| panic!("{q}: {e}")).plan(coll);
        crate::scan::select(docs, &coll.primary_key, &plan).iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn a_prefix_range_ends_where_the_prefix_does_in_utf16_order() {
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("a\u{D7FF}").as_deref(), Some("a\u{10000}"));
        assert_eq!(successor("a\u{1F600}").as_deref(), Some("a\u{1F601}"));
        assert_eq!(successor("a\u{FFFF}"), None);
        // Served by an index: the prefix ending in U+D7FF takes neither "a" + an emoji nor
        // "a" + U+E000, and takes what starts with it.
        let coll = Schema::from_json(json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"byTitle": "title"}}}})).unwrap().collections["t"].clone();
        let titles = ["a\u{D7FF}", "a\u{D7FF}\u{1F600}", "a\u{1F600}", "a\u{E000}", "a\u{D7FE}", "a\u{FFFF}"];
        let docs = stored(&coll, &titles.iter().enumerate().map(|(i, t)| json!({"id": format!("t{i}"), "title": t})).collect::<Vec<_>>());
        let q = json!({"where": {"title": {"startsWith": "a\u{D7FF}"}}});
        assert!(matches!(Query::parse(&q).unwrap().plan(&coll).source, Source::Index { .. }));
        let mut got = ids_of(&coll, &docs, q);
        got.sort();
        assert_eq!(got, vec!["t0", "t1"]);
    }

    #[test]
    fn operators_on_one_field_are_anded() {
        let coll = todos();
        let titles = ["ab", "abc", "b", "a", "ba", "abd"];
        let docs = stored(&coll, &(0..6).map(|i| json!({"id": format!("t{i}"), "list": if i % 2 == 0 { "a" } else { "b" },
            "createdAt": i * 5, "title": titles[i], "done": i > 2})).collect::<Vec<_>>());
        for (q, want) in [
            (json!({"createdAt": {"gte": 0, "ne": 15}}), vec!["t0", "t1", "t2", "t4", "t5"]),
            (json!({"createdAt": {"in": [5, 10, 15], "gt": 5}}), vec!["t2", "t3"]),
            (json!({"createdAt": {"in": [5, 10, 15], "ne": 10, "lte": 15}}), vec!["t1", "t3"]),
            (json!({"createdAt": {"eq": 10, "in": [5, 10]}}), vec!["t2"]),
            (json!({"createdAt": {"eq": 10, "gte": 10, "ne": 5}}), vec!["t2"]),
            (json!({"createdAt": {"gt": 0, "gte": 10, "lt": 25, "lte": 20}}), vec!["t2", "t3", "t4"]),
            (json!({"title": {"startsWith": "ab", "gt": "ab", "ne": "abd"}}), vec!["t1"]),
            (json!({"title": {"startsWith": "a", "lt": "abd", "in": ["a", "abc", "b"]}}), vec!["t1", "t3"]),
            (json!({"list": {"eq": "a", "ne": "b"}, "createdAt": {"gte": 0, "ne": 10}}), vec!["t0", "t4"]),
            (json!({"list": {"in": ["a", "b"], "ne": "b"}, "done": {"ne": false, "in": [true, null]}}), vec!["t4"]),
        ] {
            let mut got = ids_of(&coll, &docs, json!({"where": q}));
            got.sort();
            assert_eq!(got, want, "{q}");
        }
        // In a compound index with an order and a limit.
        let q = json!({"where": {"list": {"eq": "a", "in": ["a", "c"]}, "createdAt": {"gt": 0, "ne": 10}}, "orderBy": {"createdAt": "desc"}, "limit": 5});
        assert_eq!(ids_of(&coll, &docs, q), vec!["t4"]);
    }

    #[test]
    fn combined_operators_use_an_index_for_what_it_can_serve() {
        // eq with operators it meets is the equality alone: a compound prefix, exact.
        let q = json!({"where": {"list": {"eq": "inbox", "ne": "x", "in": ["inbox", "y"]}, "createdAt": {"gte": 10, "lt": 20}}, "orderBy": "createdAt"});
        let p = Query::parse(&q).unwrap().plan(&todos());
        assert!(matches!(&p.source, Source::Index { name, .. } if name == "byListDate"), "{p:?}");
        assert!(p.is_direct(), "{p:?}");
        // The range's part is scanned, the ne filtered.
        let p = Query::parse(&json!({"where": {"list": "inbox", "createdAt": {"gte": 10, "ne": 15}}})).unwrap().plan(&todos());
        let Source::Index { name, lower: Some(lo), upper: Some(hi) } = &p.source else { panic!("{p:?}") };
        assert_eq!(name, "byListDate");
        assert_eq!(lo.key, json!([[4, "inbox"], [3, 10]]));
        assert_eq!((&hi.key, hi.open), (&json!([[4, "inbox"], [4]]), true));
        assert_eq!(p.residual, vec![(Path::parse("createdAt").unwrap(), Cond::Ne(json!(15)))]);
        // A ne the range already leaves out is dropped.
        let p = Query::parse(&json!({"where": {"list": "inbox", "createdAt": {"gte": 10, "ne": 5}}})).unwrap().plan(&todos());
        assert!(p.is_direct(), "{p:?}");
        // in narrowed by a range: one index range from its smallest to its largest kept value.
        let p = Query::parse(&json!({"where": {"done": {"in": [1, 3, 2, "x", null], "gt": 1}}})).unwrap().plan(&todos());
        let Source::Index { lower: Some(lo), upper: Some(hi), .. } = &p.source else { panic!("{p:?}") };
        assert_eq!((&lo.key, &hi.key), (&json!([[3, 2]]), &json!([[3, 3], [9]])));
        assert_eq!(p.residual, vec![(Path::parse("done").unwrap(), Cond::In(vec![json!(3), json!(2)]))]);
        // Several bounds: the tightest on each side.
        let c = parse_cond("n", &json!({"gt": 1, "gte": 1, "lt": 9, "lte": 8})).unwrap();
        assert_eq!(c, Cond::Range { lower: (json!([3, 1]), false), upper: (json!([3, 8]), true) });
        // A prefix and a range: the index scans their intersection, the prefix is checked too.
        let conds = parse_conds("s", &json!({"startsWith": "ab", "lt": "abc"})).unwrap();
        assert_eq!(conds, vec![Cond::Range { lower: (json!([4, "ab"]), true), upper: (json!([4, "abc"]), false) }, Cond::StartsWith("ab".into())]);
    }

    #[test]
    fn contradictions_match_nothing_and_read_nothing() {
        for c in [json!({"eq": 1, "ne": 1}), json!({"eq": 1.0, "in": [2, "1"]}), json!({"gt": 5, "lt": 1}), json!({"gte": 3, "lt": 3}),
            json!({"gt": 1, "lt": "x"}), json!({"in": [1, 2], "gt": 5}), json!({"startsWith": "a", "lt": "a"}), json!({"eq": 1, "startsWith": "1"}),
            json!({"startsWith": "a", "gte": 0}), json!({"in": [1], "ne": 1.0}), json!({"eq": {"a": 1}, "gt": 0})] {
            assert_eq!(parse_cond("done", &c).unwrap(), Cond::never(), "{c}");
            let p = Query::parse(&json!({"where": {"list": "inbox", "done": c}, "orderBy": "createdAt"})).unwrap().plan(&todos());
            assert_eq!((p.limit, p.sort.is_none()), (Some(0), true), "{c}");
            assert!(!p.matches(json!({"done": 1}).as_object().unwrap()));
        }
        // A store answers the plan with nothing, a document with the empty id included.
        let coll = todos();
        let docs = stored(&coll, &[json!({"id": "", "done": 1}), json!({"id": "a", "done": 1})]);
        assert!(ids_of(&coll, &docs, json!({"where": {"done": {"eq": 1, "ne": 1}}})).is_empty());
        // Equal values meet both: not a contradiction.
        assert_eq!(parse_cond("n", &json!({"eq": 1, "in": [1.0], "gte": 1, "lte": 1.0})).unwrap(), Cond::Eq(json!(1)));
    }

    mod combined {
        use proptest::prelude::*;

        use super::*;

        const OPS: [&str; 8] = ["eq", "ne", "in", "gt", "gte", "lt", "lte", "startsWith"];
        const STRINGS: [&str; 7] = ["", "a", "ab", "abc", "b", "ba", "1"];
        const IDS: [&str; 9] = ["", "a", "ab", "abc", "b", "ba", "1", "x", "y"];

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                (-2i64..6).prop_map(Value::from),
                Just(json!(1.5)),
                Just(json!(2.0)),
                prop::sample::select(&STRINGS[..]).prop_map(Value::from),
            ]
        }

        fn bound() -> impl Strategy<Value = Value> {
            prop_oneof![(-2i64..6).prop_map(Value::from), Just(json!(1.5)), prop::sample::select(&STRINGS[..]).prop_map(Value::from)]
        }

        fn operand(op: &'static str) -> BoxedStrategy<Value> {
            match op {
                "eq" | "ne" => value().boxed(),
                "in" => prop::collection::vec(value(), 0..4).prop_map(Value::from).boxed(),
                "startsWith" => prop::sample::select(&STRINGS[..4]).prop_map(Value::from).boxed(),
                _ => bound().boxed(),
            }
        }

        /// A field's condition: a plain value, or one to four operators.
        fn condition() -> impl Strategy<Value = Value> {
            prop_oneof![
                1 => value(),
                4 => prop::sample::subsequence(&OPS[..], 1..=4)
                    .prop_flat_map(|ops| ops.into_iter().map(|op| operand(op).prop_map(move |v| (op, v))).collect::<Vec<_>>())
                    .prop_map(|ops| Value::Object(ops.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        }

        fn collection() -> Collection {
            Schema::from_json(json!({"version": 1, "collections": {"t": {"primaryKey": "id",
                "indexes": {"byN": "n", "byS": "s", "byNS": ["n", "s"], "bySN": ["s", "n"]}}}}))
            .unwrap()
            .collections["t"]
            .clone()
        }

        /// Whether a document meets a condition, each operator checked on its own.
        fn meets(c: &Value, v: Option<&Value>) -> bool {
            match c {
                Value::Object(ops) => ops.iter().all(|(op, x)| parse_cond("f", &json!({op: x})).unwrap().matches(v)),
                plain => equal(v, plain),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// A query answered through its plan (an index, a lookup or a scan, then the
            /// residual filter) finds exactly the documents that meet every operator.
            #[test]
            fn plans_answer_as_every_operator_checked_alone(
                docs in prop::collection::vec(prop::option::of((prop::option::of(value()), prop::option::of(value()))), IDS.len()),
                conds in prop::collection::btree_map(prop::sample::select(vec!["n", "s", "id"]), condition(), 0..=2),
                order in prop::option::of((prop::sample::select(vec!["n", "s", "id"]), any::<bool>(), prop::option::of(0usize..5))),
            ) {
                let coll = collection();
                let docs: Vec<Value> = IDS.iter().zip(docs).filter_map(|(id, d)| {
                    let (n, s) = d?;
                    let mut m = Map::new();
                    m.insert("id".into(), json!(id));
                    n.map(|n| m.insert("n".into(), n));
                    s.map(|s| m.insert("s".into(), s));
                    Some(Value::Object(m))
                }).collect();
                let conds: Map<String, Value> = conds.into_iter().map(|(f, c)| (f.to_string(), c)).collect();
                let mut q = json!({"where": conds});
                let mut want: Vec<&Value> = docs.iter().filter(|d| conds.iter().all(|(f, c)| meets(c, d.get(f)))).collect();
                // Every combination of known operators with values of the right kinds is a query.
                prop_assert!(Query::parse(&q).is_ok(), "refused {}", q);
                if let Some((field, desc, limit)) = order {
                    q["orderBy"] = json!({field: if desc { "desc" } else { "asc" }});
                    let key = |d: &&Value| encode(d.get(field));
                    want.sort_by(|a, b| cmp(&key(a), &key(b)));
                    if desc {
                        want.reverse();
                    }
                    if let Some(n) = limit {
                        q["limit"] = json!(n);
                        want.truncate(n);
                    }
                    let plan = Query::parse(&q).unwrap().plan(&coll);
                    let got = crate::scan::select(&stored(&coll, &docs), "id", &plan);
                    let got_keys: Vec<Value> = got.iter().map(|d| encode(d.get(field))).collect();
                    let want_keys: Vec<Value> = want.iter().map(|d| encode(d.get(field))).collect();
                    let same = got_keys.len() == want_keys.len() && got_keys.iter().zip(&want_keys).all(|(a, b)| cmp(a, b) == Ordering::Equal);
                    prop_assert!(same, "{} planned as {:?}: {:?}, not {:?}", q, plan, got_keys, want_keys);
                    let all: Vec<&Value> = docs.iter().filter(|d| conds.iter().all(|(f, c)| meets(c, d.get(f)))).collect();
                    for d in &got {
                        prop_assert!(all.iter().any(|w| w.as_object() == Some(d)), "{} returned {:?}", q, d);
                    }
                } else {
                    let mut got = ids_of(&coll, &stored(&coll, &docs), q.clone());
                    got.sort();
                    let mut want: Vec<String> = want.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
                    want.sort();
                    prop_assert_eq!(got, want, "{}", q);
                }
            }
        }
    }
}
