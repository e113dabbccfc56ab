//! [`Value`]: event data and state arguments in a form postcard can carry.
//!
//! postcard is not self-describing, so `serde_json::Value` (which needs
//! `deserialize_any`) cannot cross the wire. `Value` is the same data model as
//! an explicit enum, plus `Bytes` for file contents, with lossless conversion
//! to and from JSON for the outside world (publisher, templates, `exec` stdin).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A dynamically typed value. Append-only: new variants go at the end, since
/// postcard encodes the variant index.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// Raw bytes (file contents). JSON shows them as a UTF-8 string when they
    /// are valid UTF-8, otherwise as an array of numbers.
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// How deep lists and maps may nest in a decoded value. Decoding is
/// recursive, so without a bound a small hostile frame of nested lists would
/// overflow the stack.
pub const MAX_DEPTH: usize = 64;

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many values one decode may produce (every element of every list
/// and map counts, at any depth). Postcard's encoding of `Null` is one
/// byte, so without it a 28 MiB frame of nulls decodes to 30 million
/// values, about 2 GiB.
pub const MAX_DECODED_VALUES: usize = 1 << 18;
/// How many bytes the values of one decode may hold: strings, byte strings
/// and map keys, plus [`VALUE_COST`] per value.
pub const MAX_DECODED_BYTES: usize = 48 << 20;
/// What one decoded value costs against [`MAX_DECODED_BYTES`] besides its
/// text: the enum itself and its share of its container.
pub const VALUE_COST: usize = 2 * std::mem::size_of::<Value>();

/// What the values decoded so far on this thread may still cost; `None`
/// outside a budgeted decode (see [`with_budget`]).
#[derive(Debug, Clone, Copy)]
struct Budget {
    values: usize,
    bytes: usize,
}

thread_local! {
    static BUDGET: std::cell::Cell<Option<Budget>> = const { std::cell::Cell::new(None) };
}

/// Runs `decode` with a fresh budget of [`MAX_DECODED_VALUES`] values and
/// [`MAX_DECODED_BYTES`] bytes for the [`Value`]s it decodes; a value over
/// the budget fails the decode. Budgets do not nest: an inner call gets a
/// fresh one and the outer resumes with none left over.
pub fn with_budget<T>(decode: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(None));
        }
    }
    BUDGET.with(|b| b.set(Some(Budget { values: MAX_DECODED_VALUES, bytes: MAX_DECODED_BYTES })));
    let _reset = Reset;
    decode()
}

/// Charges one decoded value holding `bytes` of text to the budget, if
/// one runs; false when it is spent.
fn charge(bytes: usize) -> bool {
    BUDGET.with(|cell| match cell.get() {
        None => true,
        Some(budget) => {
            let cost = bytes.saturating_add(VALUE_COST);
            if budget.values == 0 || budget.bytes < cost {
                return false;
            }
            cell.set(Some(Budget { values: budget.values - 1, bytes: budget.bytes - cost }));
            true
        }
    })
}

/// Deserializes a sequence within the decode budget (see [`with_budget`]):
/// each element costs one value and its size in memory, so a sequence of
/// elements small on the wire (an empty string is one byte there, 24 in
/// memory) cannot grow past the budget. For the sequences of the
/// messages an agent sends (`#[serde(deserialize_with = ...)]`).
pub fn budgeted_seq<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Seq<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Seq<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // The declared length is the peer's word: never trusted for more
            // than a small first allocation.
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
            while let Some(item) = seq.next_element()? {
                if !charge(std::mem::size_of::<T>()) {
                    return Err(serde::de::Error::custom("sequence over the decoding budget"));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(Seq(std::marker::PhantomData))
}

/// Counts nesting while a value decodes; dropping it steps back out.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Option<Self> {
        DEPTH.with(|depth| {
            if depth.get() >= MAX_DEPTH {
                return None;
            }
            depth.set(depth.get() + 1);
            Some(DepthGuard)
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// The derived decoding of [`Value`], wrapped by a depth check.
#[derive(Deserialize)]
#[serde(rename = "Value")]
enum ValueRepr {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let _guard =
            DepthGuard::enter().ok_or_else(|| serde::de::Error::custom("value nested deeper than MAX_DEPTH"))?;
        let value = ValueRepr::deserialize(deserializer)?;
        let text = match &value {
            ValueRepr::String(s) => s.len(),
            ValueRepr::Bytes(b) => b.len(),
            ValueRepr::Map(map) => map.keys().map(String::len).sum(),
            _ => 0,
        };
        if !charge(text) {
            return Err(serde::de::Error::custom(format!(
                "value over the decoding budget ({MAX_DECODED_VALUES} values, {MAX_DECODED_BYTES} bytes)"
            )));
        }
        Ok(match value {
            ValueRepr::Null => Value::Null,
            ValueRepr::Bool(b) => Value::Bool(b),
            ValueRepr::Int(i) => Value::Int(i),
            ValueRepr::Float(f) => Value::Float(f),
            ValueRepr::String(s) => Value::String(s),
            ValueRepr::Bytes(b) => Value::Bytes(b),
            ValueRepr::List(items) => Value::List(items),
            ValueRepr::Map(map) => Value::Map(map),
        })
    }
}

impl Value {
    /// How many values this is (itself and everything inside it) and how
    /// many bytes of text (strings, byte strings, map keys) they hold: what
    /// the caps on hello facts and events count.
    pub fn size(&self) -> (usize, usize) {
        match self {
            Value::String(s) => (1, s.len()),
            Value::Bytes(b) => (1, b.len()),
            Value::List(items) => items.iter().fold((1, 0), |(n, b), item| {
                let (n2, b2) = item.size();
                (n + n2, b + b2)
            }),
            Value::Map(map) => map.iter().fold((1, 0), |(n, b), (key, item)| {
                let (n2, b2) = item.size();
                (n + n2, b + key.len() + b2)
            }),
            _ => (1, 0),
        }
    }

    /// An empty map, the usual start for event data.
    pub fn map() -> Self {
        Value::Map(BTreeMap::new())
    }

    /// Builder-style insert; does nothing unless `self` is a map.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Map(map) = &mut self {
            map.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Looks a key up in a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(map) => map.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => J::String(s.to_owned()),
                Err(_) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
            },
            Value::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(map) => J::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    pub fn from_json(json: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::String(s.clone()),
            J::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            J::Object(map) => Value::Map(map.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect()),
        }
    }
}

/// A [`Value`] serialised as the JSON [`Value::to_json`] makes, without
/// building that JSON tree first (the outside publisher's hot path).
pub struct AsJson<'a>(pub &'a Value);

impl Serialize for AsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            // JSON has no NaN or infinity: `to_json` makes them null.
            Value::Float(f) if f.is_finite() => serializer.serialize_f64(*f),
            Value::Float(_) => serializer.serialize_unit(),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => serializer.serialize_str(s),
                Err(_) => serializer.collect_seq(b.iter()),
            },
            Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&AsJson(item))?;
                }
                seq.end()
            }
            Value::Map(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    out.serialize_entry(key, &AsJson(value))?;
                }
                out.end()
            }
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(b)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_values_and_bytes_and_ends_with_its_decode() {
        with_budget(|| {
            assert!(charge(MAX_DECODED_BYTES - VALUE_COST));
            assert!(!charge(0), "the bytes are spent");
        });
        assert!(charge(usize::MAX - VALUE_COST), "no budget outside a decode");
        with_budget(|| {
            for _ in 0..MAX_DECODED_VALUES {
                assert!(charge(0));
            }
            assert!(!charge(0), "the values are spent");
        });
        let value = Value::map().with("ab", Value::List(vec![Value::from("xyz"), Value::Null]));
        assert_eq!(value.size(), (4, 5));
    }

    #[test]
    fn json_round_trip_keeps_structure() {
        let json = serde_json::json!({"kind": "modify", "n": 3, "ok": true, "xs": [1.5, null]});
        assert_eq!(Value::from_json(&json).to_json(), json);
    }

    #[test]
    fn bytes_show_as_text_when_utf8() {
        assert_eq!(Value::Bytes(b"hi".to_vec()).to_json(), serde_json::json!("hi"));
        assert_eq!(Value::Bytes(vec![0xff]).to_json(), serde_json::json!([255]));
    }
}
