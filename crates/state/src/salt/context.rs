//! What a Salt template sees beside its own file's names, for a state
//! file (salt/render.rs) and for file content (`template: jinja`,
//! template.rs) alike: `grains`, `pillar`, `salt[...]` (salt/functions.rs),
//! `saltenv`, `opts`; Salt's filters; Python's methods (minijinja-contrib's
//! `pycompat`), with a map's `.get` taking an `a:b:c` path and
//! `.filter_by(...)` on the grains map.

use std::sync::Arc;

use minijinja::value::{Kwargs, Object, Rest};
use minijinja::{Environment, Error, ErrorKind, State, Value};

use crate::salt::functions::{self, Data};

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
        functions::call(&self.name, &self.data, &call)
            .map(Value::from_serialize)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
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
    env.add_filter("__halite_update", |map: Value, other: Value| {
        let mut merged = to_json(&map);
        functions::update(&mut merged, &to_json(&other), false);
        Value::from_serialize(merged)
    });
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
        if value.as_object().is_some() || value.kind() == minijinja::value::ValueKind::Map {
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
