//! `pkgrepo.managed`: an APT repository (Salt's `pkgrepo.managed`: `name`
//! the `deb` line, `file`, `key_url` (a key file of the state tree),
//! `signedby`, `disabled`, `clean_file`, `refresh`; `keyid`, the key's
//! fingerprint, required when `key_url` is a URL).
//!
//! The line is kept in `file` (default
//! `/etc/apt/sources.list.d/<state id>.list`) through [`crate::edit`]: a
//! line for the same type, URI and suite is replaced, else the line is
//! added (`clean_file`: the file holds only it). With `key_url`, the key
//! (read from the tree when the tree loads) is kept at
//! `/etc/apt/keyrings/<its file name>` and the line gets `signed-by=` it.
//! An `http(s)://` `key_url` is fetched by the master before each job
//! ([`crate::fetch`]) and taken only when every key in it has a
//! fingerprint `keyid` names, checked on the master and again here.
//! When anything changed and `refresh` (default true), `apt-get update`
//! runs.

use std::path::{Path, PathBuf};

use halite_fs::{Editable, Perms};
use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text;

pub static KIND: Kind = Kind {
    name: "pkgrepo.managed",
    summary: "An APT repository: its deb line in sources.list.d, its key from the tree (signed-by), apt-get update when changed.",
    example: "example-repo:\n  pkgrepo.managed:\n    name: deb https://apt.example.com/debian bookworm main\n    key_url: salt://files/example.asc\n",
    resolve,
    plan,
    file: None,
};

const KEYRINGS: &str = "/etc/apt/keyrings";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    file: Option<String>,
    key_url: Option<String>,
    signedby: Option<String>,
    /// The key's fingerprint (or a list): required for a `key_url` that is
    /// a URL, checked against a key of the tree when given.
    keyid: Option<super::OneOrMany>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    clean_file: bool,
    #[serde(default = "yes")]
    refresh: bool,
    /// Salt's display name; halite has no use for it.
    #[allow(dead_code)]
    humanname: Option<String>,
    /// Salt's choice between `apt-key` and a key file: halite always keeps
    /// the key in `/etc/apt/keyrings` with `signed-by` (what Salt does with
    /// `aptkey: False`, its documented form, and wherever `apt-key` is
    /// gone), so either value loads.
    #[allow(dead_code)]
    aptkey: Option<bool>,
}

fn yes() -> bool {
    true
}

/// The parts of a `deb` line.
#[derive(Debug, PartialEq)]
struct DebLine {
    kind: String,
    options: Option<String>,
    uri: String,
    suite: String,
    components: Vec<String>,
}

impl DebLine {
    /// What names the repository: a line with the same is replaced.
    fn identity(&self) -> (&str, &str, &str) {
        (&self.kind, &self.uri, &self.suite)
    }
}

fn parse_line(line: &str) -> Option<DebLine> {
    let line = line.trim().trim_start_matches('#').trim();
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    let rest = rest.trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(inner) => {
            let (options, rest) = inner.split_once(']')?;
            (Some(options.trim().to_owned()), rest)
        }
        None => (None, rest),
    };
    let mut words = rest.split_whitespace();
    let uri = words.next()?.to_owned();
    let suite = words.next()?.to_owned();
    Some(DebLine { kind: kind.to_owned(), options, uri, suite, components: words.map(str::to_owned).collect() })
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("pkgrepo.managed `{}`: {message}", state.id));
    let Some(DebLine { kind, options, uri, suite, components }) = parse_line(&config.name) else {
        return Err(vec![
            problem("name", format!("`{}` is not a deb line", config.name))
                .help("e.g. deb https://apt.example.com/debian bookworm main"),
        ]);
    };
    if config.name.contains('\n') {
        problems.push(problem("name", "the deb line must be one line".into()));
    }
    let file =
        config.file.unwrap_or_else(|| format!("/etc/apt/sources.list.d/{}.list", state.id.replace(['/', ' '], "_")));
    if !file.starts_with('/') || !(file.ends_with(".list") || file.ends_with("sources.list")) {
        problems.push(problem("file", format!("file `{file}` is not an absolute path of a .list file")));
    }
    let mut key = None;
    let mut fetch = None;
    let mut signed_by = config.signedby.clone();
    let fingerprints = match config.keyid.clone().map(super::OneOrMany::into_vec) {
        Some(list) => match crate::fetch::Verify::parse_fingerprints(&list) {
            Ok(verify) => Some(verify),
            Err(error) => {
                problems.push(
                    problem("keyid", error.to_string())
                        .help("give the key's full fingerprint (gpg --show-keys KEYFILE), not a short key id"),
                );
                None
            }
        },
        None => None,
    };
    if let Some(url) = &config.key_url {
        if crate::fetch::is_other_scheme(url) {
            problems.push(
                problem("key_url", format!("`{url}` is a URL halite does not fetch (only http:// and https://)"))
                    .help("download the key into the tree and name it there (salt://files/repo.gpg)"),
            );
        } else if crate::fetch::is_url(url) {
            match (&fingerprints, config.keyid.is_some()) {
                (Some(verify), _) => {
                    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("repository.gpg");
                    let path = format!("{KEYRINGS}/{name}");
                    signed_by.get_or_insert(path.clone());
                    key = Some((path, Vec::new()));
                    fetch = Some(crate::fetch::Request::new("key", vec![url.clone()], verify.clone()));
                }
                // The fingerprint's syntax is the problem reported.
                (None, true) => {}
                (None, false) => problems.push(
                    problem("key_url", format!("`{url}` is a URL and no `keyid` names the key's fingerprint"))
                        .help("add `keyid: <fingerprint>` (gpg --show-keys KEYFILE): a key from a URL is taken only if it is the one named"),
                ),
            }
        } else {
            let relative = url.strip_prefix("salt://").unwrap_or(url);
            match crate::paths::in_tree(state.tree_root, relative).map(|p| crate::paths::read_tree_file(&p)) {
                Ok(Ok(bytes)) => {
                    if let Some(verify) = &fingerprints
                        && let Err(error) = verify.check(url, &bytes)
                    {
                        problems.push(problem("keyid", error.to_string()));
                    }
                    let name =
                        Path::new(relative).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let path = format!("{KEYRINGS}/{name}");
                    signed_by.get_or_insert(path.clone());
                    key = Some((path, bytes));
                }
                Ok(Err(e)) => problems.push(problem("key_url", format!("cannot read `{url}`: {e}"))),
                Err(e) => problems.push(problem("key_url", e.to_string())),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut options: Vec<String> =
        options.map(|o| o.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
    if let Some(signed_by) = &signed_by
        && !options.iter().any(|o| o.starts_with("signed-by="))
    {
        options.push(format!("signed-by={signed_by}"));
    }
    let options = if options.is_empty() { String::new() } else { format!(" [{}]", options.join(" ")) };
    let disabled = if config.disabled { "# " } else { "" };
    let line = format!(
        "{disabled}{kind}{options} {uri} {suite}{}",
        components.iter().map(|c| format!(" {c}")).collect::<String>()
    );
    let mut resolved = Value::map()
        .with("path", file)
        .with("line", line)
        .with("clean_file", config.clean_file)
        .with("refresh", config.refresh);
    if let Some((path, bytes)) = key {
        resolved = resolved.with("key_path", path).with("key", bytes);
    }
    if let Some(request) = fetch {
        resolved = crate::fetch::with_requests(resolved, &[request]);
    }
    Ok(resolved)
}

/// The sources text with `line` for its repository.
fn set_line(text: &str, line: &str, clean: bool) -> String {
    if clean {
        return format!("{line}\n");
    }
    let ours = parse_line(line);
    let ours = ours.as_ref().map(DebLine::identity);
    let lines = text::lines(text);
    let same = |l: &str| parse_line(l).as_ref().map(DebLine::identity) == ours;
    match lines.iter().position(|l| same(l)) {
        Some(i) if lines[i].trim_end() == line => text.to_owned(),
        Some(i) => format!(
            "{}{line}\n{}",
            lines[..i].concat(),
            lines[i + 1..].iter().filter(|l| !same(l)).copied().collect::<String>()
        ),
        None => format!("{}{line}\n", text::with_newline(text)),
    }
}

#[derive(Debug)]
struct RepoPlan {
    sources: EditPlan,
    /// The key to write, when it differs: (path, reader of the old, new).
    key: Option<(Editable, Vec<u8>)>,
    refresh: bool,
    /// The job's package index: a change marks it stale (refreshed once
    /// before the job's next package state, or at its end).
    packages: crate::env::PackageIndex,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    crate::fetch::check(args)?;
    let line = args::string(args, "line")?;
    let clean = args::bool_or(args, "clean_file", false);
    let sources = EditPlan::new(&path, env, true, NewFile { makedirs: true, ..NewFile::default() }, |text| {
        Ok((
            Edited::Text(set_line(text.unwrap_or_default(), line, clean)),
            vec![format!("`{line}` in {}", path.display())],
        ))
    })?;
    let key = match (args::opt_string(args, "key_path"), args::bytes(args, "key")) {
        (Some(key_path), Ok(bytes)) => {
            let file = Editable::read(&env.rooted(key_path), crate::edit::EDIT_LIMIT)?;
            (file.content() != Some(bytes)).then(|| (file, bytes.to_vec()))
        }
        _ => None,
    };
    Ok(Box::new(RepoPlan {
        sources,
        key,
        refresh: args::bool_or(args, "refresh", true),
        packages: env.packages.clone(),
    }))
}

impl Plan for RepoPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes: Vec<String> =
            self.key.iter().map(|(file, _)| format!("key {}", file.path().display())).collect();
        changes.extend(self.sources.changes());
        changes
    }

    fn diff(&self) -> Option<String> {
        self.sources.diff()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let mut done = Vec::new();
        if let Some((file, bytes)) = &self.key {
            file.replace(bytes, Perms::mode(0o644), true)?;
            done.push(format!("key {}", file.path().display()));
        }
        done.extend(Box::new(self.sources).apply()?);
        if self.refresh && !done.is_empty() {
            self.packages.repository_changed();
            done.push(crate::env::REFRESH_CHANGE.into());
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved_in};
    use crate::kinds::service_running::stand_in::StandIns;

    #[test]
    fn writes_the_key_and_the_line_refreshes_then_is_unchanged() {
        let fake = StandIns::new();
        let root = tempfile::tempdir().unwrap();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..fake.env() };
        let call = resolved_in(
            KIND.name,
            "name: deb https://apt.example.com/debian bookworm main\nkey_url: salt://files/example.gpg\nfile: /etc/apt/sources.list.d/example.list",
            &[("files/example.gpg", "KEY")],
        );
        let call = crate::paths::rooted_call(&call, root.path());
        let list = root.path().join("etc/apt/sources.list.d/example.list");
        std::fs::create_dir_all(list.parent().unwrap()).unwrap();
        std::fs::write(&list, "# old\ndeb http://apt.example.com/debian bookworm main\ndeb https://apt.example.com/debian bookworm contrib\n").unwrap();
        assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 2);
        assert!(!root.path().join("etc/apt/keyrings").exists(), "test mode wrote the key");
        let first = changes(apply_call(&call, false, &env).outcome);
        assert_eq!(first.last().unwrap(), crate::env::REFRESH_CHANGE, "{first:?}");
        assert_eq!(
            fake.take_calls().iter().filter(|c| c.contains("update")).count(),
            1,
            "refreshed at the end of the job"
        );
        assert_eq!(std::fs::read(root.path().join("etc/apt/keyrings/example.gpg")).unwrap(), b"KEY");
        assert_eq!(
            std::fs::read_to_string(&list).unwrap(),
            "# old\ndeb http://apt.example.com/debian bookworm main\ndeb [signed-by=/etc/apt/keyrings/example.gpg] https://apt.example.com/debian bookworm main\n"
        );
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        assert!(!fake.take_calls().iter().any(|c| c.contains("update")), "refreshed without a change");
    }

    /// Two repositories changed and three package states (two asking for
    /// `refresh`) in one job: one `apt-get update`, after the repositories
    /// and before the first install. A job with only `refresh: True`
    /// package states refreshes once too; one that changes nothing, never.
    #[test]
    fn the_index_is_refreshed_once_per_job() {
        let fake = StandIns::new();
        let root = tempfile::tempdir().unwrap();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..fake.env() };
        let repo = |id: &str, uri: &str| {
            let mut call = resolved_in(KIND.name, &format!("name: deb {uri} bookworm main"), &[]);
            call.id = id.to_owned();
            crate::paths::rooted_call(&call, root.path())
        };
        let pkg = |kind: &str, name: &str, refresh: bool| {
            let args = Value::map().with("pkgs", super::super::string_list(vec![name.into()])).with("refresh", refresh);
            halite_proto::StateCall::new(name, kind, args)
        };
        fake.set("candidates/jq", "1.7");
        let job = [
            repo("one", "https://one.example.com/debian"),
            repo("two", "https://two.example.com/debian"),
            pkg("pkg.installed", "curl", true),
            pkg("pkg.installed", "nginx", false),
            pkg("pkg.latest", "jq", true),
        ];
        let results = crate::apply::run_states(&job, false, &env);
        assert!(results.iter().all(|r| matches!(r.outcome, halite_proto::Outcome::Changed { .. })), "{results:#?}");
        let calls = fake.take_calls();
        let updates: Vec<usize> =
            calls.iter().enumerate().filter(|(_, c)| c.starts_with("apt-get update")).map(|(i, _)| i).collect();
        assert_eq!(updates.len(), 1, "{calls:#?}");
        let first_install = calls.iter().position(|c| c.starts_with("apt-get install")).unwrap();
        assert!(updates[0] < first_install, "{calls:#?}");

        // Nothing changed: no refresh, but `refresh: True` asks for one.
        let results = crate::apply::run_states(&job[..2], false, &env);
        assert!(results.iter().all(|r| r.outcome == halite_proto::Outcome::Unchanged), "{results:#?}");
        assert!(!fake.take_calls().iter().any(|c| c.starts_with("apt-get update")));
        let asking = [pkg("pkg.installed", "curl", true), pkg("pkg.installed", "vim", true)];
        crate::apply::run_states(&asking, false, &env);
        let calls = fake.take_calls();
        assert_eq!(calls.iter().filter(|c| c.starts_with("apt-get update")).count(), 1, "{calls:#?}");
    }

    /// A key from a URL as the master fills it in (a key gpg made): written
    /// to the keyrings with the line, the index refreshed once, then
    /// unchanged; another key in its place fails the state on the agent
    /// and writes nothing.
    #[test]
    fn a_fetched_key_is_checked_by_fingerprint_then_kept() {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/keys");
        let fingerprint = std::fs::read_to_string(keys.join("repo.fingerprint")).unwrap();
        let fake = StandIns::new();
        let root = tempfile::tempdir().unwrap();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..fake.env() };
        let call = resolved_in(
            KIND.name,
            &format!(
                "name: deb https://apt.example.com/debian bookworm main\nkey_url: https://127.0.0.1/repo.gpg\nkeyid: {fingerprint}\nfile: /etc/apt/sources.list.d/example.list"
            ),
            &[],
        );
        let call = crate::paths::rooted_call(&call, root.path());
        let filled = |bytes: Vec<u8>| {
            let mut call = call.clone();
            crate::fetch::fill(&mut call.args, 0, Ok(("https://127.0.0.1/repo.gpg".into(), bytes)));
            call
        };
        let wrong = apply_call(&filled(b"not the key".to_vec()), false, &env);
        let halite_proto::Outcome::Failed { error } = wrong.outcome else { panic!("{wrong:?}") };
        assert!(error.contains("not an OpenPGP public key") && error.contains("https://127.0.0.1/repo.gpg"), "{error}");
        assert!(!root.path().join("etc/apt").exists(), "a refused key wrote something");

        let key = std::fs::read(keys.join("repo.gpg")).unwrap();
        let first = changes(apply_call(&filled(key.clone()), false, &env).outcome);
        assert_eq!(first.len(), 4, "the key, the file, its line, the refresh: {first:?}");
        assert_eq!(std::fs::read(root.path().join("etc/apt/keyrings/repo.gpg")).unwrap(), key);
        assert!(
            std::fs::read_to_string(root.path().join("etc/apt/sources.list.d/example.list"))
                .unwrap()
                .contains("[signed-by=/etc/apt/keyrings/repo.gpg] https://apt.example.com/debian")
        );
        assert_eq!(fake.take_calls().iter().filter(|c| c.starts_with("apt-get update")).count(), 1);
        assert!(changes(apply_call(&filled(key), false, &env).outcome).is_empty());
        assert!(fake.take_calls().is_empty(), "nothing ran for an unchanged repository");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "a:\n  pkgrepo.managed:\n    name: deb https://x/debian stable main\n    key_url: https://x/key.gpg\n    file: /etc/apt/x.conf\nb:\n  pkgrepo.managed:\n    name: ppa:foo/bar\n",
        );
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [4, 5, 8], "{diagnostics:#?}");
        assert!(diagnostics[0].message.contains("no `keyid`"), "{diagnostics:#?}");
        let diagnostics = load(
            "a:\n  pkgrepo.managed:\n    name: deb https://x/debian stable main\n    key_url: https://x/key.gpg\n    keyid: DEADBEEF\n",
        );
        assert_eq!(diagnostics.iter().map(|d| d.line).collect::<Vec<_>>(), [5], "{diagnostics:#?}");
    }

    /// A key by URL is a fetch request checked by fingerprint, kept where
    /// a tree key would be; a tree key with a wrong `keyid` is refused.
    #[test]
    fn a_key_url_resolves_to_a_fingerprint_checked_fetch() {
        let fingerprint = "0123 4567 89AB CDEF 0123  4567 89ab cdef 0123 4567";
        let call = resolved_in(
            KIND.name,
            &format!(
                "name: deb https://apt.example.com/debian bookworm main\nkey_url: https://127.0.0.1/repo.asc\nkeyid: {fingerprint}"
            ),
            &[],
        );
        let wanted = crate::fetch::requests(&call.args);
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].into, "key");
        assert_eq!(
            wanted[0].verify,
            crate::fetch::Verify::Fingerprints(vec!["0123456789ABCDEF0123456789ABCDEF01234567".into()])
        );
        assert_eq!(args::string(&call.args, "key_path").unwrap(), "/etc/apt/keyrings/repo.asc");
        assert!(args::string(&call.args, "line").unwrap().contains("signed-by=/etc/apt/keyrings/repo.asc"));
        let diagnostics = load(&format!(
            "a:\n  pkgrepo.managed:\n    name: deb https://x/debian stable main\n    key_url: salt://s.yaml\n    keyid: {fingerprint}\n"
        ));
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert!(
            diagnostics[0].line == 5 && diagnostics[0].message.contains("not an OpenPGP public key"),
            "{diagnostics:#?}"
        );
    }
}
