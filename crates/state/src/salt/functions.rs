//! `salt['…']` in a template: the small set of Salt's execution functions
//! a state tree reads while it renders. They are pure (they read the
//! agent's grains and pillar, nothing of the master's host); any other
//! function is an error naming it, so `check` says what a file needs.

use serde_json::Value;

/// The functions halite has, with what each does (README, "Rendering").
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("pillar.get", "a pillar value by `a:b:c` path, with a default (`''`), `merge=True` merges a map default under it"),
    ("pillar.items", "the whole pillar"),
    ("grains.get", "a grain by `a:b` path, with a default (`''`)"),
    ("grains.items", "every grain"),
    (
        "grains.filter_by",
        "the entry of a map chosen by a grain (`os_family` unless `grain=`), with `default=`, `base=` and `merge=`",
    ),
    ("config.get", "a pillar value, else a grain, else the default"),
    ("defaults.merge", "the first map merged recursively with the second (lists replaced unless `merge_lists=True`)"),
    ("defaults.deepcopy", "its argument"),
    ("file.join", "paths joined with `/` (a later absolute part starts over, as Python's os.path.join)"),
    ("file.basename", "the last part of a path"),
    ("file.dirname", "a path without its last part"),
];

/// Why a `salt[...]` call failed; names the function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    #[error("salt['{name}'] is not supported by halite (it has {})", FUNCTIONS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Unknown { name: String },
    #[error("salt['{name}']: {reason}")]
    Arguments { name: String, reason: String },
}

/// What the functions read: one agent's grains and pillar.
#[derive(Debug, Clone, Default)]
pub struct Data {
    pub grains: Value,
    pub pillar: Value,
}

/// Positional and keyword arguments, as the template passed them.
#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<Value>,
    pub keywords: Vec<(String, Value)>,
}

impl Args {
    /// The argument at `index` or named `name`.
    fn get(&self, index: usize, name: &str) -> Option<&Value> {
        self.keywords.iter().find(|(k, _)| k == name).map(|(_, v)| v).or_else(|| self.positional.get(index))
    }

    fn text(&self, index: usize, name: &str, function: &str) -> Result<String, FunctionError> {
        match self.get(index, name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Ok(other.to_string()),
            None => Err(FunctionError::Arguments { name: function.to_owned(), reason: format!("`{name}` is missing") }),
        }
    }

    fn flag(&self, index: usize, name: &str) -> bool {
        self.get(index, name).is_some_and(|v| v.as_bool() == Some(true))
    }
}

/// Calls `salt[name](args)`.
pub fn call(name: &str, data: &Data, args: &Args) -> Result<Value, FunctionError> {
    let empty = Value::String(String::new());
    match name {
        "pillar.get" | "grains.get" | "config.get" => {
            let key = args.text(0, "key", name)?;
            let default = args.get(1, "default").cloned().unwrap_or(empty);
            let delimiter = args.get(usize::MAX, "delimiter").and_then(Value::as_str).unwrap_or(":");
            let found = match name {
                "pillar.get" => traverse(&data.pillar, &key, delimiter),
                "grains.get" => traverse(&data.grains, &key, delimiter),
                _ => traverse(&data.pillar, &key, delimiter).or_else(|| traverse(&data.grains, &key, delimiter)),
            };
            Ok(match found {
                Some(value) if name == "pillar.get" && args.flag(usize::MAX, "merge") && default.is_object() => {
                    let mut merged = default;
                    update(&mut merged, value, false);
                    merged
                }
                Some(value) => value.clone(),
                None => default,
            })
        }
        "pillar.items" => Ok(data.pillar.clone()),
        "grains.items" => Ok(data.grains.clone()),
        "grains.filter_by" => filter_by(data, args),
        "defaults.merge" => {
            let mut dest = args.get(0, "dest").cloned().unwrap_or(Value::Null);
            let src = args.get(1, "src").cloned().unwrap_or(Value::Null);
            if !dest.is_object() || !src.is_object() {
                return Err(FunctionError::Arguments {
                    name: name.to_owned(),
                    reason: "both arguments must be maps".to_owned(),
                });
            }
            update(&mut dest, &src, args.flag(2, "merge_lists"));
            Ok(dest)
        }
        "defaults.deepcopy" => Ok(args.get(0, "source").cloned().unwrap_or(Value::Null)),
        "file.join" => {
            let mut joined = String::new();
            for part in &args.positional {
                let part = part.as_str().map_or_else(|| part.to_string(), str::to_owned);
                if part.starts_with('/') || joined.is_empty() {
                    joined = part;
                } else {
                    if !joined.ends_with('/') {
                        joined.push('/');
                    }
                    joined.push_str(&part);
                }
            }
            Ok(Value::String(joined))
        }
        "file.basename" => {
            let path = args.text(0, "path", name)?;
            Ok(Value::String(path.rsplit('/').next().unwrap_or_default().to_owned()))
        }
        "file.dirname" => {
            let path = args.text(0, "path", name)?;
            Ok(Value::String(match path.rfind('/') {
                Some(0) => "/".to_owned(),
                Some(at) => path[..at].to_owned(),
                None => String::new(),
            }))
        }
        _ => Err(FunctionError::Unknown { name: name.to_owned() }),
    }
}

/// Salt's `traverse_dict_and_list`: `a:b:0:c`, through maps by key and
/// lists by index.
pub fn traverse<'a>(data: &'a Value, key: &str, delimiter: &str) -> Option<&'a Value> {
    if let Some(found) = data.as_object().and_then(|m| m.get(key)) {
        return Some(found);
    }
    let mut at = data;
    for part in key.split(delimiter) {
        at = match at {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Salt's `dictupdate.update`: maps merge recursively, the rest is
/// replaced (lists extended when `merge_lists`).
pub fn update(dest: &mut Value, src: &Value, merge_lists: bool) {
    match (dest, src) {
        (Value::Object(dest), Value::Object(src)) => {
            for (key, value) in src {
                match dest.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => update(existing, value, merge_lists),
                    Some(Value::Array(existing)) if merge_lists && value.is_array() => {
                        existing.extend(value.as_array().into_iter().flatten().cloned());
                    }
                    _ => {
                        dest.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (dest, src) => *dest = src.clone(),
    }
}

fn filter_by(data: &Data, args: &Args) -> Result<Value, FunctionError> {
    let name = "grains.filter_by";
    let Some(Value::Object(lookup)) = args.get(0, "lookup_dict") else {
        return Err(FunctionError::Arguments {
            name: name.to_owned(),
            reason: "the first argument must be a map".to_owned(),
        });
    };
    let grain = args.get(1, "grain").and_then(Value::as_str).unwrap_or("os_family");
    // Python's `if merge:`: an empty pillar.get answer ('') is no merge.
    let merge = args.get(2, "merge").filter(|v| match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => true,
    });
    let default = args.get(3, "default").and_then(Value::as_str).unwrap_or("default");
    let base = args.get(4, "base").and_then(Value::as_str);
    let values: Vec<String> = match traverse(&data.grains, grain, ":") {
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    // Keys may be globs, matched with case (Python's fnmatchcase).
    let matches = |value: &str, key: &str| {
        globset::Glob::new(key).map(|g| g.compile_matcher().is_match(value)).unwrap_or(key == value)
    };
    let mut chosen: Option<Value> =
        values.iter().find_map(|value| lookup.iter().find(|(key, _)| matches(value, key)).map(|(_, v)| v.clone()));
    if chosen.is_none() {
        chosen = lookup.get(default).cloned();
    }
    if let Some(base_values) = base.and_then(|b| lookup.get(b)) {
        chosen = Some(match chosen {
            None => base_values.clone(),
            Some(found) => {
                let mut merged = base_values.clone();
                update(&mut merged, &found, false);
                merged
            }
        });
    }
    if let Some(merge) = merge {
        if !merge.is_object() {
            return Err(FunctionError::Arguments { name: name.to_owned(), reason: "`merge` must be a map".to_owned() });
        }
        chosen = Some(match chosen {
            None => merge.clone(),
            Some(mut found) => {
                update(&mut found, merge, false);
                found
            }
        });
    }
    Ok(chosen.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Data {
        Data {
            grains: json!({"os": "Debian", "os_family": "Debian", "ipv4": ["10.0.0.5", "127.0.0.1"], "id": "web1"}),
            pillar: json!({"nginx": {"port": 8080, "sites": [{"name": "a"}]}, "role": "web"}),
        }
    }

    fn call_with(name: &str, positional: Value, keywords: Value) -> Result<Value, FunctionError> {
        let args = Args {
            positional: positional.as_array().cloned().unwrap_or_default(),
            keywords: keywords.as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default(),
        };
        call(name, &data(), &args)
    }

    #[test]
    fn functions_answer_as_salt_does() {
        let cases = [
            ("pillar.get", json!(["nginx:port"]), json!({}), json!(8080)),
            ("pillar.get", json!(["nginx:missing", 80]), json!({}), json!(80)),
            ("pillar.get", json!(["nginx:missing"]), json!({}), json!("")),
            ("pillar.get", json!(["nginx:sites:0:name"]), json!({}), json!("a")),
            ("pillar.get", json!(["nginx.port"]), json!({"delimiter": "."}), json!(8080)),
            (
                "pillar.get",
                json!(["nginx", {"port": 80, "user": "www"}]),
                json!({"merge": true}),
                json!({"port": 8080, "user": "www", "sites": [{"name": "a"}]}),
            ),
            ("grains.get", json!(["os"]), json!({}), json!("Debian")),
            ("grains.get", json!(["ipv4:1"]), json!({}), json!("127.0.0.1")),
            ("config.get", json!(["role"]), json!({}), json!("web")),
            ("config.get", json!(["os"]), json!({}), json!("Debian")),
            (
                "defaults.merge",
                json!([{"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}]),
                json!({}),
                json!({"a": {"b": 1, "c": [2]}}),
            ),
            ("defaults.merge", json!([{"a": [1]}, {"a": [2]}]), json!({"merge_lists": true}), json!({"a": [1, 2]})),
            ("file.join", json!(["/srv", "salt", "x.conf"]), json!({}), json!("/srv/salt/x.conf")),
            ("file.join", json!(["/srv", "/etc", "x"]), json!({}), json!("/etc/x")),
            ("file.basename", json!(["/etc/nginx/nginx.conf"]), json!({}), json!("nginx.conf")),
            ("file.dirname", json!(["/etc/nginx/nginx.conf"]), json!({}), json!("/etc/nginx")),
            (
                "grains.filter_by",
                json!([{"Debian": {"pkg": "apache2"}, "RedHat": {"pkg": "httpd"}}]),
                json!({}),
                json!({"pkg": "apache2"}),
            ),
            (
                "grains.filter_by",
                json!([{"Deb*": {"pkg": "apache2"}, "default": {"pkg": "x"}}]),
                json!({"grain": "os"}),
                json!({"pkg": "apache2"}),
            ),
            (
                "grains.filter_by",
                json!([{"RedHat": {"pkg": "httpd"}, "default": {"pkg": "x", "port": 80}}]),
                json!({"merge": {"port": 81}}),
                json!({"pkg": "x", "port": 81}),
            ),
            (
                "grains.filter_by",
                json!([{"common": {"user": "www", "pkg": "none"}, "Debian": {"pkg": "apache2"}}]),
                json!({"base": "common"}),
                json!({"user": "www", "pkg": "apache2"}),
            ),
        ];
        for (name, positional, keywords, expected) in cases {
            assert_eq!(call_with(name, positional.clone(), keywords).unwrap(), expected, "{name} {positional}");
        }
    }

    #[test]
    fn other_functions_are_named() {
        let error = call_with("cmd.run", json!(["id"]), json!({})).unwrap_err().to_string();
        assert!(error.starts_with("salt['cmd.run'] is not supported by halite"), "{error}");
        assert!(error.contains("pillar.get"), "{error}");
        let error = call_with("defaults.merge", json!([1, {}]), json!({})).unwrap_err().to_string();
        assert!(error.contains("salt['defaults.merge']"), "{error}");
    }
}
