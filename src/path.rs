//! Field paths inside documents (`'address.city'`): parsing and reading/writing JSON by path.

use serde_json::{Map, Value};

/// A non-empty list of non-empty field names. The empty path (the whole document) is
/// represented separately by the merge code as the root register.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(Vec<String>);

impl Path {
    /// Parses a dotted path. Field names that contain dots cannot be addressed by path.
    pub fn parse(s: &str) -> Option<Path> {
        if s.is_empty() {
            return None;
        }
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return None;
        }
        Some(Path(parts))
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// Reads the value at this path, if every step is an object that has the field.
    pub fn get<'a>(&self, doc: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut cur = doc.get(first)?;
        for part in rest {
            cur = cur.as_object()?.get(part)?;
        }
        Some(cur)
    }

    /// Writes `value` at this path, turning non-object steps into objects.
    pub fn set(&self, doc: &mut Map<String, Value>, value: Value) {
        let (last, init) = self.0.split_last().expect("paths are non-empty");
        let mut cur = doc;
        for part in init {
            let slot = cur.entry(part.clone()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            cur = slot.as_object_mut().expect("just made an object");
        }
        cur.insert(last.clone(), value);
    }
}

/// Whether dotted path `a` is a strict ancestor of dotted path `b` (`"x"` of `"x.y"`).
pub fn is_ancestor(a: &str, b: &str) -> bool {
    a.is_empty() && !b.is_empty() || (b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_and_get_nested() {
        let mut m = Map::new();
        let p = Path::parse("a.b.c").unwrap();
        p.set(&mut m, json!(1));
        assert_eq!(Value::Object(m.clone()), json!({"a": {"b": {"c": 1}}}));
        assert_eq!(p.get(&m), Some(&json!(1)));
        Path::parse("a").unwrap().set(&mut m, json!(5));
        p.set(&mut m, json!(2));
        assert_eq!(Value::Object(m), json!({"a": {"b": {"c": 2}}}));
    }

    #[test]
    fn ancestry() {
        assert!(is_ancestor("", "a"));
        assert!(is_ancestor("a", "a.b"));
        assert!(!is_ancestor("a", "ab"));
        assert!(!is_ancestor("a", "a"));
        assert!(!is_ancestor("a.b", "a"));
        assert!(Path::parse("a..b").is_none());
    }
}
