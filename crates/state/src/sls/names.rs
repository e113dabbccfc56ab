//! `names:` — one declaration, several states: each name becomes a state
//! whose id and `name` are that name (Salt's expansion), with the
//! declaration's other arguments. An item may carry its own arguments
//! (`- web: [{port: 80}]`), which win over the shared ones.

use super::{Problem, RawState};
use crate::yaml::{self, Fields, Spanned};

/// `state` itself, or one state per name when it has `names:`.
pub fn expand(state: RawState, problems: &mut Vec<Problem>) -> Vec<RawState> {
    let Some(index) = state.fields.entries.iter().position(|(k, _)| k.value == "names") else {
        return vec![state];
    };
    let (key, names) = state.fields.entries[index].clone();
    let at = yaml::location(&key);
    let serde_json::Value::Array(items) = &names.value else {
        problems.push(Problem::new(
            at,
            format!("{} `{}`: `names` is `{}`, not a list", state.kind, state.id, names.value),
            "write `names:` then one `- name` per line",
        ));
        return Vec::new();
    };
    let mut shared = state.fields.clone();
    shared.entries.remove(index);
    shared.entries.retain(|(k, _)| k.value != "name");
    let mut out = Vec::new();
    for item in items {
        let (name, own) = match item {
            serde_json::Value::String(name) => (name.clone(), Vec::new()),
            serde_json::Value::Number(n) => (n.to_string(), Vec::new()),
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (name, args) = map.iter().next().expect("one entry");
                match own_arguments(args) {
                    Some(own) => (name.clone(), own),
                    None => {
                        problems.push(Problem::new(
                            at,
                            format!(
                                "{} `{}`: the arguments of name `{name}` are not `key: value` items",
                                state.kind, state.id
                            ),
                            "write `- NAME:` then its arguments as `- key: value` items",
                        ));
                        continue;
                    }
                }
            }
            other => {
                problems.push(Problem::new(
                    at,
                    format!("{} `{}`: `names` item `{other}` is not a name", state.kind, state.id),
                    "write each name as a string, or `- NAME: [{key: value}]` with its own arguments",
                ));
                continue;
            }
        };
        let mut fields = Fields { entries: Vec::new(), functions: Vec::new() };
        fields.entries.push((spanned(&key, "name"), spanned(&names, serde_json::Value::String(name.clone()))));
        for (k, v) in &shared.entries {
            if !own.iter().any(|(o, _)| o == &k.value) {
                fields.entries.push((k.clone(), v.clone()));
            }
        }
        fields.entries.extend(own.into_iter().map(|(k, v)| (spanned(&key, k.as_str()), spanned(&names, v))));
        out.push(RawState { id: name, fields, ..state.clone() });
    }
    out
}

/// A name's own arguments: a list of single-key maps or a map.
fn own_arguments(args: &serde_json::Value) -> Option<Vec<(String, serde_json::Value)>> {
    match args {
        serde_json::Value::Null => Some(Vec::new()),
        serde_json::Value::Object(map) => Some(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                serde_json::Value::Object(map) => {
                    Some(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>())
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|lists| lists.into_iter().flatten().collect()),
        _ => None,
    }
}

/// A value placed where `like` was written (the expanded arguments have no
/// place of their own: they are reported at `names:`).
fn spanned<T, U: Into<T>>(like: &Spanned<impl Sized>, value: U) -> Spanned<T> {
    Spanned { value: value.into(), referenced: like.referenced, defined: like.defined }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_is_a_state_with_its_own_arguments_winning() {
        let parsed = super::super::parse(
            "tools:\n  pkg.installed:\n    - names:\n      - git\n      - vim:\n        - version: '9'\n    - version: '1'\n",
        );
        let (id, body) = parsed.iter().next().unwrap();
        let mut problems = Vec::new();
        let state = super::super::short_forms::states(id, body, &mut problems).remove(0);
        let out: Vec<String> =
            expand(state, &mut problems).iter().map(|s| format!("{} {}", s.id, s.fields.to_json())).collect();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(out, ["git {\"name\":\"git\",\"version\":\"1\"}", "vim {\"name\":\"vim\",\"version\":\"9\"}"]);
    }

    #[test]
    fn names_that_are_not_a_list_are_named() {
        let parsed = super::super::parse("tools:\n  pkg.installed:\n    - names: git\n");
        let (id, body) = parsed.iter().next().unwrap();
        let mut problems = Vec::new();
        let state = super::super::short_forms::states(id, body, &mut problems).remove(0);
        assert!(expand(state, &mut problems).is_empty());
        assert_eq!(problems[0].message, "pkg.installed `tools`: `names` is `\"git\"`, not a list");
        assert_eq!((problems[0].at.line, problems[0].at.column), (3, 7));
    }
}
