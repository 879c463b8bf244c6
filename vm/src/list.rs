//! A list's items: a `Value` each, or packed when every item is a bool or every item an int.
//!
//! Packing is invisible to scripts: items go in and come out as `Value`s, and storing an
//! item of another kind unpacks the list first. It exists for memory: a sieve's 300,001 flags
//! take 300 KB packed against 4.8 MB as 16-byte values, the difference between a loop that
//! runs in the cache and one that waits on memory (CPython's list of pointers takes 2.4 MB).

use crate::value::{Value, drop_value};
use std::ops::Range;

#[derive(Clone)]
pub enum Items {
    Values(Vec<Value>),
    Bools(Vec<bool>),
    Ints(Vec<i64>),
}

impl Default for Items {
    fn default() -> Self {
        Items::Values(Vec::new())
    }
}

impl From<Vec<Value>> for Items {
    /// Packs `values` when they are all bools or all ints (and there is at least one).
    fn from(values: Vec<Value>) -> Self {
        match values.first() {
            Some(Value::Bool(_)) if values.iter().all(|v| matches!(v, Value::Bool(_))) => {
                Items::Bools(
                    values
                        .iter()
                        .map(|v| matches!(v, Value::Bool(true)))
                        .collect(),
                )
            }
            Some(Value::Int(_)) if values.iter().all(|v| matches!(v, Value::Int(_))) => {
                Items::Ints(
                    values
                        .iter()
                        .map(|v| match v {
                            Value::Int(n) => *n,
                            _ => 0,
                        })
                        .collect(),
                )
            }
            _ => Items::Values(values),
        }
    }
}

impl FromIterator<Value> for Items {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Self {
        Items::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl Items {
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Items::Values(items) => items.len(),
            Items::Bools(items) => items.len(),
            Items::Ints(items) => items.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `at`, or `None` past the end.
    #[inline(always)]
    pub fn get(&self, at: usize) -> Option<Value> {
        match self {
            Items::Values(items) => items.get(at).cloned(),
            Items::Bools(items) => items.get(at).map(|&b| Value::Bool(b)),
            Items::Ints(items) => items.get(at).map(|&n| Value::Int(n)),
        }
    }

    /// Replaces item `at`, which must be in bounds (the caller has normalized the index).
    #[inline(always)]
    pub fn set(&mut self, at: usize, v: Value) {
        match self {
            Items::Values(items) => drop_value(std::mem::replace(&mut items[at], v)),
            // `forget`: a scalar has nothing to drop, but the compiler called the destructor.
            Items::Bools(items) => match v {
                Value::Bool(b) => {
                    items[at] = b;
                    std::mem::forget(v);
                }
                v => self.set_unpacked(at, v),
            },
            Items::Ints(items) => match v {
                Value::Int(n) => {
                    items[at] = n;
                    std::mem::forget(v);
                }
                v => self.set_unpacked(at, v),
            },
        }
    }

    #[cold]
    #[inline(never)]
    fn set_unpacked(&mut self, at: usize, v: Value) {
        drop_value(std::mem::replace(&mut self.unpacked()[at], v));
    }

    pub fn push(&mut self, v: Value) {
        match (&mut *self, v) {
            (Items::Bools(items), Value::Bool(b)) => items.push(b),
            (Items::Ints(items), Value::Int(n)) => items.push(n),
            // An empty list takes the kind of its first item: `[]` then `append` in a loop.
            (Items::Values(items), Value::Bool(b)) if items.is_empty() => {
                *self = Items::Bools(vec![b])
            }
            (Items::Values(items), Value::Int(n)) if items.is_empty() => {
                *self = Items::Ints(vec![n])
            }
            (_, v) => self.unpacked().push(v),
        }
    }

    /// Removes and returns item `at`, which must be in bounds.
    pub fn remove(&mut self, at: usize) -> Value {
        match self {
            Items::Values(items) => items.remove(at),
            Items::Bools(items) => Value::Bool(items.remove(at)),
            Items::Ints(items) => Value::Int(items.remove(at)),
        }
    }

    /// Inserts `v` before item `at` (`at` may be the length).
    pub fn insert(&mut self, at: usize, v: Value) {
        match (&mut *self, v) {
            (Items::Bools(items), Value::Bool(b)) => items.insert(at, b),
            (Items::Ints(items), Value::Int(n)) => items.insert(at, n),
            (_, v) => self.unpacked().insert(at, v),
        }
    }

    pub fn reverse(&mut self) {
        match self {
            Items::Values(items) => items.reverse(),
            Items::Bools(items) => items.reverse(),
            Items::Ints(items) => items.reverse(),
        }
    }

    /// The items as values, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Value> + '_ {
        (0..self.len()).map(|at| self.get(at).unwrap_or_default())
    }

    pub fn to_vec(&self) -> Vec<Value> {
        match self {
            Items::Values(items) => items.clone(),
            _ => self.iter().collect(),
        }
    }

    /// The items in `range`, which must be in bounds, as a list of the same kind.
    pub fn slice(&self, range: Range<usize>) -> Items {
        match self {
            Items::Values(items) => Items::Values(items[range].to_vec()),
            Items::Bools(items) => Items::Bools(items[range].to_vec()),
            Items::Ints(items) => Items::Ints(items[range].to_vec()),
        }
    }

    /// The items `n` times over (`list * n`).
    pub fn repeat(&self, n: usize) -> Items {
        match self {
            Items::Values(items) => {
                let mut out = Vec::with_capacity(items.len() * n);
                for _ in 0..n {
                    out.extend_from_slice(items);
                }
                Items::Values(out)
            }
            Items::Bools(items) => Items::Bools(items.repeat(n)),
            Items::Ints(items) => Items::Ints(items.repeat(n)),
        }
    }

    /// Appends `more`'s items (`list + more`, `list.extend(more)`).
    pub fn extend_from(&mut self, more: &Items) {
        match (&mut *self, more) {
            (Items::Bools(items), Items::Bools(more)) => items.extend_from_slice(more),
            (Items::Ints(items), Items::Ints(more)) => items.extend_from_slice(more),
            (Items::Values(items), _) if items.is_empty() => *self = more.clone(),
            _ => self.unpacked().extend(more.iter()),
        }
    }

    /// The items as values, unpacking them first if they are packed.
    fn unpacked(&mut self) -> &mut Vec<Value> {
        if !matches!(self, Items::Values(_)) {
            *self = Items::Values(self.iter().collect());
        }
        match self {
            Items::Values(items) => items,
            // Unpacked just above.
            Items::Bools(_) | Items::Ints(_) => unreachable!("a list was unpacked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(items: &Items) -> Vec<i64> {
        items
            .iter()
            .map(|v| match v {
                Value::Int(n) => n,
                Value::Bool(b) => i64::from(b) + 100,
                _ => -1,
            })
            .collect()
    }

    #[test]
    fn lists_of_one_scalar_kind_are_packed() {
        assert!(matches!(
            Items::from(vec![Value::Bool(true), Value::Bool(false)]),
            Items::Bools(_)
        ));
        assert!(matches!(
            Items::from(vec![Value::Int(1), Value::Int(2)]),
            Items::Ints(_)
        ));
        // Mixed kinds, and a bool among ints (which compares equal to one), stay values.
        assert!(matches!(
            Items::from(vec![Value::Int(1), Value::Bool(true)]),
            Items::Values(_)
        ));
        assert!(matches!(
            Items::from(vec![Value::Int(1), Value::Float(2.0)]),
            Items::Values(_)
        ));
        assert!(matches!(Items::from(vec![]), Items::Values(_)));
    }

    #[test]
    fn storing_another_kind_unpacks_and_keeps_the_items() {
        let mut items = Items::from(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        items.set(1, Value::Int(20));
        assert!(matches!(items, Items::Ints(_)));
        items.set(2, Value::Bool(true));
        assert!(matches!(items, Items::Values(_)));
        assert_eq!(ints(&items), [1, 20, 101]);

        let mut flags = Items::from(vec![Value::Bool(false)]).repeat(3);
        flags.push(Value::Bool(true));
        assert!(matches!(flags, Items::Bools(_)));
        flags.push(Value::str("x"));
        assert_eq!(flags.len(), 5);
        assert!(matches!(flags.get(4), Some(Value::Str(s)) if &*s == "x"));
        assert_eq!(ints(&flags.slice(0..4)), [100, 100, 100, 101]);
    }

    #[test]
    fn an_empty_list_takes_the_kind_of_its_first_item() {
        let mut items = Items::default();
        items.push(Value::Int(7));
        items.push(Value::Int(8));
        assert!(matches!(items, Items::Ints(_)));
        let mut more = Items::default();
        more.extend_from(&items);
        more.extend_from(&Items::from(vec![Value::Bool(false)]));
        assert!(matches!(more, Items::Values(_)));
        assert_eq!(ints(&more), [7, 8, 100]);
        assert_eq!(more.get(3).map(|_| ()), None);
    }
}
