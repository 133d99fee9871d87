//! One sort for the engine's lists, compiled once.
//!
//! Every `sort_by` at another element type or comparison compiles its own copy of the
//! standard library's sort into the wasm (~4 KB each before wasm-opt; the module held
//! about twenty). These sort positions instead, by one comparison called through `dyn`,
//! so the module holds the standard sort once, and then swap the elements into place.
//! The lists sorted here are small or sorted once per batch: the indirect call costs
//! nothing measurable against the bytes every page load downloads and compiles.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Sorts `items` by `cmp`, stably: equal elements keep their order.
pub fn sort_by<T>(items: &mut [T], mut cmp: impl FnMut(&T, &T) -> Ordering) {
    if items.len() < 2 {
        return;
    }
    let mut order = positions(items.len(), &mut |a, b| cmp(&items[a], &items[b]));
    // `order[k]` is where position k's element is now: follow each cycle of the
    // permutation with swaps, marking the positions done (no second buffer).
    const DONE: usize = usize::MAX;
    for start in 0..order.len() {
        let mut k = start;
        while order[k] != DONE {
            let from = std::mem::replace(&mut order[k], DONE);
            if from == start {
                break;
            }
            items.swap(k, from);
            k = from;
        }
    }
}

/// Sorts `items` by a key of each, stably.
pub fn sort_by_key<T, K: Ord>(items: &mut [T], mut key: impl FnMut(&T) -> K) {
    sort_by(items, |a, b| key(a).cmp(&key(b)));
}

/// Sorts `items` in their own order.
pub fn sort<T: Ord>(items: &mut [T]) {
    sort_by(items, T::cmp);
}

/// The map of `pairs`, a later pair replacing an earlier one with the same key, as
/// `collect` would make it.
///
/// `BTreeMap`'s own `collect` sorts the pairs with the standard sort and then builds the
/// tree from the sorted run, both compiled anew for every map type and iterator it collects
/// (~3 KB of wasm each; the module held a dozen). Inserting them one at a time uses the
/// `insert` each map type compiles anyway. The maps collected are small, or made once: a
/// server's peer records as it loads them, where 10,000 take ~1.4 ms by insert against
/// ~0.6 ms collected (natively, random keys), once per load.
pub fn map_from<K: Ord, V>(pairs: impl IntoIterator<Item = (K, V)>) -> BTreeMap<K, V> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        map.insert(k, v);
    }
    map
}

/// The value at `key` in `list`, a list of pairs sorted by key, added by `new` where there is
/// none: a small map's `entry(key).or_insert_with(new)` kept as a list, which compiles no
/// map type of its own.
pub fn sorted_entry<K: Ord, V>(list: &mut Vec<(K, V)>, key: K, new: impl FnOnce() -> V) -> &mut V {
    let at = match list.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(at) => at,
        Err(at) => {
            list.insert(at, (key, new()));
            at
        }
    };
    &mut list[at].1
}

/// A JSON object of `pairs`, as [`map_from`] makes a map (`serde_json::Map` is a
/// `BTreeMap` whose `collect` sorts the same way).
pub fn object_from(pairs: impl IntoIterator<Item = (String, serde_json::Value)>) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        map.insert(k, v);
    }
    map
}

/// The positions `0..n` in the order `cmp` gives their elements: the one compiled sort.
fn positions(n: usize, cmp: &mut dyn FnMut(usize, usize) -> Ordering) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| cmp(a, b));
    order
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The standard stable sort's order, equal keys included (the tags tell equal keys apart).
        #[test]
        fn sorts_as_the_standard_stable_sort(keys in proptest::collection::vec(0u8..6, 0..60)) {
            let items: Vec<(u8, usize)> = keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
            let mut expected = items.clone();
            expected.sort_by(|a, b| b.0.cmp(&a.0));
            let mut got = items.clone();
            sort_by(&mut got, |a, b| b.0.cmp(&a.0));
            prop_assert_eq!(&got, &expected);
            let mut by_key = items.clone();
            sort_by_key(&mut by_key, |x| x.0);
            expected.sort_by_key(|x| x.0);
            prop_assert_eq!(&by_key, &expected);
            let mut own = items;
            sort(&mut own);
            expected.sort();
            prop_assert_eq!(own, expected);
        }

        /// The map and the object `collect` would make, a later pair winning over an
        /// earlier one with the same key.
        #[test]
        fn maps_as_collect_makes_them(pairs in proptest::collection::vec((0u8..8, any::<u16>()), 0..40)) {
            let expected: BTreeMap<u8, u16> = pairs.iter().copied().collect();
            prop_assert_eq!(map_from(pairs.iter().copied()), expected);
            let json = |pairs: &[(u8, u16)]| pairs.iter().map(|&(k, v)| (k.to_string(), serde_json::Value::from(v))).collect::<Vec<_>>();
            let expected: serde_json::Map<String, serde_json::Value> = json(&pairs).into_iter().collect();
            prop_assert_eq!(object_from(json(&pairs)), expected);
        }
    }

    #[test]
    fn sorted_entries_stay_in_key_order_and_are_made_once() {
        let mut list: Vec<(&str, u32)> = Vec::new();
        for key in ["m", "c", "x", "c", "a", "m", "c"] {
            *sorted_entry(&mut list, key, || 0) += 1;
        }
        assert_eq!(list, [("a", 1), ("c", 3), ("m", 2), ("x", 1)]);
    }

    #[test]
    fn moves_owned_elements_without_losing_any() {
        let mut words: Vec<String> = ["pear", "fig", "apple", "fig", ""].map(String::from).to_vec();
        sort(&mut words);
        assert_eq!(words, ["", "apple", "fig", "fig", "pear"]);
    }
}
