//! `host.present`: a host name on the line of each of its addresses in
//! `/etc/hosts` (Salt's `host.present`: `name`, `ip` one or a list,
//! `names`, `clean`: the name removed from every other address). An
//! address's line gets the name added; a missing address gets a line of
//! its own. Edited through [`crate::edit`] (`path` names another hosts
//! file).

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, OneOrMany, Plan, Problem, args, string_list};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text;

pub static KIND: Kind = Kind {
    name: "host.present",
    summary: "A host name on the /etc/hosts line of each of its addresses (`clean`: on no other).",
    example: "db.internal:\n  host.present:\n    ip: 10.0.0.5\n",
    resolve,
    plan,
    file: None,
};

const HOSTS: &str = "/etc/hosts";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The host name; defaults to the state id.
    name: Option<String>,
    /// Several names at once (Salt's `names` for this kind).
    names: Option<Vec<String>>,
    ip: Option<OneOrMany>,
    #[serde(default)]
    clean: bool,
    /// The hosts file (default /etc/hosts).
    path: Option<String>,
}

/// Resolves `host.present` or `host.absent` (`kind`).
pub(crate) fn resolve_host(state: &Authored<'_>, kind: &str) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(kind)?;
    let mut problems = Vec::new();
    let problem = |key: &str, message: String| Problem::new(state.at(key), format!("{kind} `{}`: {message}", state.id));
    let names = config.names.unwrap_or_else(|| vec![config.name.unwrap_or_else(|| state.id.to_owned())]);
    for name in &names {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            problems.push(problem("name", format!("`{name}` is not a host name")).help("letters, digits, `.`, `-`"));
        }
    }
    let ips = config.ip.map(OneOrMany::into_vec).unwrap_or_default();
    if ips.is_empty() {
        problems.push(problem("ip", "no `ip` given".into()).help("add `ip: 10.0.0.5` (or a list)"));
    }
    for ip in &ips {
        if ip.parse::<std::net::IpAddr>().is_err() {
            problems.push(problem("ip", format!("`{ip}` is not an IP address")));
        }
    }
    if config.clean && kind != KIND.name {
        problems.push(problem("clean", "`clean` is an argument of host.present".into()).help("remove it"));
    }
    let path = config.path.unwrap_or_else(|| HOSTS.into());
    if !path.starts_with('/') {
        problems.push(problem("path", format!("path `{path}` is not absolute")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Value::map()
        .with("path", path)
        .with("names", string_list(names))
        .with("ip", string_list(ips))
        .with("clean", config.clean))
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_host(state, KIND.name)
}

/// One line of a hosts file: its address and names, or anything else.
struct Line {
    ip: Option<String>,
    names: Vec<String>,
    comment: String,
    original: String,
    touched: bool,
}

fn parse(text: &str) -> Vec<Line> {
    text::lines(text)
        .into_iter()
        .map(|raw| {
            let original = raw.trim_end_matches('\n').to_owned();
            let (body, comment) = match original.find('#') {
                Some(i) => (&original[..i], original[i..].to_owned()),
                None => (original.as_str(), String::new()),
            };
            let mut words = body.split_whitespace().map(str::to_owned);
            let ip = words.next();
            Line { ip, names: words.collect(), comment, original, touched: false }
        })
        .collect()
}

fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        if !line.touched {
            out.push_str(&line.original);
        } else if line.names.is_empty() {
            continue;
        } else {
            out.push_str(&format!("{}\t{}", line.ip.as_deref().unwrap_or_default(), line.names.join(" ")));
            if !line.comment.is_empty() {
                out.push(' ');
                out.push_str(&line.comment);
            }
        }
        out.push('\n');
    }
    out
}

/// The edit of `host.present` (`present`) or `host.absent`, pure.
pub(crate) fn edit_hosts(text: &str, args: &Value, present: bool) -> (String, Vec<String>) {
    let names = args::strings(args, "names");
    let ips = args::strings(args, "ip");
    let clean = args::bool_or(args, "clean", false);
    let mut lines = parse(text);
    let mut what = Vec::new();
    for name in &names {
        for line in lines.iter_mut().filter(|l| l.ip.is_some() && l.names.contains(name)) {
            let ours = ips.contains(line.ip.as_ref().expect("filtered"));
            if (present && clean && !ours) || (!present && ours) {
                line.names.retain(|n| n != name);
                line.touched = true;
                what.push(format!("{name} removed from {}", line.ip.as_deref().unwrap_or_default()));
            }
        }
        if !present {
            continue;
        }
        for ip in &ips {
            if lines.iter().any(|l| l.ip.as_ref() == Some(ip) && l.names.contains(name)) {
                continue;
            }
            match lines.iter_mut().find(|l| l.ip.as_ref() == Some(ip)) {
                Some(line) => {
                    line.names.push(name.clone());
                    line.touched = true;
                }
                None => lines.push(Line {
                    ip: Some(ip.clone()),
                    names: vec![name.clone()],
                    comment: String::new(),
                    original: String::new(),
                    touched: true,
                }),
            }
            what.push(format!("{name} added to {ip}"));
        }
    }
    if what.is_empty() {
        return (text.to_owned(), what);
    }
    (render(&lines), what)
}

pub(crate) fn plan_hosts(args: &Value, env: &ApplyEnv, present: bool) -> Result<Box<dyn Plan>, KindError> {
    let path = std::path::PathBuf::from(args::string(args, "path")?);
    let plan = EditPlan::new(&path, env, true, NewFile::default(), |text| match text {
        None if !present => Ok((Edited::Keep, Vec::new())),
        text => {
            let (new, what) = edit_hosts(text.unwrap_or_default(), args, present);
            Ok((Edited::Text(new), what))
        }
    })?;
    Ok(plan.boxed())
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_hosts(args, env, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, load, resolved};

    const HOSTS_FILE: &str = "127.0.0.1\tlocalhost\n# the db\n10.0.0.5 old-db # keep me\n10.0.0.9 db\n";

    #[test]
    fn adds_the_name_to_its_address_then_is_unchanged() {
        let call = resolved(KIND.name, "name: db\nip: [10.0.0.5, 10.0.0.6]\nclean: true\npath: /placeholder");
        let (first, second, text) = apply_twice(&call, Some(HOSTS_FILE));
        assert_eq!(text, "127.0.0.1\tlocalhost\n# the db\n10.0.0.5\told-db db # keep me\n10.0.0.6\tdb\n");
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn without_clean_other_addresses_keep_the_name() {
        let call = resolved(KIND.name, "name: db\nip: 10.0.0.5\npath: /placeholder");
        let (_, second, text) = apply_twice(&call, Some(HOSTS_FILE));
        assert!(text.contains("10.0.0.9 db\n") && text.contains("old-db db"), "{text}");
        assert!(second.is_empty());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load("a:\n  host.present:\n    name: 'bad name'\n    ip: 10.0.0.300\n");
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4], "{diagnostics:#?}");
    }
}
