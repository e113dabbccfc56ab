//! Salt's top file forms: the environment wrapper (`base:`) and a
//! target's `- match: grain|list|pcre|grain_pcre|compound|glob` item,
//! turned into halite's target expression (`target.rs`).
//!
//! A `top.sls` with Jinja is rendered per agent before it is read, as
//! Salt does: the state tree's with the agent's grains and pillar
//! (salt/rendered.rs), the pillar's with its grains (salt/pillar.rs);
//! [`is_template`] tells which.
//!
//! Environments: halite reads `base` only. Another environment (`dev:`)
//! is a named error: one tree is one environment; run a master per
//! environment, each with its own tree.

use std::path::Path;

use indexmap::IndexMap;

use crate::diag::{Diagnostic, Location};
use crate::target::Target;
use crate::yaml::{self, Spanned};

/// Why a top file entry cannot be read; each names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopError {
    #[error("target `{target}`: `match: {form}` is not supported by halite")]
    Match { target: String, form: String },
    #[error("environment `{env}`: halite reads only the `base` environment")]
    Environment { env: String },
}

impl TopError {
    /// A way forward.
    pub fn help(&self) -> &'static str {
        match self {
            TopError::Match { .. } => {
                "use `match: glob`, `list`, `grain`, `grain_pcre`, `pcre` or `compound` (G@, L@, P@, E@ with and/or/not)"
            }
            TopError::Environment { .. } => {
                "one tree is one environment: give the other environment its own tree and master, or move its entries under `base`"
            }
        }
    }
}

/// Takes a `- match: FORM` item out of a target's list (anywhere in it)
/// and returns the target as halite's expression: `os:Debian` with
/// `grain` is `G@os:Debian`. `Ok(None)`: no `match` item, the target is
/// used as written (a glob or compound expression, as Salt's default).
pub fn match_form(target: &str, value: &mut serde_json::Value) -> Result<Option<String>, TopError> {
    let serde_json::Value::Array(items) = value else { return Ok(None) };
    let Some(at) =
        items.iter().position(|item| item.as_object().is_some_and(|m| m.len() == 1 && m.contains_key("match")))
    else {
        return Ok(None);
    };
    let item = items.remove(at);
    let form = item.get("match").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let expression = match form.as_str() {
        "glob" | "compound" => target.to_owned(),
        "list" => format!("L@{}", target.split([',', ' ']).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(",")),
        "grain" => format!("G@{target}"),
        "grain_pcre" => format!("P@{target}"),
        "pcre" => format!("E@{target}"),
        _ => return Err(TopError::Match { target: target.to_owned(), form }),
    };
    Ok(Some(expression))
}

/// Entries of a top file (or vars.yaml): each target compiled, its text
/// as written, and its value.
pub type Targeted = Vec<(Target, Spanned<String>, Spanned<serde_json::Value>)>;

/// A file of `TARGET: value` entries (top.yaml, vars.yaml), with Salt's
/// `base:` wrapper accepted. Targets that do not parse are reported and
/// skipped. `None` when the file is absent or unreadable.
pub fn load_targeted(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<Targeted> {
    if !path.exists() {
        return None;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            diagnostics.push(
                Diagnostic::error(path, Location::FILE, format!("cannot read: {e}"))
                    .help("check the file's permissions and encoding (UTF-8)"),
            );
            return None;
        }
    };
    parse_targeted(path, &text, diagnostics)
}

/// [`load_targeted`] of a file's text (a top file rendered for an agent,
/// salt/rendered.rs); `path` names it in diagnostics.
pub fn parse_targeted(path: &Path, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<Targeted> {
    let text = text.to_owned();
    let mut entries: IndexMap<Spanned<String>, Spanned<serde_json::Value>> = match yaml::parse(path, &text) {
        Ok(entries) => entries,
        Err(diagnostic) => {
            diagnostics.push(diagnostic);
            return None;
        }
    };
    // Salt's environment wrapper: `base: {target: [states]}`; another
    // environment is a named error (salt/top.rs).
    let wrapped = !entries.is_empty() && entries.values().all(|v| v.value.is_object());
    if wrapped && entries.keys().any(|k| k.value == "base") {
        for env in entries.keys().filter(|k| k.value != "base") {
            let error = TopError::Environment { env: env.value.clone() };
            diagnostics.push(Diagnostic::error(path, yaml::location(env), error.to_string()).help(error.help()));
        }
        match yaml::parse::<IndexMap<String, IndexMap<Spanned<String>, Spanned<serde_json::Value>>>>(path, &text) {
            Ok(mut wrapped) => entries = wrapped.swap_remove("base").unwrap_or_default(),
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                return None;
            }
        }
    }
    let mut out = Vec::new();
    for (mut target_text, mut value) in entries {
        match match_form(&target_text.value, &mut value.value) {
            Ok(Some(expression)) => target_text.value = expression,
            Ok(None) => {}
            Err(error) => {
                diagnostics
                    .push(Diagnostic::error(path, yaml::location(&target_text), error.to_string()).help(error.help()));
                continue;
            }
        }
        match Target::parse(&target_text.value) {
            Ok(target) => out.push((target, target_text, value)),
            Err(message) => {
                diagnostics.push(Diagnostic::error(path, yaml::location(&target_text), message.to_string()).help(
                    "a target is a glob on the agent id ('web*'), L@id1,id2, G@grain:glob, P@grain:regex, E@regex, joined with and/or/not",
                ))
            }
        }
    }
    Some(out)
}

/// The top file `text` has Jinja: it is rendered per agent, then read
/// with [`parse_targeted`]. A syntax error is reported at load, with its
/// line, whichever agents there are.
pub fn is_template(path: &Path, text: &str, diagnostics: &mut Vec<Diagnostic>) -> bool {
    if !(text.contains("{{") || text.contains("{%") || text.contains("{#")) {
        return false;
    }
    if let Err(error) = crate::salt::render::syntax(text) {
        let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
        diagnostics.push(
            Diagnostic::error(path, at, format!("the top file does not compile: {}", error.message))
                .help("check the Jinja tags: every {% if %} and {% for %} needs its {% endif %} / {% endfor %}"),
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn match_forms_become_target_expressions() {
        let cases = [
            ("os:Debian", json!([{"match": "grain"}, "nginx"]), Ok(Some("G@os:Debian")), json!(["nginx"])),
            ("web1,web2", json!(["a", {"match": "list"}]), Ok(Some("L@web1,web2")), json!(["a"])),
            ("web\\d+", json!([{"match": "pcre"}]), Ok(Some("E@web\\d+")), json!([])),
            ("os:(Debian|Ubuntu)", json!([{"match": "grain_pcre"}]), Ok(Some("P@os:(Debian|Ubuntu)")), json!([])),
            (
                "G@os:Debian and web*",
                json!([{"match": "compound"}, "x"]),
                Ok(Some("G@os:Debian and web*")),
                json!(["x"]),
            ),
            ("web*", json!([{"match": "glob"}]), Ok(Some("web*")), json!([])),
            ("web*", json!(["a"]), Ok(None), json!(["a"])),
            ("role:web", json!([{"match": "pillar"}]), Err("`match: pillar`"), json!([])),
        ];
        for (target, mut value, expected, rest) in cases {
            let got = match_form(target, &mut value);
            match (got, expected) {
                (Ok(got), Ok(expected)) => {
                    assert_eq!(got.as_deref(), expected, "{target}");
                    assert_eq!(value, rest, "{target}");
                }
                (Err(error), Err(words)) => assert!(error.to_string().contains(words), "{error}"),
                (got, _) => panic!("{target}: {got:?}"),
            }
        }
    }
}
