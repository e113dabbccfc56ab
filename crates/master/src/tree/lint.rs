//! `check`'s warnings about reactors that load but can never do what
//! they say: an `on` glob that matches no tag halite raises (nor any
//! `event` action fires), a beacon glob that matches no beacon in
//! beacons.yaml, and a `when` that reads a field the matched beacon kinds
//! never send or compares one with a value it never takes. The beacon
//! kinds declare their fields and values (`halite_agent::beacons`,
//! `EventField`). Warnings, not errors: the daemon runs such a tree, and
//! `check --strict` refuses it.
//!
//! The `when` is read by a small scanner ([`Scan`]) that knows the simple
//! forms, `data.x`, `data['x']`, `data.x == 'v'`, `'v' != data.x`,
//! `data.x in ['a', 'b']`; anything it does not understand it leaves alone
//! rather than guessing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use globset::Glob;
use halite_proto::BeaconSpec;
use halite_state::Diagnostic;
use halite_state::diag::{Location, Severity};

use crate::server::reactor::Reactor;

/// The tags halite raises (SPEC §3); `{}` is a part that varies (an
/// agent, a job id, a reactor). The beacon tag comes first.
const TAGS: &[&str] = &[
    "halite/beacon/{}/{}",
    "halite/agent/{}/connected",
    "halite/agent/{}/disconnected",
    "halite/agent/{}/stale",
    "halite/agent/{}/drift",
    "halite/agent/{}/healed",
    "halite/agent/{}/outbox/unwritable",
    "halite/agent/{}/outbox/writable",
    "halite/agent/{}/outbox/dropped",
    "halite/key/{}/pending",
    "halite/key/{}/accepted",
    "halite/key/{}/rejected",
    "halite/key/{}/deleted",
    "halite/job/{}/new",
    "halite/job/{}/ret/{}",
    "halite/reactor/{}/fired",
    "halite/reactor/{}/throttled",
    "halite/reactor/{}/failed",
    "halite/master/tree/reloaded",
    "halite/master/tree/failed",
];

/// A text `segment` of a glob matches: `*` matching nothing, `?` an `x`,
/// a class or alternation its first choice.
fn concrete(segment: &str) -> String {
    let mut out = String::new();
    let mut chars = segment.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {}
            '?' => out.push('x'),
            '[' => {
                let mut first = None;
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if first.is_none() && c != '!' && c != '^' {
                        first = Some(c);
                    }
                }
                out.push(first.unwrap_or('x'));
            }
            '{' => {
                let mut taking = true;
                for c in chars.by_ref() {
                    match c {
                        '}' => break,
                        ',' => taking = false,
                        c if taking => out.push(c),
                        _ => {}
                    }
                }
            }
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The tag `template` would be where `glob` has a say: each varying part
/// as the glob's segment at that place would match it, or `name` for the
/// last part of a beacon tag when given.
fn candidate(template: &str, glob: &str, beacon: Option<&str>) -> String {
    let segments: Vec<&str> = glob.split('/').collect();
    let parts: Vec<&str> = template.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match (*part, beacon) {
            ("{}", Some(name)) if i == last => name.to_owned(),
            ("{}", _) => segments.get(i).map_or_else(|| "x".to_owned(), |s| concrete(s)),
            (literal, _) => literal.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every warning about `reactors` (authored in `path`), given the tree's
/// beacons (beacons.yaml's and the watched states').
pub fn reactors(path: &Path, reactors: &[std::sync::Arc<Reactor>], beacons: &[BeaconSpec]) -> Vec<Diagnostic> {
    let fired: Vec<&str> = reactors.iter().flat_map(|r| r.actions.iter().filter_map(|a| a.fires())).collect();
    let mut warnings = Vec::new();
    let warn = |at: Location, message: String, help: String| Diagnostic {
        severity: Severity::Warning,
        file: path.to_path_buf(),
        line: at.line,
        column: at.column,
        message,
        help: Some(help),
    };
    for reactor in reactors.iter().filter(|r| r.on_at != Location::FILE) {
        let Ok(glob) = Glob::new(&reactor.on) else { continue };
        let matcher = glob.compile_matcher();
        let other_tags = TAGS[1..].iter().any(|t| matcher.is_match(candidate(t, &reactor.on, None)))
            || fired.iter().any(|t| matcher.is_match(t));
        let beacon_tags = matcher.is_match(candidate(TAGS[0], &reactor.on, None));
        if !other_tags && !beacon_tags {
            warnings.push(warn(
                reactor.on_at,
                format!("reactor `{}`: `on: {}` matches no tag halite raises or an `event` action fires", reactor.name, reactor.on),
                "halite raises halite/beacon/<agent>/<beacon>, halite/agent/<agent>/connected|disconnected|stale|drift|healed, halite/key/<agent>/…, halite/job/<jid>/new|ret/<agent>, halite/reactor/<name>/fired|throttled|failed, halite/master/tree/reloaded|failed".into(),
            ));
            continue;
        }
        if other_tags || !beacon_tags {
            continue;
        }
        // Only beacon events: which beacons, and so which kinds' data.
        let matched: Vec<&BeaconSpec> =
            beacons.iter().filter(|b| matcher.is_match(candidate(TAGS[0], &reactor.on, Some(&b.name)))).collect();
        if matched.is_empty() {
            let mut names: Vec<&str> = beacons.iter().map(|b| b.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            warnings.push(warn(
                reactor.on_at,
                format!("reactor `{}`: `on: {}` matches no beacon in beacons.yaml", reactor.name, reactor.on),
                format!(
                    "beacons: {} (a beacon only in an agent's agent.yaml is not known here)",
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ),
            ));
            continue;
        }
        let Some(when) = &reactor.when else { continue };
        let mut kinds: Vec<&str> = matched.iter().map(|b| b.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let fields = declared(&kinds);
        let scan = Scan::of(when);
        for field in &scan.reads {
            if !fields.contains_key(field.as_str()) {
                let mut known: Vec<&str> = fields.keys().copied().collect();
                known.sort_unstable();
                warnings.push(warn(
                    reactor.when_at,
                    format!(
                        "reactor `{}`: `when` reads `data.{field}`, which {} beacon events never carry",
                        reactor.name,
                        kinds.join(" and ")
                    ),
                    format!("their fields: {}", known.join(", ")),
                ));
            }
        }
        for (field, value) in &scan.compared {
            let Some(Some(values)) = fields.get(field.as_str()) else { continue };
            if !values.contains(value.as_str()) {
                warnings.push(warn(
                    reactor.when_at,
                    format!(
                        "reactor `{}`: `when` compares `data.{field}` with '{value}', a value {} beacon events never give it",
                        reactor.name,
                        kinds.join(" and ")
                    ),
                    format!("data.{field} is one of: {}", values.iter().copied().collect::<Vec<_>>().join(", ")),
                ));
            }
        }
    }
    warnings
}

/// The fields the beacon kinds send, with their values when every kind
/// that sends the field declares a fixed set (`None`: any value).
fn declared(kinds: &[&str]) -> BTreeMap<&'static str, Option<BTreeSet<&'static str>>> {
    let mut fields: BTreeMap<&'static str, Option<BTreeSet<&'static str>>> = BTreeMap::new();
    for kind in kinds {
        for field in halite_agent::beacons::fields(kind).unwrap_or_default() {
            let entry = fields.entry(field.name).or_insert_with(|| Some(BTreeSet::new()));
            match (entry.as_mut(), field.values.is_empty()) {
                (Some(_), true) => *entry = None,
                (Some(values), false) => values.extend(field.values.iter().copied()),
                (None, _) => {}
            }
        }
    }
    fields
}

/// What a `when` expression reads from `data`, and the string values it
/// compares fields with, in its simple forms.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    /// Fields read, in order, once each.
    pub reads: Vec<String>,
    /// (field, value) compared with `==`, `!=`, `in` or `not in`.
    pub compared: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
    Op(&'static str),
    Other,
}

fn tokens(expression: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<char> = expression.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                text.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Str(text));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if (c == '=' || c == '!') && chars.get(i + 1) == Some(&'=') {
            out.push(Token::Op(if c == '=' { "==" } else { "!=" }));
            i += 2;
        } else if ".[](),".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else {
            out.push(Token::Other);
            i += 1;
        }
    }
    out
}

impl Scan {
    pub fn of(expression: &str) -> Scan {
        let tokens = tokens(expression);
        let mut scan = Scan::default();
        let field_at = |i: usize| -> Option<(String, usize)> {
            if tokens.get(i) != Some(&Token::Ident("data".into())) || (i > 0 && tokens[i - 1] == Token::Punct('.')) {
                return None;
            }
            match (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3)) {
                (Some(Token::Punct('.')), Some(Token::Ident(f)), _) => Some((f.clone(), i + 3)),
                (Some(Token::Punct('[')), Some(Token::Str(f)), Some(Token::Punct(']'))) => Some((f.clone(), i + 4)),
                _ => None,
            }
        };
        for i in 0..tokens.len() {
            let Some((field, next)) = field_at(i) else { continue };
            if !scan.reads.contains(&field) {
                scan.reads.push(field.clone());
            }
            let mut values = Vec::new();
            match (tokens.get(next), tokens.get(next + 1)) {
                (Some(Token::Op(_)), Some(Token::Str(v))) => values.push(v.clone()),
                (Some(Token::Ident(word)), _) if word == "in" || word == "not" => {
                    let open = if word == "not" { next + 2 } else { next + 1 };
                    if word == "not" && tokens.get(next + 1) != Some(&Token::Ident("in".into())) {
                        continue;
                    }
                    if tokens.get(open) == Some(&Token::Punct('[')) {
                        for token in &tokens[open + 1..] {
                            match token {
                                Token::Str(v) => values.push(v.clone()),
                                Token::Punct(',') => {}
                                _ => break,
                            }
                        }
                    }
                }
                _ => {}
            }
            if i >= 2
                && let (Token::Str(v), Token::Op(_)) = (&tokens[i - 2], &tokens[i - 1])
            {
                values.push(v.clone());
            }
            scan.compared.extend(values.into_iter().map(|v| (field.clone(), v)));
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_fields_and_compared_values() {
        let pair = |f: &str, v: &str| (f.to_owned(), v.to_owned());
        let cases = [
            ("data.kind == 'modify'", vec!["kind"], vec![pair("kind", "modify")]),
            ("'delete' != data['kind']", vec!["kind"], vec![pair("kind", "delete")]),
            (
                "data.kind in ['modify', \"delete\"] and data.managed",
                vec!["kind", "managed"],
                vec![pair("kind", "modify"), pair("kind", "delete")],
            ),
            ("data.state not in ['above']", vec!["state"], vec![pair("state", "above")]),
            ("data.percent > 90 or agent == 'web01'", vec!["percent"], vec![]),
            ("data.depth is undefined", vec!["depth"], vec![]),
            ("tag.data.x == 'y'", vec![], vec![]),
        ];
        for (expression, reads, compared) in cases {
            let scan = Scan::of(expression);
            assert_eq!(scan.reads, reads, "{expression}");
            assert_eq!(scan.compared, compared, "{expression}");
        }
    }

    #[test]
    fn the_tags_halite_raises_are_all_known_here() {
        use halite_proto::Id;
        use halite_proto::event::tag;
        let known = |tag: &str| {
            TAGS.iter().any(|template| {
                let (parts, segments): (Vec<&str>, Vec<&str>) =
                    (template.split('/').collect(), tag.split('/').collect());
                parts.len() == segments.len() && parts.iter().zip(&segments).all(|(p, s)| *p == "{}" || p == s)
            })
        };
        let raised = [
            tag::beacon("web01", "motd"),
            tag::agent("web01", "connected"),
            tag::agent("web01", "disconnected"),
            tag::agent("web01", "stale"),
            tag::key("web01", "pending"),
            tag::key("web01", "accepted"),
            tag::key("web01", "rejected"),
            tag::key("web01", "deleted"),
            tag::job_new(Id::new()),
            tag::job_ret(Id::new(), "web01"),
            tag::reactor("r", "fired"),
            tag::reactor("r", "throttled"),
            tag::reactor("r", "failed"),
            tag::master("tree/reloaded"),
            tag::master("tree/failed"),
            // Raised by the agent itself (daemon.rs, outbox.rs).
            "halite/agent/web01/drift".into(),
            "halite/agent/web01/healed".into(),
            "halite/agent/web01/outbox/unwritable".into(),
            "halite/agent/web01/outbox/writable".into(),
            "halite/agent/web01/outbox/dropped".into(),
        ];
        for tag in raised {
            assert!(known(&tag), "{tag} is not in TAGS: `check` would warn about a reactor on it");
        }
    }

    #[test]
    fn a_glob_is_matched_against_the_tags_halite_raises() {
        let cases = [
            ("halite/beacon/*/motd", Some("motd"), "halite/beacon//motd"),
            ("halite/beacon/web*/mo?d", None, "halite/beacon/web/moxd"),
            ("halite/*", None, "halite/beacon/x/x"),
            ("halite/beacon/[wd]*/{a,b}", None, "halite/beacon/w/a"),
        ];
        for (glob, beacon, expected) in cases {
            assert_eq!(candidate(TAGS[0], glob, beacon), expected, "{glob}");
        }
    }
}
