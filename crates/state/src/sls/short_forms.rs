//! Salt's short forms of a state: `id: pkg.installed` (the kind as the
//! value), `id: {pkg: [installed, {version: 1}]}` (the function as a bare
//! list item), and the long form they all become.

use super::{Body, Problem, RawState};
use crate::diag::Location;
use crate::yaml::{self, Fields, Spanned};

/// The states of one top-level `id:` key, in the order written, with a
/// problem for each kind that cannot be read.
pub fn states(id: &Spanned<String>, body: &Spanned<Body>, problems: &mut Vec<Problem>) -> Vec<RawState> {
    let id_at = yaml::location(id);
    let raw = |kind: String, span: &Spanned<()>, fields: Fields| RawState {
        id: id.value.clone(),
        id_at,
        kind_at: Location::from(span.referenced),
        kind_span: Spanned { value: kind.clone(), referenced: span.referenced, defined: span.defined },
        kind,
        fields,
    };
    let place = |like_ref, like_def| Spanned { value: (), referenced: like_ref, defined: like_def };
    match &body.value {
        Body::Empty => {
            problems.push(Problem::new(
                id_at,
                format!("state `{}` declares no state kind", id.value),
                "add a kind under it, e.g. `file.managed:` or Salt's `pkg.installed`",
            ));
            Vec::new()
        }
        Body::Bare(kind) if kind.contains('.') && !kind.contains(char::is_whitespace) => {
            vec![raw(kind.clone(), &place(body.referenced, body.defined), Fields::default())]
        }
        Body::Bare(text) | Body::Other(text) => {
            problems.push(Problem::new(
                yaml::location(body),
                format!("state `{}` is `{text}`, not a state kind with arguments", id.value),
                "write `ID:` then, indented, `module.function:` (e.g. `pkg.installed:`) and its arguments",
            ));
            Vec::new()
        }
        Body::List(_) => {
            problems.push(Problem::new(
                yaml::location(body),
                format!("state `{}` is a list; a state is a mapping of its kinds", id.value),
                "write `ID:` then, indented, `module.function:` (e.g. `pkg.installed:`) and its arguments",
            ));
            Vec::new()
        }
        Body::Kinds(kinds) => kinds
            .iter()
            .filter_map(|(kind, fields)| {
                let kind_at = yaml::location(kind);
                let mut fields = fields.clone();
                let functions = std::mem::take(&mut fields.functions);
                let full = match (kind.value.split_once('.'), functions.as_slice()) {
                    (Some(_), []) => kind.value.clone(),
                    (None, [function]) => format!("{}.{function}", kind.value),
                    (None, []) => {
                        problems.push(Problem::new(
                            kind_at,
                            format!("state `{}`: `{}` names a module but no function", id.value, kind.value),
                            format!(
                                "write `{0}.FUNCTION:` or add the function as the first item (`- installed`)",
                                kind.value
                            ),
                        ));
                        return None;
                    }
                    (None, several) => {
                        problems.push(Problem::new(
                            kind_at,
                            format!(
                                "state `{}`: `{}` names {} functions ({})",
                                id.value,
                                kind.value,
                                several.len(),
                                several.join(", ")
                            ),
                            "give each function its own state id",
                        ));
                        return None;
                    }
                    (Some(_), words) => {
                        problems.push(Problem::new(
                            kind_at,
                            format!(
                                "state `{}`: `{}` has bare item(s) {}, not `key: value` arguments",
                                id.value,
                                kind.value,
                                words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
                            ),
                            "write each argument as `- key: value`",
                        ));
                        return None;
                    }
                };
                Some(raw(full, &place(kind.referenced, kind.defined), fields))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for (id, body) in &super::super::parse(text) {
            out.extend(
                states(id, body, &mut problems).into_iter().map(|s| format!("{} {}", s.kind, s.fields.to_json())),
            );
        }
        (out, problems.into_iter().map(|p| format!("{}:{} {}", p.at.line, p.at.column, p.message)).collect())
    }

    #[test]
    fn every_form_gives_the_long_form() {
        let (out, problems) = kinds(
            "a:\n  pkg.installed  # the kind as the value\nb:\n  pkg:\n    # the function first\n    - installed  # as Salt writes it\n    - version: '1'\nc:\n  service.running: []\nd:\n  pkg.installed:\n    - name: x\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            out,
            [
                "pkg.installed {}",
                "pkg.installed {\"version\":\"1\"}",
                "service.running {}",
                "pkg.installed {\"name\":\"x\"}"
            ]
        );
    }

    #[test]
    fn unreadable_forms_are_named_where_written() {
        let (_, problems) =
            kinds("a:\nb:\n  pkg: []\nc:\n  pkg: [installed, latest]\nd:\n  pkg.installed: [x]\ne: 5\n");
        assert_eq!(
            problems,
            [
                "1:1 state `a` declares no state kind",
                "3:3 state `b`: `pkg` names a module but no function",
                "5:3 state `c`: `pkg` names 2 functions (installed, latest)",
                "7:3 state `d`: `pkg.installed` has bare item(s) `x`, not `key: value` arguments",
                "8:4 state `e` is `5`, not a state kind with arguments",
            ]
        );
    }
}
