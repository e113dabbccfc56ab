//! What a Salt template sees beside its own file's names, for a state
//! file (salt/render.rs) and for file content (`template: jinja`,
//! template.rs) alike: `grains`, `pillar`, `salt[...]` (salt/functions.rs),
//! `saltenv`, `opts`; Salt's filters; Python's methods (minijinja-contrib's
//! `pycompat`), with a map's `.get` taking an `a:b:c` path and
//! `.filter_by(...)` on the grains map.

use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};

use crate::salt::functions::{self, Data};

/// A map a template may change in place, as a Python dict: what `{% set
/// x = … %}` binds when the value is a map (salt/render.rs rewrites each
/// such `set` through [`dict`]), so `{% do x.update(y) %}` and `{% do
/// salt['defaults.merge'](x, y) %}` change `x` itself, also from inside a
/// `for` loop or a macro, whose own `set` would not reach outside.
/// minijinja's own maps cannot change; this one keeps its entries behind
/// a lock and otherwise reads as a map (`x.a`, `x['a']`, `.items()`,
/// `| tojson`, iteration in insertion order).
#[derive(Debug, Default)]
pub(crate) struct Dict(Mutex<IndexMap<Value, Value>>);

impl Dict {
    fn entries(&self) -> std::sync::MutexGuard<'_, IndexMap<Value, Value>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Python's `dict.update(other)`: each key of `other` set, replacing.
    fn update_from(&self, other: &Value) -> Result<(), Error> {
        if other.kind() != ValueKind::Map {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("update() takes a map, not {}", other.kind())));
        }
        let pairs: Vec<(Value, Value)> = other
            .try_iter()?
            .map(|key| {
                let value = other.get_item(&key).unwrap_or_default();
                (key, dict(value))
            })
            .collect();
        self.entries().extend(pairs);
        Ok(())
    }

    /// Salt's `defaults.merge(dest, src)`: maps merged key by key into this
    /// one (functions.rs's merge), in place.
    fn merge_from(&self, merged: &serde_json::Value) {
        let value = dict(Value::from_serialize(merged));
        let mut entries = self.entries();
        entries.clear();
        if let Ok(keys) = value.try_iter() {
            for key in keys {
                let item = value.get_item(&key).unwrap_or_default();
                entries.insert(key, item);
            }
        }
    }
}

impl Object for Dict {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.entries().get(key).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.entries().keys().cloned().collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.entries().len())
    }

    fn call_method(self: &Arc<Self>, _state: &State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "update" => {
                for arg in args {
                    if arg.is_kwargs() {
                        let kwargs = Kwargs::try_from(arg.clone())?;
                        for key in kwargs.args() {
                            let value = dict(kwargs.get::<Value>(key)?);
                            self.entries().insert(Value::from(key), value);
                        }
                    } else {
                        self.update_from(arg)?;
                    }
                }
                Ok(Value::from(()))
            }
            "setdefault" => {
                let (key, default) = match args {
                    [key] => (key.clone(), Value::from(())),
                    [key, default] => (key.clone(), dict(default.clone())),
                    _ => return Err(Error::new(ErrorKind::InvalidOperation, "setdefault() takes a key and a default")),
                };
                Ok(self.entries().entry(key).or_insert(default).clone())
            }
            "pop" => match args {
                [key, rest @ ..] if rest.len() <= 1 => match self.entries().shift_remove(key) {
                    Some(value) => Ok(value),
                    None => rest
                        .first()
                        .cloned()
                        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("pop(): no key {key}"))),
                },
                _ => Err(Error::new(ErrorKind::InvalidOperation, "pop() takes a key and a default")),
            },
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `value` as a [`Dict`] when it is a map (its maps inside too, and those
/// in its lists), so it can change in place; a `Dict` is returned as it
/// is (two names for one dict, as in Python); anything else unchanged.
pub(crate) fn dict(value: Value) -> Value {
    if value.downcast_object_ref::<Dict>().is_some() {
        return value;
    }
    match value.kind() {
        ValueKind::Map => {
            let mut entries = IndexMap::new();
            if let Ok(keys) = value.try_iter() {
                for key in keys {
                    let item = value.get_item(&key).unwrap_or_default();
                    entries.insert(key, dict(item));
                }
            }
            Value::from_object(Dict(Mutex::new(entries)))
        }
        ValueKind::Seq => match value.try_iter() {
            Ok(items) => Value::from(items.map(dict).collect::<Vec<_>>()),
            Err(_) => value,
        },
        _ => value,
    }
}

/// The message for `.update(…)` on a map that cannot change (a global
/// such as `pillar`, or a map not bound by `set`): the rewrite that works.
pub(crate) const UPDATE_IMMUTABLE: &str = "`.update(…)` changes a map in place, which halite does only for a map bound with `{% set x = … %}` in a template (the pillar and grains cannot change); copy it first (`{% set x = salt['defaults.merge']({}, pillar.x) %}`) or write `{% set x = salt['defaults.merge'](x, {…}) %}`";

/// `salt`: `salt['pillar.get']` is a function of functions.rs.
#[derive(Debug)]
struct Salt {
    data: Arc<Data>,
}

impl Object for Salt {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?.to_owned();
        Some(Value::from_object(SaltFunction { name, data: self.data.clone() }))
    }
}

#[derive(Debug)]
pub(crate) struct SaltFunction {
    name: String,
    data: Arc<Data>,
}

impl Object for SaltFunction {
    fn call(self: &Arc<Self>, _state: &State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let mut call = functions::Args::default();
        for arg in args {
            if arg.is_kwargs() {
                let kwargs = Kwargs::try_from(arg.clone())?;
                for key in kwargs.args() {
                    call.keywords.push((key.to_owned(), to_json(&kwargs.get::<Value>(key)?)));
                }
            } else {
                call.positional.push(to_json(arg));
            }
        }
        let result = functions::call(&self.name, &self.data, &call)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
        // Salt's `defaults.merge` changes its first map in place (and
        // returns it): `{% do salt['defaults.merge'](x, y) %}` in a loop.
        if self.name == "defaults.merge"
            && let Some(dest) = args.first().and_then(|a| a.downcast_object_ref::<Dict>())
        {
            dest.merge_from(&result);
            return Ok(args[0].clone());
        }
        Ok(Value::from_serialize(result))
    }
}

pub(crate) fn to_json(value: &Value) -> serde_json::Value {
    if value.is_undefined() || value.is_none() {
        return serde_json::Value::Null;
    }
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

pub(crate) fn parse_data(kind: &str, text: &str, what: &str) -> Result<Value, Error> {
    let parsed: Result<serde_json::Value, String> = match kind {
        "yaml" => serde_saphyr::from_str(text).map_err(|e| e.to_string()),
        "json" => serde_json::from_str(text).map_err(|e| e.to_string()),
        _ => Ok(serde_json::Value::String(text.to_owned())),
    };
    parsed
        .map(Value::from_serialize)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("{what} is not {kind}: {e}")))
}

/// Salt's globals (`grains`, `pillar`, `salt`, `saltenv`, `opts`), its
/// filters and Python's methods, for a state file and for file content
/// (`template: jinja`, template.rs) alike.
pub(crate) fn add_salt(env: &mut Environment<'static>, data: &Arc<Data>) {
    for kind in ["yaml", "json", "text"] {
        env.add_filter(format!("load_{kind}"), move |text: String| parse_data(kind, &text, "the block"));
    }
    env.add_function("__halite_dict", dict);
    // YAML in flow style, as Salt's `yaml` filter writes by default; JSON
    // is that.
    env.add_filter("yaml", |value: Value, _rest: Rest<Value>| {
        serde_json::to_string(&to_json(&value)).unwrap_or_default()
    });
    env.add_filter("json", |value: Value| serde_json::to_string(&to_json(&value)).unwrap_or_default());
    env.add_filter("yaml_encode", |value: Value| serde_json::to_string(&to_json(&value)).unwrap_or_default());
    env.add_filter("yaml_dquote", |value: String| serde_json::to_string(&value).unwrap_or_default());
    env.add_filter("yaml_squote", |value: String| format!("'{}'", value.replace('\'', "''")));
    env.add_global("grains", Value::from_serialize(&data.grains));
    env.add_global("pillar", Value::from_serialize(&data.pillar));
    env.add_global("salt", Value::from_object(Salt { data: data.clone() }));
    env.add_global("saltenv", "base");
    env.add_global("opts", Value::from_serialize(serde_json::json!({"saltenv": "base", "id": data.grains.get("id")})));
    env.set_unknown_method_callback(|state, value, method, args| {
        if value.as_object().is_some() || value.kind() == ValueKind::Map {
            match (method, args) {
                // `pillar.get('a:b', default)`: a path, as salt['pillar.get'].
                ("get", [key, rest @ ..]) if key.as_str().is_some_and(|k| k.contains(':')) => {
                    let map = to_json(value);
                    let key = key.as_str().unwrap_or_default();
                    if map.get(key).is_none() {
                        return Ok(match functions::traverse(&map, key, ":") {
                            Some(found) => Value::from_serialize(found),
                            None => rest.first().cloned().unwrap_or(Value::from(())),
                        });
                    }
                }
                ("update", _) if value.kind() == ValueKind::Map => {
                    return Err(Error::new(ErrorKind::InvalidOperation, UPDATE_IMMUTABLE));
                }
                ("filter_by", _) => {
                    let function = SaltFunction {
                        name: "grains.filter_by".to_owned(),
                        data: Arc::new(Data { grains: to_json(value), pillar: serde_json::Value::Null }),
                    };
                    return Arc::new(function).call(state, args);
                }
                _ => {}
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
}
