//! `include:` — the state files a file pulls in. Names are Salt's: dotted
//! (`nginx.config`), or relative to the including file (`.config`,
//! `..common`). Whether a name exists is the tree's question (its layout
//! maps names to files); this module only reads the list.

use super::{Body, Problem};
use crate::diag::Location;
use crate::yaml::{self, Spanned};

/// One included state file name, absolute (dotted from the tree's root).
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub name: String,
    pub at: Location,
}

/// Reads `include:` of the file named `sls` (`nginx.server`); `is_init`
/// when the file is a directory's `init.sls` (then `.x` is inside it).
pub fn read(sls: &str, is_init: bool, body: &Spanned<Body>, problems: &mut Vec<Problem>) -> Vec<Include> {
    let items = match &body.value {
        Body::List(items) => items.clone(),
        Body::Bare(one) => vec![Spanned { value: serde_json::Value::String(one.clone()), ..copy_at(body) }],
        Body::Empty => Vec::new(),
        _ => {
            problems.push(Problem::new(
                yaml::location(body),
                "`include` is not a list of state file names",
                "write `include:` then one `- name` per line (`- nginx`, `- .config`)",
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for item in items {
        let at = yaml::location(&item);
        let name = match &item.value {
            serde_json::Value::String(name) => name.clone(),
            // `- dev: http`: `http` from environment `dev`.
            serde_json::Value::Object(map) if map.len() == 1 && map.values().all(|v| v.is_string()) => {
                let (env, name) = map.iter().next().expect("one entry");
                problems.push(Problem::new(
                    at,
                    format!(
                        "`include` of `{}` names environment `{env}`; halite has one environment per tree",
                        name.as_str().unwrap_or_default()
                    ),
                    "include the name without the environment",
                ));
                continue;
            }
            // `- nginx: {defaults: …}` passes values to the included
            // file's rendering, which halite does not do.
            serde_json::Value::Object(map) if map.len() == 1 => {
                let name = map.keys().next().expect("one key");
                problems.push(Problem::new(
                    at,
                    format!("`include` of `{name}` with `defaults`/`key` is not supported by halite"),
                    format!("include `{name}` by name; give it its values through pillar"),
                ));
                continue;
            }
            other => {
                problems.push(Problem::new(
                    at,
                    format!("`include` item `{other}` is not a state file name"),
                    "write a name such as `nginx`, `nginx.config` or `.config`",
                ));
                continue;
            }
        };
        if let Some((env, _)) = name.split_once(':') {
            problems.push(Problem::new(
                at,
                format!("`include` of `{name}` names environment `{env}`; halite has one environment per tree"),
                "include the name without the environment",
            ));
            continue;
        }
        match absolute(sls, is_init, &name) {
            Some(name) => out.push(Include { name, at }),
            None => problems.push(Problem::new(
                at,
                format!("`include` of `{name}` goes above the tree's root (from `{sls}`)"),
                "use fewer leading dots, or the name from the tree's root",
            )),
        }
    }
    out
}

/// A relative include (`.x`, `..x`) made absolute from the including file.
pub fn absolute(sls: &str, is_init: bool, name: &str) -> Option<String> {
    let dots = name.chars().take_while(|&c| c == '.').count();
    if dots == 0 {
        return Some(name.to_owned());
    }
    let mut base: Vec<&str> = if sls.is_empty() { Vec::new() } else { sls.split('.').collect() };
    if !is_init {
        base.pop()?;
    }
    for _ in 1..dots {
        base.pop()?;
    }
    let rest = &name[dots..];
    if !rest.is_empty() {
        base.push(rest);
    }
    if base.is_empty() { None } else { Some(base.join(".")) }
}

fn copy_at<T>(like: &Spanned<T>) -> Spanned<serde_json::Value> {
    Spanned { value: serde_json::Value::Null, referenced: like.referenced, defined: like.defined }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_as_salt_resolves_them() {
        let cases = [
            ("nginx", true, ".config", Some("nginx.config")),
            ("nginx.server", false, ".config", Some("nginx.config")),
            ("nginx.server", false, "..common", Some("common")),
            ("a.b.c", false, "..x", Some("a.x")),
            ("top", false, ".x", Some("x")),
            ("top", false, "..x", None),
            ("nginx", true, "users", Some("users")),
        ];
        for (sls, init, name, expected) in cases {
            assert_eq!(absolute(sls, init, name).as_deref(), expected, "{sls} {init} {name}");
        }
    }

    #[test]
    fn reads_names_and_refuses_what_it_cannot_include() {
        let parsed = super::super::parse(
            "include:\n  - nginx\n  - .conf\n  - base:users\n  - php: {defaults: {a: 1}}\n  - 5\n  - dev: http\n",
        );
        let (_, body) = parsed.iter().next().unwrap();
        let mut problems = Vec::new();
        let names: Vec<String> = read("web", true, body, &mut problems).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["nginx", "web.conf"]);
        let lines: Vec<String> = problems.iter().map(|p| format!("{} {}", p.at.line, p.message)).collect();
        assert_eq!(
            lines,
            [
                "4 `include` of `base:users` names environment `base`; halite has one environment per tree",
                "5 `include` of `php` with `defaults`/`key` is not supported by halite",
                "6 `include` item `5` is not a state file name",
                "7 `include` of `http` names environment `dev`; halite has one environment per tree",
            ]
        );
    }
}
