//! `file.managed`: a file with given contents, mode and owner, replaced
//! atomically (temporary file in the same directory, fsync, rename).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use halite_proto::{Sha256, Value};
use serde::Deserialize;

use super::{Authored, Kind, Plan, Problem, args};
use crate::apply::{ApplyEnv, ManagedFile};
use crate::diag::Location;

pub static KIND: Kind = Kind {
    name: "file.managed",
    summary: "A file with the given contents, mode and owner, replaced atomically.",
    example: "motd:\n  file.managed:\n    path: /etc/motd\n    contents: \"managed by halite\\n\"\n    mode: \"0644\"\n",
    resolve,
    plan,
};

/// Mode for a new file whose state does not say.
const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The file; Salt spells it `name`. Defaults to the state id.
    #[serde(alias = "name")]
    path: Option<String>,
    /// A file in the state tree (`files/nginx.conf` or `salt://files/nginx.conf`).
    source: Option<String>,
    contents: Option<String>,
    /// Octal, as a string (`"0644"`) or as digits (`644`).
    mode: Option<serde_json::Value>,
    user: Option<String>,
    group: Option<String>,
    /// Create missing parent directories.
    #[serde(default = "default_true")]
    makedirs: bool,
    /// `jinja`: the content is a template, rendered per agent.
    template: Option<String>,
}

fn default_true() -> bool {
    true
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state
        .fields
        .decode()
        .map_err(|(at, message)| vec![Problem::new(at, format!("file.managed `{}`: {message}", state.id))])?;
    let at = |key: &str| state.fields.key_location(key);
    let mut problems = Vec::new();

    let path = config.path.clone().unwrap_or_else(|| state.id.to_owned());
    if !Path::new(&path).is_absolute() {
        problems.push(
            Problem::new(
                at("path").or(at("name")),
                format!("file.managed `{}`: path `{path}` is not absolute", state.id),
            )
            .help("give the full path of the file on the agent, e.g. /etc/motd"),
        );
    }

    let contents = match (&config.source, &config.contents) {
        (Some(_), Some(_)) => {
            problems.push(
                Problem::new(
                    at("contents"),
                    format!("file.managed `{}`: both `source` and `contents` given", state.id),
                )
                .help("keep one of them"),
            );
            None
        }
        (None, None) => {
            problems.push(
                Problem::new(None, format!("file.managed `{}`: neither `source` nor `contents` given", state.id))
                    .help("add `source: files/<name>` (a file in the state tree) or `contents: ...`"),
            );
            None
        }
        (None, Some(text)) => Some(text.clone().into_bytes()),
        (Some(source), None) => match read_source(state.tree_root, source) {
            Ok(bytes) => Some(bytes),
            Err(problem) => {
                problems.push(
                    Problem::new(at("source"), format!("file.managed `{}`: {}", state.id, problem.0)).help(problem.1),
                );
                None
            }
        },
    };

    if let Some(engine) = &config.template {
        if engine != "jinja" {
            problems.push(
                Problem::new(
                    at("template"),
                    format!("file.managed `{}`: template engine `{engine}` is not supported", state.id),
                )
                .help("halite templates are Jinja (minijinja): write `template: jinja`"),
            );
        } else if let Some(text) = &contents
            && let Err(error) = crate::template::check(&String::from_utf8_lossy(text))
        {
            let line = error.line.unwrap_or(0) as u64;
            let problem = match &config.source {
                Some(source) => {
                    let file = state.tree_root.join(source.strip_prefix("salt://").unwrap_or(source));
                    Problem::new(
                        Some(Location::new(line, 1)),
                        format!("file.managed `{}`: template {}", state.id, error.message),
                    )
                    .in_file(file)
                }
                None => {
                    // A block scalar's first line is the line after the key.
                    let key = at("contents").unwrap_or_default();
                    Problem::new(
                        Some(Location::new(key.line + line, 1)),
                        format!("file.managed `{}`: template {}", state.id, error.message),
                    )
                }
            };
            problems.push(problem.help("fix the Jinja syntax at that line"));
        }
    }

    let mode = match config.mode.as_ref().map(parse_mode).transpose() {
        Ok(mode) => mode,
        Err(message) => {
            problems.push(
                Problem::new(at("mode"), format!("file.managed `{}`: {message}", state.id))
                    .help("write the mode in octal as a quoted string, e.g. mode: \"0644\""),
            );
            None
        }
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("path", path)
        .with("contents", contents.unwrap_or_default())
        .with("makedirs", config.makedirs);
    if let Some(mode) = mode {
        resolved = resolved.with("mode", mode);
    }
    if let Some(user) = config.user {
        resolved = resolved.with("user", user);
    }
    if let Some(group) = config.group {
        resolved = resolved.with("group", group);
    }
    if config.template.is_some() {
        resolved = resolved.with("template", "jinja");
    }
    Ok(resolved)
}

/// Reads a source file, refusing anything outside the tree: absolute paths,
/// `..`, and symlinks that lead out. Errors are (what, how to fix).
fn read_source(root: &Path, source: &str) -> Result<Vec<u8>, (String, String)> {
    use crate::paths::TreePathError;
    let relative = source.strip_prefix("salt://").unwrap_or(source);
    let canonical = crate::paths::in_tree(root, relative).map_err(|error| match error {
        TreePathError::Leaves { .. } => (
            format!("source `{source}` leaves the state tree"),
            "name a file inside the state tree, relative to its root, e.g. files/nginx.conf".into(),
        ),
        TreePathError::Root { .. } | TreePathError::Missing { .. } => (
            format!("source `{source}` does not exist"),
            format!("create {} or fix the name", root.join(relative).display()),
        ),
        TreePathError::LinksOut { .. } => (
            format!("source `{source}` is a link that leads out of the state tree"),
            "copy the file into the tree instead of linking to it".into(),
        ),
    })?;
    fs::read(&canonical)
        .map_err(|e| (format!("source `{source}` cannot be read: {e}"), "check that it is a readable file".into()))
}

pub(crate) fn parse_mode(value: &serde_json::Value) -> Result<u32, String> {
    let digits = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => {
            match n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64)) {
                Some(n) => n.to_string(),
                None => return Err(format!("mode `{n}` is not an octal number")),
            }
        }
        other => return Err(format!("mode `{other}` is not an octal number")),
    };
    let mode = u32::from_str_radix(digits.trim_start_matches("0o"), 8)
        .map_err(|_| format!("mode `{digits}` is not an octal number"))?;
    if mode > 0o7777 {
        return Err(format!("mode `{digits}` is larger than 7777"));
    }
    Ok(mode)
}

#[derive(Debug)]
struct FilePlan {
    path: PathBuf,
    contents: Vec<u8>,
    desired: Sha256,
    mode: Option<u32>,
    owner: Option<u32>,
    group: Option<u32>,
    makedirs: bool,
    current: Option<Current>,
    backup_dir: Option<PathBuf>,
    backups_kept: usize,
}

#[derive(Debug)]
struct Current {
    sha256: Sha256,
    mode: u32,
    uid: u32,
    gid: u32,
    /// For the diff and the backup; `None` when larger than [`DIFF_LIMIT`].
    content: Option<Vec<u8>>,
}

/// Files larger than this are not diffed (the diff says so).
const DIFF_LIMIT: u64 = 1024 * 1024;

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, String> {
    let path = PathBuf::from(args::string(args, "path")?);
    if args.get("template").is_some() {
        return Err(format!(
            "{}: the template was not rendered (the master renders it for each agent)",
            path.display()
        ));
    }
    let contents = args::bytes(args, "contents")?.to_vec();
    let owner = args::opt_string(args, "user").map(lookup_user).transpose()?;
    let group = args::opt_string(args, "group").map(lookup_group).transpose()?;
    let current = match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => return Err(format!("{} is a directory", path.display())),
        Ok(meta) => {
            let file = fs::File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let sha256 = Sha256::of_reader(file).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let content = if meta.len() <= DIFF_LIMIT && sha256 != Sha256::of(&contents) {
                Some(fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
            } else {
                None
            };
            Some(Current { sha256, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), content })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    Ok(Box::new(FilePlan {
        desired: Sha256::of(&contents),
        path,
        contents,
        mode: args::opt_u32(args, "mode"),
        owner,
        group,
        makedirs: args::bool_or(args, "makedirs", true),
        current,
        backup_dir: env.backup_dir.clone(),
        backups_kept: env.backups_kept,
    }))
}

/// The most time a diff may take before it is made coarser.
const DIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

/// A unified diff of text content, or one line when either side is binary.
pub(crate) fn unified_diff(path: &Path, old: &[u8], new: &[u8]) -> String {
    let (Ok(old), Ok(new)) = (std::str::from_utf8(old), std::str::from_utf8(new)) else {
        return format!("{}: binary content differs\n", path.display());
    };
    if old.contains('\0') || new.contains('\0') {
        return format!("{}: binary content differs\n", path.display());
    }
    let name = path.display().to_string();
    // Myers' diff is quadratic in the worst case (a 20,000-line drift
    // against a short file took seconds in a debug build): past the
    // deadline `similar` settles for a coarser, still correct diff, so a
    // restore is never held up by its own audit trail.
    similar::TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&name, &name)
        .to_string()
}

pub(crate) fn lookup_user(name: &str) -> Result<u32, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no user `{name}` on this host")),
        Err(e) => Err(format!("cannot look up user `{name}`: {e}")),
    }
}

pub(crate) fn lookup_group(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group `{name}` on this host")),
        Err(e) => Err(format!("cannot look up group `{name}`: {e}")),
    }
}

impl FilePlan {
    fn content_differs(&self) -> bool {
        self.current.as_ref().is_none_or(|c| c.sha256 != self.desired)
    }

    fn mode_differs(&self) -> Option<(u32, u32)> {
        let (current, desired) = (self.current.as_ref()?, self.mode?);
        (current.mode != desired).then_some((current.mode, desired))
    }

    fn owner_differs(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| self.owner.is_some_and(|u| u != c.uid) || self.group.is_some_and(|g| g != c.gid))
    }

    fn write_atomically(&self) -> Result<(), String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.path.display());
        let parent = self.path.parent().ok_or_else(|| format!("{} has no parent directory", self.path.display()))?;
        if self.makedirs {
            fs::create_dir_all(parent).map_err(|e| fail("cannot create the directory of", e))?;
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".halite-")
            .tempfile_in(parent)
            .map_err(|e| fail("cannot create a temporary file beside", e))?;
        temp.write_all(&self.contents).map_err(|e| fail("cannot write", e))?;
        let mode = self.mode.or(self.current.as_ref().map(|c| c.mode)).unwrap_or(DEFAULT_MODE);
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(mode))
            .map_err(|e| fail("cannot set the mode of", e))?;
        let (uid, gid) = match &self.current {
            Some(c) => (self.owner.or(Some(c.uid)), self.group.or(Some(c.gid))),
            None => (self.owner, self.group),
        };
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(temp.path(), uid, gid).map_err(|e| fail("cannot set the owner of", e))?;
        }
        temp.as_file().sync_all().map_err(|e| fail("cannot flush", e))?;
        temp.persist(&self.path).map_err(|e| fail("cannot replace", e.error))?;
        // The rename is durable only once the directory entry is on disk.
        fs::File::open(parent).and_then(|dir| dir.sync_all()).map_err(|e| fail("cannot flush the directory of", e))
    }
}

impl Plan for FilePlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        match &self.current {
            None => changes.push(format!("created {} ({} bytes)", self.path.display(), self.contents.len())),
            Some(current) if current.sha256 != self.desired => changes.push(format!(
                "content of {}: sha256 {:.12} -> {:.12}",
                self.path.display(),
                current.sha256.to_hex(),
                self.desired.to_hex()
            )),
            Some(_) => {}
        }
        if let Some((from, to)) = self.mode_differs() {
            changes.push(format!("mode of {}: {from:04o} -> {to:04o}", self.path.display()));
        }
        if self.owner_differs() {
            changes.push(format!("owner of {} changed", self.path.display()));
        }
        changes
    }

    fn diff(&self) -> Option<String> {
        if !self.content_differs() {
            return None;
        }
        let old: &[u8] = match &self.current {
            None => b"",
            Some(Current { content: Some(content), .. }) => content,
            Some(Current { content: None, .. }) => {
                return Some(format!(
                    "{}: content differs (larger than {DIFF_LIMIT} bytes, not diffed)\n",
                    self.path.display()
                ));
            }
        };
        Some(unified_diff(&self.path, old, &self.contents))
    }

    fn managed_file(&self) -> Option<ManagedFile> {
        Some(ManagedFile { path: self.path.clone(), sha256: self.desired, mode: self.mode })
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, String> {
        let mut changes = self.changes();
        if self.content_differs() {
            if let (Some(dir), Some(Current { content: Some(old), .. })) = (&self.backup_dir, &self.current) {
                let backup = crate::backup::save(dir, &self.path, old, self.backups_kept)?;
                changes.push(format!("previous content kept in {}", backup.display()));
            }
            self.write_atomically()?;
            return Ok(changes);
        }
        if let Some((_, mode)) = self.mode_differs() {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set the mode of {}: {e}", self.path.display()))?;
        }
        if self.owner_differs() {
            std::os::unix::fs::chown(&self.path, self.owner, self.group)
                .map_err(|e| format!("cannot set the owner of {}: {e}", self.path.display()))?;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};

    fn call(path: &Path, contents: &str, mode: Option<u32>) -> StateCall {
        let mut args = Value::map().with("path", path.to_str().unwrap()).with("contents", contents.as_bytes().to_vec());
        if let Some(mode) = mode {
            args = args.with("mode", mode);
        }
        StateCall::new("t", "file.managed", args)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_then_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/conf");
        let result = apply_call(&call(&path, "x\n", Some(0o640)), false, &ApplyEnv::default());
        assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
        assert_eq!(fs::read(&path).unwrap(), b"x\n");
        assert_eq!(mode_of(&path), 0o640);
        assert_eq!(
            apply_call(&call(&path, "x\n", Some(0o640)), false, &ApplyEnv::default()).outcome,
            Outcome::Unchanged
        );
    }

    #[test]
    fn restores_content_and_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        fs::write(&path, "drifted").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let result = apply_call(&call(&path, "desired", Some(0o644)), false, &ApplyEnv::default());
        let Outcome::Changed { changes } = result.outcome else { panic!("{result:?}") };
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(fs::read(&path).unwrap(), b"desired");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn mode_only_drift_is_fixed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        fs::write(&path, "same").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let result = apply_call(&call(&path, "same", Some(0o644)), false, &ApplyEnv::default());
        assert_eq!(
            result.outcome,
            Outcome::Changed { changes: vec![format!("mode of {}: 0666 -> 0644", path.display())] }
        );
        assert_eq!(mode_of(&path), 0o644);
    }

    #[test]
    fn test_mode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        fs::write(&path, "drifted").unwrap();
        let result = apply_call(&call(&path, "desired", None), true, &ApplyEnv::default());
        assert!(matches!(result.outcome, Outcome::WouldChange { .. }));
        assert_eq!(fs::read(&path).unwrap(), b"drifted");
        let missing = dir.path().join("missing");
        assert!(matches!(
            apply_call(&call(&missing, "x", None), true, &ApplyEnv::default()).outcome,
            Outcome::WouldChange { .. }
        ));
        assert!(!missing.exists());
    }

    #[test]
    fn a_directory_in_the_way_fails() {
        let dir = tempfile::tempdir().unwrap();
        let result = apply_call(&call(dir.path(), "x", None), false, &ApplyEnv::default());
        assert!(result.outcome.is_failed());
    }

    #[test]
    fn modes_parse_as_octal() {
        let cases = [
            (serde_json::json!("0644"), Ok(0o644)),
            (serde_json::json!(644), Ok(0o644)),
            (serde_json::json!(644.0), Ok(0o644)),
            (serde_json::json!("0o755"), Ok(0o755)),
            (serde_json::json!("0698"), Err(())),
            (serde_json::json!(true), Err(())),
            (serde_json::json!("17777"), Err(())),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_mode(&input).map_err(|_| ()), expected, "{input}");
        }
    }

    #[test]
    fn diff_and_backup_of_replaced_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        fs::write(&path, "a\nold\nc\n").unwrap();
        let env = ApplyEnv { backup_dir: Some(dir.path().join("backup")), backups_kept: 2, ..ApplyEnv::default() };
        let result = apply_call(&call(&path, "a\nnew\nc\n", None), true, &env);
        let diff = result.diff.expect("a diff in test mode");
        assert!(diff.contains("-old\n+new\n") && diff.contains(&format!("--- {}", path.display())), "{diff}");
        assert!(!dir.path().join("backup").exists(), "test mode kept a backup");
        for (i, next) in ["v1\n", "v2\n", "v3\n"].iter().enumerate() {
            let result = apply_call(&call(&path, next, None), false, &env);
            assert!(result.diff.is_some(), "{i}: {result:?}");
        }
        let backups = crate::backup::backups_of(&dir.path().join("backup"), &path);
        let kept: Vec<String> = backups.iter().map(|b| fs::read_to_string(b).unwrap()).collect();
        assert_eq!(kept, ["v1\n", "v2\n"], "the original and older backups beyond 2 are gone");
        // Unchanged: no diff.
        assert_eq!(apply_call(&call(&path, "v3\n", None), false, &env).diff, None);
    }

    #[test]
    fn binary_content_is_not_diffed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        fs::write(&path, [0u8, 159, 146, 150]).unwrap();
        let result = apply_call(&call(&path, "text", None), true, &ApplyEnv::default());
        assert_eq!(result.diff.unwrap(), format!("{}: binary content differs\n", path.display()));
    }

    #[test]
    fn templates_render_per_agent_and_syntax_errors_point_at_the_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("files")).unwrap();
        fs::write(dir.path().join("files/motd.j2"), "host {{ id }} on {{ facts.os }}, port {{ vars.port }}\n").unwrap();
        fs::write(dir.path().join("files/bad.j2"), "ok\n{% if %}\n").unwrap();
        fs::write(dir.path().join("vars.yaml"), "'*': {port: 80}\n'web*': {port: 8080}\n").unwrap();
        fs::write(
            dir.path().join("m.yaml"),
            "motd:\n  file.managed:\n    path: /etc/motd\n    source: files/motd.j2\n    template: jinja\n",
        )
        .unwrap();
        let (tree, diagnostics) = crate::StateTree::load(dir.path());
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let facts = Value::map().with("os", "debian");
        let calls = tree.calls_for(&["m".into()], &crate::RenderContext::new("web1", &facts)).unwrap();
        assert_eq!(args::bytes(&calls[0].args, "contents").unwrap(), b"host web1 on debian, port 8080\n");
        assert!(calls[0].args.get("template").is_none());
        let errors = tree.calls_for(&["m".into()], &crate::RenderContext::new("web1", &Value::Null)).unwrap_err();
        assert!(errors[0].message.contains("does not render for agent `web1`"), "{errors:#?}");
        // Unrendered, the agent refuses it.
        let raw = &tree.files["m"].states[0].call;
        assert!(apply_call(raw, true, &ApplyEnv::default()).outcome.is_failed());

        fs::write(
            dir.path().join("b.yaml"),
            "bad:\n  file.managed:\n    path: /etc/bad\n    source: files/bad.j2\n    template: jinja\ninline:\n  file.managed:\n    path: /etc/x\n    template: jinja\n    contents: |\n      fine\n      {{ oops\n",
        )
        .unwrap();
        let (_, diagnostics) = crate::StateTree::load(dir.path());
        assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
        assert!(diagnostics.iter().any(|d| d.file.ends_with("b.yaml") && d.line == 12), "{diagnostics:#?}");
        assert!(diagnostics.iter().any(|d| d.file.ends_with("files/bad.j2") && d.line == 2), "{diagnostics:#?}");
    }

    #[test]
    fn sources_cannot_leave_the_tree() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        fs::create_dir_all(root.join("files")).unwrap();
        fs::write(root.join("files/ok"), "ok").unwrap();
        fs::write(outer.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("files/link")).unwrap();
        assert_eq!(read_source(&root, "files/ok").unwrap(), b"ok");
        assert_eq!(read_source(&root, "salt://files/ok").unwrap(), b"ok");
        for bad in ["../secret", "/etc/passwd", "files/link", "files/missing"] {
            assert!(read_source(&root, bad).is_err(), "{bad} should be refused");
        }
    }
}
