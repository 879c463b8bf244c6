//! Runtime values. Cheap to clone: scalars inline, everything else behind an `Rc`.
//!
//! **Architecture Invariant:** values never leave the scheduler's thread; data crosses the
//! library boundary as `serde_json::Value` (see `to_json` / `from_json`).

use crate::state::{Part, StateRef};
use indexmap::IndexMap;
use sglc_compiler::bytecode::FunctionId;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

pub use crate::shared_str::Str;

pub use crate::list::Items;

pub type List = Rc<RefCell<Items>>;
/// The hasher of script maps: foldhash, seeded per process. SipHash, the standard one, took
/// 6% of the instructions of a loop scoring strings with `word in map`; foldhash keeps some
/// resistance to chosen collisions.
pub type MapHasher = foldhash::fast::RandomState;
/// A script map's entries, in insertion order.
pub type Dict = IndexMap<Str, Value, MapHasher>;
pub type Map = Rc<RefCell<Dict>>;

/// Maps of at most this many entries are searched by a scan of their keys, not by hash.
const SCANNED_MAP_LEN: usize = 8;

/// Where `key` is in `map`. Most maps are small (a JSON object, a few options, a vocabulary
/// to test words against): for those a scan of the keys, which for short (inline) strings
/// compares one word each, beats hashing the key (a third of the instructions of `w in map`).
#[inline]
pub fn dict_index_of(map: &Dict, key: &Str) -> Option<usize> {
    if map.len() <= SCANNED_MAP_LEN {
        map.keys().position(|k| k == key)
    } else {
        map.get_index_of(key.as_str())
    }
}

/// `repr(u64)`: the tag is a whole word and every payload starts at the second, so a value is
/// written and read as two words. With the default layout a bool sat at byte 1 and a function
/// id at byte 4, and the compiler copied values in pieces (1, 1, 4, 2 and 8 bytes) that the
/// CPU cannot forward to the next 16-byte read of the same slot: the interpreter ran 4% fewer
/// instructions with this layout and a string-scoring loop took a fifth less time.
#[derive(Clone, Default)]
#[repr(u64)]
pub enum Value {
    #[default]
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Str),
    List(List),
    Map(Map),
    Function(FunctionId),
    /// A program state: the prompt so far, its variables and its pending calls.
    State(StateRef),
    /// A prompt fragment: what `gen(...)`, `select(...)`, roles and `+` between them build.
    Fragment(Rc<Vec<Part>>),
    /// A `for` loop's position; never visible to scripts.
    Iterator(Rc<RefCell<Iter>>),
}

// Two words: the interpreter moves values in registers (see `Str`).
const _: () = assert!(std::mem::size_of::<Value>() == 16);

/// `texts` in one string, or `Err` with its length when longer than `max_bytes`.
fn concat_within(texts: &[&str], max_bytes: usize) -> Result<Str, usize> {
    let len = texts.iter().map(|t| t.len()).sum();
    if len > max_bytes {
        return Err(len);
    }
    Ok(Str::concat(len, texts.iter().copied()))
}

pub enum Iter {
    List {
        list: List,
        next: usize,
    },
    Chars {
        chars: Vec<char>,
        next: usize,
    },
    /// The rest of a `range()` a compiled loop was iterating when it handed back to the
    /// interpreter: `start + k * step` for `k` in `index..count`, made on demand.
    Range {
        start: i64,
        step: i64,
        index: i64,
        count: i64,
    },
}

/// How many items `range(start, stop, step)` has (`step` not zero). In i128: `stop - start` of
/// two i64 overflows i64 at the extremes, and every item lies between start and stop.
pub fn range_count(start: i64, stop: i64, step: i64) -> i128 {
    let (start, stop, step) = (i128::from(start), i128::from(stop), i128::from(step));
    if step > 0 {
        (stop - start + step - 1).max(0) / step
    } else {
        (start - stop - step - 1).max(0) / -step
    }
}

impl Iter {
    #[inline(always)]
    pub fn next_item(&mut self) -> Option<Value> {
        match self {
            Iter::List { list, next } => {
                let item = list.borrow().get(*next);
                *next += 1;
                item
            }
            Iter::Chars { chars, next } => {
                let item = chars.get(*next).map(|c| Value::string(c.to_string()));
                *next += 1;
                item
            }
            Iter::Range {
                start,
                step,
                index,
                count,
            } => {
                if *index >= *count {
                    return None;
                }
                let item = start.wrapping_add(index.wrapping_mul(*step));
                *index += 1;
                Some(Value::Int(item))
            }
        }
    }
}

impl Value {
    #[inline]
    pub fn str(s: &str) -> Value {
        Value::Str(Str::from(s))
    }

    /// A string value from an owned `String` (copied into the value's single allocation).
    pub fn string(s: String) -> Value {
        Value::Str(Str::from(s))
    }

    /// A list of `items` (packed when they are all bools or all ints: see `Items`).
    pub fn list(items: Vec<Value>) -> Value {
        Value::list_of(Items::from(items))
    }

    #[inline]
    pub fn list_of(items: Items) -> Value {
        Value::List(Rc::new(RefCell::new(items)))
    }

    pub fn map(entries: Dict) -> Value {
        Value::Map(Rc::new(RefCell::new(entries)))
    }

    /// The type name shown in error messages and used to find methods.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Function(_) => "function",
            Value::State(_) => "state",
            Value::Fragment(_) => "fragment",
            Value::Iterator(_) => "iterator",
        }
    }

    pub fn is_truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(n) => *n != 0,
            Value::Float(x) => *x != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.borrow().is_empty(),
            Value::Map(m) => !m.borrow().is_empty(),
            _ => true,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Int(n) => Some(*n as f64),
            Value::Float(x) => Some(*x),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// Structural equality, with ints and floats comparing by value (as in Python).
    pub fn equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                self.as_float() == other.as_float()
            }
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::List(a), Value::List(b)) => {
                Rc::ptr_eq(a, b) || {
                    let (a, b) = (a.borrow(), b.borrow());
                    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.equals(&y))
                }
            }
            (Value::Map(a), Value::Map(b)) => {
                Rc::ptr_eq(a, b) || {
                    let (a, b) = (a.borrow(), b.borrow());
                    a.len() == b.len()
                        && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.equals(w)))
                }
            }
            (Value::Function(a), Value::Function(b)) => a == b,
            (Value::State(a), Value::State(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Ordering for `<` and `sorted`: numbers, strings and lists of those; `None` when unordered.
    pub fn compare(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (
                Value::Int(_) | Value::Float(_) | Value::Bool(_),
                Value::Int(_) | Value::Float(_) | Value::Bool(_),
            ) => self.as_float()?.partial_cmp(&other.as_float()?),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::List(a), Value::List(b)) => {
                let (a, b) = (a.borrow(), b.borrow());
                for (x, y) in a.iter().zip(b.iter()) {
                    match x.compare(&y)? {
                        std::cmp::Ordering::Equal => continue,
                        other => return Some(other),
                    }
                }
                Some(a.len().cmp(&b.len()))
            }
            _ => None,
        }
    }

    /// `str(v)`: strings as they are, everything else as its repr.
    /// `str(v)` as a string value: a string is itself, an int is formatted without the
    /// general formatting machinery (f-strings format ints in loops).
    pub fn display_str(&self) -> Str {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(n) => Str::from(itoa::Buffer::new().format(*n)),
            _ => Str::from(self.repr()),
        }
    }

    /// The parts of an f-string, each shown as `display_str` shows it, in one string sized
    /// and written once: with only strings and ints, the usual parts, the ints are formatted
    /// on the stack, with no string of their own. `Err` with the length when it would be
    /// longer than `max_bytes`.
    pub fn concat_display<P: std::borrow::Borrow<Value>>(
        parts: &[P],
        max_bytes: usize,
    ) -> Result<Str, usize> {
        const ON_STACK: usize = 8;
        let plain = |p: &P| matches!(p.borrow(), Value::Str(_) | Value::Int(_));
        if parts.len() <= ON_STACK && parts.iter().all(plain) {
            let mut digits = [itoa::Buffer::new(); ON_STACK];
            let mut texts = [""; ON_STACK];
            for ((part, text), digits) in parts.iter().zip(&mut texts).zip(&mut digits) {
                *text = match part.borrow() {
                    Value::Str(s) => s.as_str(),
                    Value::Int(n) => digits.format(*n),
                    _ => "",
                };
            }
            return concat_within(&texts[..parts.len()], max_bytes);
        }
        let shown: Vec<Str> = parts.iter().map(|p| p.borrow().display_str()).collect();
        let texts: Vec<&str> = shown.iter().map(|s| s.as_str()).collect();
        concat_within(&texts, max_bytes)
    }

    pub fn to_display(&self) -> String {
        match self {
            Value::Str(s) => s.to_string(),
            _ => self.repr(),
        }
    }

    /// The printed form: strings quoted, as in a list.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out, 0);
        out
    }

    fn write_repr(&self, out: &mut String, depth: usize) {
        if depth > 64 {
            out.push_str("...");
            return;
        }
        match self {
            Value::None => out.push_str("none"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Float(x) => out.push_str(&format_float(*x)),
            Value::Str(s) => {
                let _ = write!(out, "{:?}", &**s);
            }
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.borrow().iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_repr(out, depth + 1);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.borrow().iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{:?}: ", &**k);
                    v.write_repr(out, depth + 1);
                }
                out.push('}');
            }
            Value::Function(id) => {
                let _ = write!(out, "<function #{id}>");
            }
            Value::State(_) => out.push_str("<state>"),
            Value::Fragment(parts) => {
                out.push_str("<fragment ");
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" + ");
                    }
                    out.push_str(&part.describe());
                }
                out.push('>');
            }
            Value::Iterator(_) => out.push_str("<iterator>"),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_depth(0)
    }

    fn to_json_depth(&self, depth: usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth > 128 {
            return J::String("...".into());
        }
        match self {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(n) => J::from(*n),
            Value::Float(x) => serde_json::Number::from_f64(*x)
                .map_or_else(|| J::String(format_float(*x)), J::Number),
            Value::Str(s) => J::String(s.to_string()),
            Value::List(items) => J::Array(
                items
                    .borrow()
                    .iter()
                    .map(|v| v.to_json_depth(depth + 1))
                    .collect(),
            ),
            Value::Map(entries) => J::Object(
                entries
                    .borrow()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json_depth(depth + 1)))
                    .collect(),
            ),
            other => J::String(other.repr()),
        }
    }

    pub fn from_json(json: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::None,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::str(s),
            J::Array(items) => Value::list(items.iter().map(Value::from_json).collect()),
            J::Object(entries) => Value::map(
                entries
                    .iter()
                    .map(|(k, v)| (Str::from(k.as_str()), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Floats print as Python's `repr` prints them: the shortest digits that read back as the
/// same float, written out for exponents from -4 to 15 (always with a decimal point) and in
/// scientific notation otherwise (`1e+16`, `2.5e-08`).
pub fn format_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // Rust's `{:e}` and `{}` both give the shortest round-trip digits, as Python does.
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .and_then(|(m, e)| Some((m, e.parse::<i32>().ok()?)))
        .unwrap_or((&scientific, 0));
    if (-4..16).contains(&exponent) {
        let written = format!("{x}");
        if written.contains('.') {
            written
        } else {
            written + ".0"
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repr())
    }
}

/// Drops a value, skipping the out-of-line destructor call for the scalars that have none
/// (most values on a hot path are ints and bools).
#[inline(always)]
pub(crate) fn drop_value(v: Value) {
    match v {
        Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Function(_) => {
            std::mem::forget(v)
        }
        other => drop(other),
    }
}

#[cfg(test)]
mod tests {
    use super::format_float;

    #[test]
    fn floats_print_as_python_prints_them() {
        for (x, python) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.5, "1.5"),
            (100.0, "100.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.0 / 3.0, "0.3333333333333333"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (2.5e-8, "2.5e-08"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (-1e301, "-1e+301"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(format_float(x), python, "{x:?}");
        }
    }
}
