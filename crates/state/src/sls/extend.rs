//! `extend:` — change a state declared in another (included) file: its
//! requisites are added to, any other argument replaced, as Salt does.

use super::{Body, Problem, RawState, requisite_in};
use crate::diag::Location;
use crate::yaml::{self, Fields, Spanned};

/// One `extend:` entry: the state it names and the arguments it adds.
#[derive(Debug, Clone)]
pub struct Extension {
    pub id: String,
    /// `service` or `service.running`, as written.
    pub family: String,
    pub at: Location,
    pub fields: Fields,
}

/// Reads an `extend:` block.
pub fn read(body: &Spanned<Body>, problems: &mut Vec<Problem>) -> Vec<Extension> {
    let Body::Kinds(entries) = &body.value else {
        problems.push(Problem::new(
            yaml::location(body),
            "`extend` is not a mapping of state ids",
            "write `extend:` then `ID:` / `module:` / the arguments to add",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (id, families) in entries {
        if families.entries.is_empty() {
            problems.push(Problem::new(
                yaml::location(id),
                format!("`extend` of `{}` names no state kind", id.value),
                "write the kind's module under the id, e.g. `service:`",
            ));
        }
        for (family, value) in &families.entries {
            let at = yaml::location(family);
            match fields_of(&value.value, family) {
                Some(fields) => {
                    out.push(Extension { id: id.value.clone(), family: family.value.clone(), at, fields });
                }
                None => problems.push(Problem::new(
                    at,
                    format!("`extend` of `{}` `{}`: the arguments are not `key: value` items", id.value, family.value),
                    "write them as in a state: `- watch:` / `  - file: x`",
                )),
            }
        }
    }
    out
}

/// Arguments given as a value (inside `extend:` they have no locations of
/// their own): placed at the module key.
fn fields_of(value: &serde_json::Value, at: &Spanned<String>) -> Option<Fields> {
    let place = |v: serde_json::Value| Spanned { value: v, referenced: at.referenced, defined: at.defined };
    let key = |k: &str| Spanned { value: k.to_owned(), referenced: at.referenced, defined: at.defined };
    let mut fields = Fields::default();
    match value {
        serde_json::Value::Null => {}
        serde_json::Value::Object(map) => {
            fields.entries.extend(map.iter().map(|(k, v)| (key(k), place(v.clone()))));
        }
        serde_json::Value::Array(items) => {
            for item in items {
                match item {
                    serde_json::Value::Object(map) => {
                        fields.entries.extend(map.iter().map(|(k, v)| (key(k), place(v.clone()))))
                    }
                    serde_json::Value::String(word) => fields.functions.push(word.clone()),
                    _ => return None,
                }
            }
        }
        _ => return None,
    }
    Some(fields)
}

/// Applies `extension` to the state it names among `states`; a problem
/// when none is declared.
pub fn apply<'a>(extension: &Extension, states: impl IntoIterator<Item = &'a mut RawState>) -> Result<(), Problem> {
    let wanted_kind = |state: &RawState| match extension.family.split_once('.') {
        Some(_) => state.kind == extension.family,
        None => state.family() == extension.family,
    };
    let Some(target) = states.into_iter().find(|s| s.id == extension.id && wanted_kind(s)) else {
        return Err(Problem::new(
            extension.at,
            format!("`extend` names {} `{}`, which no state file declares", extension.family, extension.id),
            "extend a state of a file this one includes (`include:`), by its id and module",
        ));
    };
    for (key, value) in &extension.fields.entries {
        let existing = target.fields.entries.iter_mut().find(|(k, _)| k.value == key.value);
        match existing {
            Some((_, old)) if requisite_in::is_requisite_key(&key.value) => {
                let mut list = as_list(&old.value);
                list.extend(as_list(&value.value));
                old.value = serde_json::Value::Array(list);
            }
            Some((_, old)) => *old = value.clone(),
            None => target.fields.entries.push((key.clone(), value.clone())),
        }
    }
    Ok(())
}

fn as_list(value: &serde_json::Value) -> Vec<serde_json::Value> {
    match value {
        serde_json::Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requisites_are_added_and_other_arguments_replaced() {
        let parsed = super::super::parse(
            "nginx:\n  service.running:\n    - enable: false\n    - watch:\n      - file: a\nextend:\n  nginx:\n    service:\n      - enable: true\n      - watch:\n        - file: b\n",
        );
        let mut problems = Vec::new();
        let mut iter = parsed.iter();
        let (id, body) = iter.next().unwrap();
        let mut states = super::super::short_forms::states(id, body, &mut problems);
        let (_, extend) = iter.next().unwrap();
        let extensions = read(extend, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        apply(&extensions[0], states.iter_mut()).unwrap();
        assert_eq!(
            states[0].fields.to_json(),
            serde_json::json!({"enable": true, "watch": [{"file": "a"}, {"file": "b"}]})
        );
        let missing = Extension { id: "apache".into(), ..extensions[0].clone() };
        let problem = apply(&missing, states.iter_mut()).unwrap_err();
        assert_eq!(problem.message, "`extend` names service `apache`, which no state file declares");
        assert_eq!(problem.at.line, 8);
    }
}
