//! Key–value pairs that travel as a JSON object (`Pairs`).
//!
//! Written in the order given (already key order where they come from a map): no map is
//! built only to be written out. Read back, the object's entries in the order written: no
//! map type is compiled into the wasm only to be read into and taken apart.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// See the module doc.
pub struct Pairs<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Pairs<K, V> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

impl<K, V> Pairs<K, V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Serialize, V: Serialize> Serialize for Pairs<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
            type Value = Pairs<K, V>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    pairs.push(entry);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_read_back_keeps_its_entries_in_the_order_written() {
        let text = serde_json::to_string(&Pairs(vec![("b", 2), ("a", 1)])).unwrap();
        assert_eq!(text, r#"{"b":2,"a":1}"#);
        let back: Pairs<String, u32> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.0, [("b".to_string(), 2), ("a".to_string(), 1)]);
        assert!(serde_json::from_str::<Pairs<String, u32>>("[1]").is_err(), "only an object reads as pairs");
    }
}
