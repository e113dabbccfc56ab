//! YAML in, typed values out, with the line and column of every problem.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
pub use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Location};

/// Parses a whole file; a syntax or shape error becomes one diagnostic.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, Diagnostic> {
    serde_saphyr::from_str(text).map_err(|error| {
        let at = error.location().map(Location::from).unwrap_or(Location::FILE);
        Diagnostic::error(file, at, strip_position(&error.without_snippet().to_string()))
            .help("check the YAML syntax and indentation at that position")
    })
}

/// serde-saphyr appends " at line L, column C" to its messages; the
/// diagnostic says where already.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

pub fn location<T>(spanned: &Spanned<T>) -> Location {
    spanned.referenced.into()
}

/// The arguments of a state: a mapping (halite's form) or Salt's list of
/// single-key mappings, with the location of every key and value.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub entries: Vec<(Spanned<String>, Spanned<serde_json::Value>)>,
    /// Bare words in Salt's list form (`pkg: [installed, {version: 1}]`):
    /// the function of Salt's short form, taken out by the loader
    /// (`sls::short_forms`); anything left here is reported there.
    pub functions: Vec<String>,
}

impl Fields {
    pub fn get(&self, key: &str) -> Option<&Spanned<serde_json::Value>> {
        self.entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }

    /// Where `key` is written, if it is.
    pub fn key_location(&self, key: &str) -> Option<Location> {
        self.entries.iter().find(|(k, _)| k.value == key).map(|(k, _)| location(k))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.entries.iter().map(|(k, v)| (k.value.clone(), v.value.clone())).collect())
    }

    /// Deserializes into a kind's typed arguments. A failure names the
    /// offending key where serde says which one it is.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, (Option<Location>, String)> {
        serde_json::from_value(self.to_json()).map_err(|error| {
            let message = error.to_string();
            let key =
                message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()).map(str::to_owned);
            (key.and_then(|k| self.key_location(&k)), message)
        })
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        type Entry = (Spanned<String>, Spanned<serde_json::Value>);

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of arguments, or a list of single-key mappings (Salt's form)")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Fields, E> {
                Ok(Fields::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut entries: Vec<Entry> = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Fields { entries, functions: Vec::new() })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fields, A::Error> {
                let mut entries: Vec<Entry> = Vec::new();
                let mut functions = Vec::new();
                while let Some(item) = seq.next_element::<Item>()? {
                    match item {
                        Item::Map(map) => entries.extend(map),
                        Item::Word(word) => functions.push(word),
                    }
                }
                Ok(Fields { entries, functions })
            }
        }

        deserializer.deserialize_any(FieldsVisitor)
    }
}

/// One item of Salt's list form: an argument (`- name: x`) or a bare word
/// (`- installed`). A word has no location of its own (the parser gives
/// locations only to `Spanned` values); the loader reports it at its kind.
enum Item {
    Map(Vec<(Spanned<String>, Spanned<serde_json::Value>)>),
    Word(String),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`key: value`, or a bare function name (`- installed`)")
            }

            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Item, E> {
                Ok(Item::Word(word.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Item::Map(entries))
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    type StateFile = IndexMap<Spanned<String>, IndexMap<Spanned<String>, Fields>>;

    #[test]
    fn both_argument_forms_give_the_same_fields() {
        let native: StateFile =
            parse(Path::new("a.yaml"), "s:\n  file.managed:\n    path: /x\n    mode: '0644'\n").unwrap();
        let salt: StateFile =
            parse(Path::new("a.yaml"), "s:\n  file.managed:\n    - path: /x\n    - mode: '0644'\n").unwrap();
        let fields = |f: &StateFile| f.values().next().unwrap().values().next().unwrap().to_json();
        assert_eq!(fields(&native), fields(&salt));
    }

    #[test]
    fn syntax_error_has_position() {
        let error = parse::<serde_json::Value>(Path::new("t.yaml"), "a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!((error.line, error.column), (2, 2));
        assert!(!error.message.contains("at line"), "{}", error.message);
    }

    #[test]
    fn unknown_key_is_located() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Args {
            path: String,
        }
        let file: StateFile = parse(Path::new("a.yaml"), "s:\n  k:\n    path: /x\n    sourc: y\n").unwrap();
        let fields = file.values().next().unwrap().values().next().unwrap();
        let (at, message) = fields.decode::<Args>().unwrap_err();
        assert_eq!(at, Some(Location::new(4, 5)));
        assert!(message.contains("sourc"));
    }
}
