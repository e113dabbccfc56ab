//! `file.managed`: a file with given contents, mode and owner, replaced
//! atomically (`halite_fs`'s one rule: temporary file beside it, fsync,
//! rename, fsync the directory).
//!
//! Every file operation goes through a descriptor (`halite_fs`): the
//! directory is opened without following an untrusted link, the file
//! `O_NOFOLLOW` in it (a link there fails the state), its digest, diff and
//! backup are read through that descriptor, and a mode or owner change is
//! `fchmod`/`fchown` on the file re-opened the same way and checked to be
//! the one planned. A user who can write the file's directory cannot make
//! root read or change another file through it.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use halite_fs::{Dir, FsError, OpenFile, Perms, Stat};

use halite_proto::{Sha256, Value};
use serde::Deserialize;

use super::{Authored, FileLike, FileView, Kind, KindError, Plan, Problem, args};
use crate::diag::Location;
use crate::env::{ApplyEnv, ManagedFile};

pub static KIND: Kind = Kind {
    name: "file.managed",
    summary: "A file with the given contents, mode and owner, replaced atomically.",
    example: "motd:\n  file.managed:\n    path: /etc/motd\n    contents: \"managed by halite\\n\"\n    mode: \"0644\"\n",
    resolve,
    plan,
    file: Some(&FILE),
};

/// What offline healing, `watch: true` and templates need of a resolved
/// `file.managed`.
static FILE: FileLike = FileLike {
    view: |args| {
        Some(FileView {
            path: args::string(args, "path").ok()?,
            contents: args::bytes(args, "contents").ok()?,
            mode: args::opt_u32(args, "mode"),
        })
    },
    contents_mut: |args| args::bytes_mut(args, "contents"),
    contents_key: "contents",
};

/// Mode for a new file whose state does not say.
const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The file; Salt spells it `name`. Defaults to the state id.
    #[serde(alias = "name")]
    path: Option<String>,
    /// A file in the state tree (`files/nginx.conf` or
    /// `salt://files/nginx.conf`), or a list of them: the first that
    /// exists is used (Salt's source list).
    source: Option<super::OneOrMany>,
    /// The source's expected sha256: `sha256=<hex>`, `<hex>`, or a file
    /// of the tree listing `<hex>  <name>` lines (Salt's forms); for a URL
    /// also `sha512=<hex>`. Required for a URL unless `skip_verify`.
    source_hash: Option<String>,
    /// Salt's: take a URL's body without a `source_hash`.
    #[serde(default)]
    skip_verify: bool,
    /// The content; a list is joined with newlines (Salt).
    contents: Option<super::OneOrMany>,
    /// End `contents` with a newline when it has none (Salt's default in
    /// `.sls` files, which the loader sets; off in halite's `.yaml`).
    #[serde(default)]
    contents_newline: bool,
    /// Salt's template variables: `defaults` overridden by `context`,
    /// top-level names in the template.
    context: Option<serde_json::Map<String, serde_json::Value>>,
    defaults: Option<serde_json::Map<String, serde_json::Value>>,
    /// Octal, as a string (`"0644"`) or as digits (`644`).
    mode: Option<serde_json::Value>,
    user: Option<String>,
    group: Option<String>,
    /// Create missing parent directories.
    #[serde(default = "default_true")]
    makedirs: bool,
    /// The mode of the directories `makedirs` creates (default 0755; in
    /// `.sls` files Salt's: `mode` with the execute bit added to each
    /// non-zero digit, set by the loader's dialect).
    dir_mode: Option<serde_json::Value>,
    /// `jinja`: the content is a template, rendered per agent.
    template: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Config {
    fn fields_has(&self, state: &Authored<'_>, key: &str) -> bool {
        state.fields.get(key).is_some()
    }
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

    let mut fetch = None;
    let source = match config.source.clone().map(super::OneOrMany::into_vec) {
        Some(list) if list.iter().any(|s| crate::fetch::is_url(s)) => match url_source(state, &config, &list) {
            Ok((request, fallback)) => {
                fetch = Some(request);
                fallback
            }
            Err(mut more) => {
                problems.append(&mut more);
                None
            }
        },
        Some(list) => match pick_source(state.tree_root, &list) {
            Ok(source) => Some(source),
            Err(problem) => {
                problems.push(
                    Problem::new(at("source"), format!("file.managed `{}`: {}", state.id, problem.0)).help(problem.1),
                );
                None
            }
        },
        None => None,
    };
    if config.source_hash.is_some() && config.source.is_none() {
        problems.push(
            Problem::new(at("source_hash"), format!("file.managed `{}`: `source_hash` without `source`", state.id))
                .help("remove it, or add the `source` it checks"),
        );
    }
    let contents = match (&source, &config.contents) {
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
        // Fetched by the master: nothing from the tree.
        (None, None) if fetch.is_some() => None,
        // The source list was refused: that is the problem reported.
        (None, None) if config.source.is_some() => None,
        (None, None) => {
            problems.push(
                Problem::new(None, format!("file.managed `{}`: neither `source` nor `contents` given", state.id))
                    .help("add `source: files/<name>` (a file in the state tree) or `contents: ...`"),
            );
            None
        }
        (None, Some(text)) => {
            let mut text = match text.clone() {
                super::OneOrMany::One(text) => text,
                super::OneOrMany::Many(lines) => lines.join("\n"),
            };
            if config.contents_newline && !text.ends_with('\n') {
                text.push('\n');
            }
            Some(text.into_bytes())
        }
        (Some(source), None) => match read_source(state.tree_root, source) {
            Ok(bytes) => {
                if let Some(hash) = &config.source_hash
                    && fetch.is_none()
                    && let Err(problem) = check_hash(state.tree_root, source, hash, &bytes)
                {
                    problems.push(
                        Problem::new(at("source_hash"), format!("file.managed `{}`: {}", state.id, problem.0))
                            .help(problem.1),
                    );
                }
                Some(bytes)
            }
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
            && let Err(error) = crate::template::check_with(&String::from_utf8_lossy(text), &names(&config))
        {
            let line = error.line.unwrap_or(0) as u64;
            let problem = match &source {
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

    if config.template.is_none() {
        for key in ["context", "defaults"] {
            if config.fields_has(state, key) {
                problems.push(
                    Problem::new(at(key), format!("file.managed `{}`: `{key}` without `template: jinja`", state.id))
                        .help("add `template: jinja`, or remove it: without a template nothing reads it"),
                );
            }
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

    let dir_mode = match config.dir_mode.as_ref().map(parse_mode).transpose() {
        Ok(mode) => mode,
        Err(message) => {
            problems.push(
                Problem::new(at("dir_mode"), format!("file.managed `{}`: dir_mode: {message}", state.id))
                    .help("write the mode in octal, e.g. dir_mode: \"0755\""),
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
    if let Some(dir_mode) = dir_mode {
        resolved = resolved.with("dir_mode", dir_mode);
    }
    if let Some(user) = config.user {
        resolved = resolved.with("user", user);
    }
    if let Some(group) = config.group {
        resolved = resolved.with("group", group);
    }
    if let Some(request) = fetch {
        resolved = crate::fetch::with_requests(resolved, &[request]);
    }
    if config.template.is_some() {
        resolved = resolved.with("template", "jinja");
        let mut variables = config.defaults.clone().unwrap_or_default();
        variables.extend(config.context.clone().unwrap_or_default());
        if !variables.is_empty() {
            resolved = resolved.with("context", Value::from_json(&serde_json::Value::Object(variables)));
        }
    }
    Ok(resolved)
}

/// The names `context` and `defaults` give the template.
fn names(config: &Config) -> Vec<String> {
    config.context.iter().chain(config.defaults.iter()).flat_map(|m| m.keys().cloned()).collect()
}

/// A source list with URLs (Salt's order: the first that can be had wins):
/// the URLs before the first tree file that exists, for the master to
/// fetch in order, and that tree file, if any, as the fallback. The hash
/// is required (unless `skip_verify`) and checked on the fallback here.
fn url_source(
    state: &Authored<'_>,
    config: &Config,
    list: &[String],
) -> Result<(crate::fetch::Request, Option<String>), Vec<Problem>> {
    use crate::fetch::{Request, Verify};
    let at = |key: &str| state.fields.key_location(key);
    let problem = |key: &str, what: String, help: &str| {
        Problem::new(at(key), format!("file.managed `{}`: {what}", state.id)).help(help.to_owned())
    };
    let exists = |source: &String| {
        let relative = source.strip_prefix("salt://").unwrap_or(source);
        crate::paths::in_tree(state.tree_root, relative).is_ok_and(|p| p.is_file())
    };
    let mut urls = Vec::new();
    let mut fallback = None;
    for source in list {
        if crate::fetch::is_url(source) {
            urls.push(source.clone());
        } else if exists(source) {
            fallback = Some(source.clone());
            break;
        }
    }
    let mut problems = Vec::new();
    if config.template.is_some() {
        problems.push(problem(
            "template",
            format!("source `{}` is a URL and `template: jinja` is set", urls[0]),
            "put the template in the state tree: the master renders templates before it fetches",
        ));
    }
    let verify = match (&config.source_hash, config.skip_verify) {
        (_, true) => Ok(Verify::Skip),
        (None, false) => Err(problem(
            "source",
            format!("source `{}` is a URL and has no `source_hash`", urls[0]),
            "add `source_hash: sha256=<hex>` (sha256sum of the file), or `skip_verify: True` to take what the server sends",
        )),
        (Some(hash), false) if crate::fetch::is_url(hash) => Ok(Verify::HashFile(hash.clone())),
        (Some(hash), false) if hash.starts_with("salt://") || hash.contains('/') => {
            let name = urls[0].rsplit('/').next().unwrap_or_default();
            listed_hash(state.tree_root, hash, name)
                .and_then(|hex| Verify::parse_hash(&hex).map_err(|e| (e.to_string(), String::new())))
                .map_err(|(what, help)| {
                    problem(
                        "source_hash",
                        what,
                        if help.is_empty() { "give the sha256 (sha256sum FILE)" } else { &help },
                    )
                })
        }
        (Some(hash), false) => Verify::parse_hash(hash)
            .map_err(|e| problem("source_hash", e.to_string(), "give the sha256 (sha256sum FILE): sha256=<hex>")),
    };
    let verify = match verify {
        Ok(verify) => Some(verify),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    // A hash file on a server is read by the master, not here.
    if let (Some(verify), Some(source)) = (&verify, &fallback)
        && !matches!(verify, Verify::HashFile(_))
    {
        match read_source(state.tree_root, source) {
            Ok(bytes) => {
                if let Err(error) = verify.check(source, &bytes) {
                    problems.push(problem("source_hash", error.to_string(), "update the file or the hash"));
                }
            }
            Err((what, help)) => problems.push(problem("source", what, &help)),
        }
    }
    match verify {
        Some(verify) if problems.is_empty() => {
            let mut request = Request::new("contents", urls, verify);
            request.fallback = fallback.is_some();
            Ok((request, fallback))
        }
        _ => Err(problems),
    }
}

/// The first source of Salt's list that exists in the tree. Errors are
/// (what, how to fix).
fn pick_source(root: &Path, list: &[String]) -> Result<String, (String, String)> {
    if let Some(url) = list.iter().find(|s| crate::fetch::is_other_scheme(s)) {
        return Err((
            format!("source `{url}` is a URL halite does not fetch (only http:// and https://)"),
            "download the file into the state tree and name it there, or serve it over HTTP(S)".into(),
        ));
    }
    if list.is_empty() {
        return Err(("`source` is an empty list".into(), "name a file in the state tree".into()));
    }
    let exists = |source: &String| {
        let relative = source.strip_prefix("salt://").unwrap_or(source);
        crate::paths::in_tree(root, relative).is_ok_and(|p| p.is_file())
    };
    // None exists: the first one's error says why.
    Ok(list.iter().find(|s| exists(s)).unwrap_or(&list[0]).clone())
}

/// Checks `content` (of `source`) against Salt's `source_hash`:
/// `sha256=<hex>`, a bare sha256, or a file of the tree with
/// `<hex>  <name>` lines. Errors are (what, how to fix).
pub(crate) fn check_hash(root: &Path, source: &str, hash: &str, content: &[u8]) -> Result<(), (String, String)> {
    let actual = Sha256::of(content).to_hex();
    let name = Path::new(source).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let is_file = hash.starts_with("salt://") || hash.contains('/');
    let expected = if let Some((kind, hex)) = hash.split_once('=').or_else(|| hash.split_once(':')).filter(|_| !is_file)
    {
        if kind != "sha256" {
            return Err((
                format!("source_hash type `{kind}` is not supported"),
                "give the sha256 (sha256sum FILE)".into(),
            ));
        }
        hex.to_owned()
    } else if hash.chars().all(|c| c.is_ascii_hexdigit()) {
        hash.to_owned()
    } else {
        listed_hash(root, hash, &name)?
    };
    let expected = expected.to_lowercase();
    if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err((
            format!("source_hash `{expected}` is not a sha256 (64 hex digits)"),
            "give the sha256 (sha256sum FILE)".into(),
        ));
    }
    if expected != actual {
        return Err((
            format!("source `{source}` has sha256 {actual}, source_hash says {expected}"),
            "update the file or the hash".into(),
        ));
    }
    Ok(())
}

/// The hash a file of the tree (`hash`, Salt's `SHA256SUMS` form: lines of
/// `<hex>  <name>`) lists for the file called `name`, or its only line.
fn listed_hash(root: &Path, hash: &str, name: &str) -> Result<String, (String, String)> {
    let listed = read_source(root, hash).map_err(|(what, help)| (format!("source_hash: {what}"), help))?;
    let text = String::from_utf8_lossy(&listed).into_owned();
    let lines: Vec<Vec<&str>> =
        text.lines().map(|l| l.split_whitespace().collect()).filter(|w: &Vec<&str>| !w.is_empty()).collect();
    let found = lines
        .iter()
        .find(|w| w.get(1).is_some_and(|n| n.trim_start_matches('*').rsplit('/').next() == Some(name)))
        .or(if lines.len() == 1 { lines.first() } else { None });
    match found {
        Some(words) => Ok(words[0].to_owned()),
        None => Err((
            format!("source_hash file `{hash}` lists no hash for `{name}`"),
            "add a `<sha256>  <name>` line for it".into(),
        )),
    }
}

/// Reads a source file, refusing anything outside the tree: absolute paths,
/// `..`, and symlinks that lead out. Errors are (what, how to fix).
pub(crate) fn read_source(root: &Path, source: &str) -> Result<Vec<u8>, (String, String)> {
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
        error @ (TreePathError::NotAFile { .. }
        | TreePathError::HardLinked { .. }
        | TreePathError::NotADirectory { .. }) => (
            format!("source {error}"),
            "make the source an ordinary file in the tree, with one name (`cp`, not `ln` or `mkfifo`)".into(),
        ),
    })?;
    crate::paths::read_tree_file(&canonical)
        .map_err(|e| (format!("source `{source}` cannot be read: {e}"), "check that it is a readable file".into()))
}

/// Why an authored `mode` is not a file mode; names the mode as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("mode `{mode}` is not an octal number")]
    NotOctal { mode: String },
    #[error("mode `{mode}` is larger than 7777")]
    TooLarge { mode: String },
}

pub(crate) fn parse_mode(value: &serde_json::Value) -> Result<u32, ModeError> {
    let digits = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => {
            match n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64)) {
                Some(n) => n.to_string(),
                None => return Err(ModeError::NotOctal { mode: n.to_string() }),
            }
        }
        other => return Err(ModeError::NotOctal { mode: other.to_string() }),
    };
    let mode = u32::from_str_radix(digits.trim_start_matches("0o"), 8)
        .map_err(|_| ModeError::NotOctal { mode: digits.clone() })?;
    if mode > 0o7777 {
        return Err(ModeError::TooLarge { mode: digits });
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
    /// The mode of directories `makedirs` creates.
    dir_mode: u32,
    /// The file's directory, opened when planning (no untrusted link
    /// followed); `None` when it does not exist yet.
    dir: Option<Dir>,
    /// The file's name in `dir`.
    name: OsString,
    current: Option<Current>,
    backup_dir: Option<PathBuf>,
    backups_kept: usize,
    backup_max_bytes: u64,
}

#[derive(Debug)]
struct Current {
    /// The file as inspected, opened `O_NOFOLLOW` in `dir`: the digest, the
    /// diff and the backup are all read through this descriptor, and a
    /// mode or owner change first checks the name still leads to it.
    file: OpenFile,
    /// `None` when the file has other names (hard links): it is not read,
    /// since another name may be a file halite must not disclose, and it is
    /// replaced by a file of its own.
    sha256: Option<Sha256>,
    /// For the diff; `None` when larger than [`DIFF_LIMIT`] or the same.
    content: Option<Vec<u8>>,
}

impl Current {
    fn stat(&self) -> Stat {
        self.file.stat()
    }
}

/// Files larger than this are not diffed (the diff says so).
pub(crate) const DIFF_LIMIT: u64 = 1024 * 1024;

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    if args.get("template").is_some() {
        return Err(KindError::NotRendered { path });
    }
    crate::fetch::check(args)?;
    let contents = args::bytes(args, "contents")?.to_vec();
    let desired = Sha256::of(&contents);
    let owner = args::opt_string(args, "user").map(lookup_user).transpose()?;
    let group = args::opt_string(args, "group").map(lookup_group).transpose()?;
    let (dir, name) = match halite_fs::open_parent(&path, None) {
        Ok((dir, name)) => (Some(dir), name),
        Err(e) if e.is_not_found() => (None, path.file_name().map(OsStr::to_os_string).unwrap_or_default()),
        Err(e) => return Err(e.into()),
    };
    let opened = match &dir {
        Some(dir) => dir.open_file(&name).map_err(|e| match e {
            FsError::WrongType { found: "directory", .. } => KindError::IsDirectory { path: path.clone() },
            e => e.into(),
        })?,
        None => None,
    };
    let current = opened.map(|file| inspect(file, &desired, &path)).transpose()?;
    Ok(Box::new(FilePlan {
        desired,
        path,
        contents,
        mode: args::opt_u32(args, "mode"),
        owner,
        group,
        makedirs: args::bool_or(args, "makedirs", true),
        dir_mode: args::opt_u32(args, "dir_mode").unwrap_or(0o755),
        dir,
        name,
        current,
        backup_dir: env.backup_dir.clone(),
        backups_kept: env.backups_kept,
        backup_max_bytes: env.backup_max_bytes,
    }))
}

/// Reads the opened file's digest, and its content for the diff when it
/// differs and is small enough, through the one descriptor.
fn inspect(file: OpenFile, desired: &Sha256, path: &Path) -> Result<Current, KindError> {
    if file.stat().nlink > 1 {
        return Ok(Current { file, sha256: None, content: None });
    }
    let fail = |source: std::io::Error| KindError::Read { path: path.to_owned(), source };
    // Sized from the stat, so a small file is read in one call, not in
    // `read_to_end`'s growing probes.
    let mut head = Vec::with_capacity(usize::try_from(file.stat().size.min(DIFF_LIMIT) + 1).unwrap_or(0));
    file.file().take(DIFF_LIMIT + 1).read_to_end(&mut head).map_err(fail)?;
    let (sha256, content) = if head.len() as u64 <= DIFF_LIMIT {
        let sha256 = Sha256::of(&head);
        (sha256, (sha256 != *desired).then_some(head))
    } else {
        (Sha256::of_reader(head.as_slice().chain(file.file())).map_err(fail)?, None)
    };
    Ok(Current { file, sha256: Some(sha256), content })
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

pub(crate) fn lookup_user(name: &str) -> Result<u32, KindError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(KindError::NoUser { name: name.to_owned() }),
        Err(source) => Err(KindError::UserLookup { name: name.to_owned(), source }),
    }
}

pub(crate) fn lookup_group(name: &str) -> Result<u32, KindError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(KindError::NoGroup { name: name.to_owned() }),
        Err(source) => Err(KindError::GroupLookup { name: name.to_owned(), source }),
    }
}

impl FilePlan {
    fn content_differs(&self) -> bool {
        self.current.as_ref().is_none_or(|c| c.sha256 != Some(self.desired))
    }

    fn mode_differs(&self) -> Option<(u32, u32)> {
        let (current, desired) = (self.current.as_ref()?.stat().mode, self.mode?);
        (current != desired).then_some((current, desired))
    }

    fn owner_differs(&self) -> bool {
        self.current.as_ref().is_some_and(|c| {
            let stat = c.stat();
            self.owner.is_some_and(|u| u != stat.uid) || self.group.is_some_and(|g| g != stat.gid)
        })
    }

    /// The content it replaces, kept in the backup directory: read through
    /// the planned descriptor, when there is one and it is small enough.
    fn back_up(&self) -> Result<Option<PathBuf>, KindError> {
        let (Some(dir), Some(current)) = (&self.backup_dir, &self.current) else { return Ok(None) };
        if current.sha256.is_none() || current.stat().size > self.backup_max_bytes {
            return Ok(None);
        }
        let mut reader = current.file.file();
        reader.seek(SeekFrom::Start(0)).map_err(|source| KindError::Read { path: self.path.clone(), source })?;
        Ok(Some(crate::backup::save(dir, &self.path, &mut reader, self.backups_kept)?))
    }

    fn write_atomically(&self) -> Result<(), KindError> {
        let opened;
        let dir = match &self.dir {
            Some(dir) => dir,
            None => {
                let parent = self.path.parent().ok_or_else(|| KindError::NoParent { path: self.path.clone() })?;
                opened = if self.makedirs { Dir::create_all(parent, self.dir_mode) } else { Dir::open(parent) }?;
                &opened
            }
        };
        let stat = self.current.as_ref().map(Current::stat);
        let perms = Perms {
            mode: self.mode.or(stat.map(|s| s.mode)).unwrap_or(DEFAULT_MODE),
            uid: self.owner.or(stat.map(|s| s.uid)),
            gid: self.group.or(stat.map(|s| s.gid)),
        };
        Ok(dir.write_atomic(&self.name, &mut self.contents.as_slice(), perms)?)
    }

    /// Mode and owner fixed in place: on a descriptor opened `O_NOFOLLOW`
    /// now, and only if it is still the file that was planned.
    fn fix_in_place(&self) -> Result<(), KindError> {
        let (Some(dir), Some(current)) = (&self.dir, &self.current) else { return Ok(()) };
        let changed = || KindError::from(FsError::Changed { path: self.path.clone() });
        let file = dir.open_file(&self.name)?.ok_or_else(changed)?;
        if !file.stat().same_file(&current.stat()) {
            return Err(changed());
        }
        if let Some((_, mode)) = self.mode_differs() {
            file.set_mode(mode)?;
        }
        if self.owner_differs() {
            file.set_owner(self.owner, self.group)?;
        }
        Ok(())
    }
}

impl Plan for FilePlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        match &self.current {
            None => changes.push(format!("created {} ({} bytes)", self.path.display(), self.contents.len())),
            Some(Current { sha256: None, file, .. }) => changes.push(format!(
                "content of {}: a file with {} names (hard links), replaced by a file of its own",
                self.path.display(),
                file.stat().nlink
            )),
            Some(Current { sha256: Some(current), .. }) if *current != self.desired => changes.push(format!(
                "content of {}: sha256 {:.12} -> {:.12}",
                self.path.display(),
                current.to_hex(),
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
            Some(Current { sha256: None, .. }) => {
                return Some(format!("{}: hard-linked, content not read\n", self.path.display()));
            }
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

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let mut changes = self.changes();
        if self.content_differs() {
            if let Some(backup) = self.back_up()? {
                changes.push(format!("previous content kept in {}", backup.display()));
            }
            self.write_atomically()?;
            // The replaced file is held open by the plan: its last close
            // frees its inode, which need not delay the result (tidy.rs).
            halite_fs::tidy::later(move || drop(self));
            return Ok(changes);
        }
        self.fix_in_place()?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

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
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    const SECRET: &str = "root-only secret\n";

    /// A "root-only" file (mode 0600) outside the managed directory, and
    /// the managed directory, which the "user" controls.
    fn attack_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("shadow");
        fs::write(&secret, SECRET).unwrap();
        crate::test_support::chmod(&secret, 0o600);
        fs::create_dir(dir.path().join("user")).unwrap();
        let path = dir.path().join("user/conf");
        (dir, secret, path)
    }

    fn assert_untouched(secret: &Path, backups: &Path, diff: Option<&str>) {
        assert_eq!(fs::read_to_string(secret).unwrap(), SECRET, "the root-only file's content changed");
        assert_eq!(mode_of(secret), 0o600, "the root-only file's mode changed");
        assert!(!diff.unwrap_or_default().contains("root-only"), "the root-only content is in the diff: {diff:?}");
        for backup in fs::read_dir(backups).into_iter().flatten() {
            let backup = backup.unwrap().path();
            assert!(!fs::read_to_string(&backup).unwrap().contains("root-only"), "{} holds it", backup.display());
        }
    }

    /// Swaps `path` for a link to `target`, atomically (as an attacker would).
    fn swap_for_link(path: &Path, target: &Path) {
        let temp = path.with_extension("swap");
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(target, &temp).unwrap();
        fs::rename(&temp, path).unwrap();
    }

    #[test]
    fn a_link_at_the_path_is_refused_and_nothing_is_read_or_changed_through_it() {
        let (dir, secret, path) = attack_setup();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let env = ApplyEnv { backup_dir: Some(dir.path().join("backup")), ..ApplyEnv::default() };
        for contents in [SECRET, "desired\n"] {
            let result = apply_call(&call(&path, contents, Some(0o644)), false, &env);
            let Outcome::Failed { error } = &result.outcome else { panic!("{result:?}") };
            assert!(error.contains("symbolic link"), "{error}");
            assert_untouched(&secret, &dir.path().join("backup"), result.diff.as_deref());
        }
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    /// The race of the report: planned on the user's file, which is then
    /// swapped for a link before the apply. Both apply paths: mode only
    /// (fixed in place) and content (replaced, with a backup).
    #[test]
    fn a_file_swapped_for_a_link_after_planning_changes_nothing_through_it() {
        for drifted in ["desired\n", "drift\n"] {
            let (dir, secret, path) = attack_setup();
            let backups = dir.path().join("backup");
            fs::write(&path, drifted).unwrap();
            crate::test_support::chmod(&path, 0o600);
            let env = ApplyEnv { backup_dir: Some(backups.clone()), ..ApplyEnv::default() };
            let plan = plan(&call(&path, "desired\n", Some(0o644)).args, &env).unwrap();
            assert!(!plan.changes().is_empty());
            swap_for_link(&path, &secret);
            let diff = plan.diff();
            let outcome = plan.apply();
            assert_untouched(&secret, &backups, diff.as_deref());
            match drifted {
                // In place: the name no longer leads to the planned file.
                "desired\n" => assert!(outcome.unwrap_err().to_string().contains("symbolic link"), "{drifted}"),
                // Replaced: the link itself is replaced, its target untouched.
                _ => {
                    outcome.unwrap();
                    assert_eq!(fs::read(&path).unwrap(), b"desired\n");
                    assert!(fs::symlink_metadata(&path).unwrap().is_file());
                }
            }
        }
    }

    /// A racing thread swaps the file for a link to the root-only file and
    /// back, as fast as it can, while the state is applied again and
    /// again: whatever the interleaving, the root-only file is never read
    /// into a diff or backup, and never changes.
    #[test]
    fn a_racing_link_swap_never_reaches_the_root_only_file() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (dir, secret, path) = attack_setup();
        let backups = dir.path().join("backup");
        let env = ApplyEnv { backup_dir: Some(backups.clone()), backups_kept: 1000, ..ApplyEnv::default() };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let racer = {
            let (stop, path, secret) = (stop.clone(), path.clone(), secret.clone());
            std::thread::spawn(move || {
                let plain = path.with_extension("plain");
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    // Alternately drift the content or only the mode.
                    fs::write(&plain, if round.is_multiple_of(2) { "drift\n" } else { "desired\n" }).unwrap();
                    crate::test_support::chmod(&plain, 0o600);
                    fs::rename(&plain, &path).unwrap();
                    swap_for_link(&path, &secret);
                }
                round
            })
        };
        for _ in 0..500 {
            let result = apply_call(&call(&path, "desired\n", Some(0o644)), false, &env);
            assert_untouched(&secret, &backups, result.diff.as_deref());
        }
        stop.store(true, Ordering::Relaxed);
        assert!(racer.join().unwrap() > 0);
        assert_untouched(&secret, &backups, None);
    }

    #[test]
    fn a_hard_linked_file_is_replaced_not_read() {
        let (dir, secret, path) = attack_setup();
        fs::hard_link(&secret, &path).unwrap();
        let env = ApplyEnv { backup_dir: Some(dir.path().join("backup")), ..ApplyEnv::default() };
        let result = apply_call(&call(&path, "desired\n", Some(0o644)), false, &env);
        assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
        assert_untouched(&secret, &dir.path().join("backup"), result.diff.as_deref());
        assert_eq!(fs::read(&path).unwrap(), b"desired\n");
        assert_eq!(mode_of(&path), 0o644);
    }

    #[test]
    fn large_files_are_backed_up_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let backups = dir.path().join("backup");
        let big = vec![b'x'; DIFF_LIMIT as usize * 2];
        fs::write(&path, &big).unwrap();
        let env = ApplyEnv { backup_dir: Some(backups.clone()), ..ApplyEnv::default() };
        let result = apply_call(&call(&path, "small\n", None), false, &env);
        assert!(result.diff.unwrap().contains("not diffed"));
        let kept = crate::backup::backups_of(&backups, &path);
        assert_eq!(kept.len(), 1);
        assert_eq!(fs::read(&kept[0]).unwrap(), big, "the backup holds the whole large file");
        assert_eq!(mode_of(&kept[0]), 0o600, "backups are private");
        // Over the configured limit: replaced without a backup.
        fs::write(&path, &big).unwrap();
        let env = ApplyEnv { backup_max_bytes: DIFF_LIMIT, ..env };
        assert!(matches!(apply_call(&call(&path, "small\n", None), false, &env).outcome, Outcome::Changed { .. }));
        assert_eq!(crate::backup::backups_of(&backups, &path).len(), 1);
    }

    /// Names of this process's open files that were deleted or replaced.
    fn open_replaced(path: &Path) -> usize {
        let shown = format!("{} (deleted)", path.display());
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.as_os_str() == shown.as_str())
            .count()
    }

    #[test]
    fn a_thread_holding_its_tidying_closes_the_replaced_file_and_prunes_after_it_answers() {
        std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let (path, backups) = (dir.path().join("conf"), dir.path().join("backup"));
            let env = ApplyEnv { backup_dir: Some(backups.clone()), backups_kept: 1, ..ApplyEnv::default() };
            halite_fs::tidy::hold();
            for drift in ["drift 1\n", "drift 2\n"] {
                fs::write(&path, drift).unwrap();
                assert!(matches!(
                    apply_call(&call(&path, "desired\n", None), false, &env).outcome,
                    Outcome::Changed { .. }
                ));
            }
            assert_eq!(fs::read(&path).unwrap(), b"desired\n", "the restore itself is not held");
            assert_eq!(open_replaced(&path), 2, "both replaced files are still open");
            assert_eq!(crate::backup::backups_of(&backups, &path).len(), 2, "nothing pruned yet");
            assert!(halite_fs::tidy::finish() > 0);
            assert_eq!(open_replaced(&path), 0);
            let kept = crate::backup::backups_of(&backups, &path);
            assert_eq!(kept.len(), 1);
            assert_eq!(fs::read(&kept[0]).unwrap(), b"drift 2\n");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_restore_removes_the_temp_files_of_interrupted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        let stale = dir.path().join(".halite-00112233445566ff.conf");
        fs::write(&stale, "half a restore").unwrap();
        fs::write(dir.path().join("other"), "x").unwrap();
        apply_call(&call(&path, "desired\n", None), false, &ApplyEnv::default());
        assert!(!stale.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
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
        crate::test_support::chmod(&path, 0o600);
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
        crate::test_support::chmod(&path, 0o666);
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
    fn source_lists_take_the_first_that_exists_and_source_hash_is_checked() {
        use crate::kind_tests::{load, resolved_in};
        let files = [("files/b", "B\n"), ("files/SHA256SUMS", "x  other\n1a  b\n")];
        let sha = Sha256::of(b"B\n").to_hex();
        for hash in [format!("sha256={sha}"), sha.clone()] {
            let call = resolved_in(
                KIND.name,
                &format!("source: [salt://files/a, salt://files/b]\nsource_hash: {hash}"),
                &files,
            );
            assert_eq!(args::bytes(&call.args, "contents").unwrap(), b"B\n");
        }
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir_all(tree.path().join("files")).unwrap();
        fs::write(tree.path().join("files/b"), "B\n").unwrap();
        fs::write(tree.path().join("files/SHA256SUMS"), format!("{sha}  b\n")).unwrap();
        fs::write(
            tree.path().join("s.yaml"),
            "x:\n  file.managed:\n    name: /x\n    source: files/b\n    source_hash: salt://files/SHA256SUMS\n",
        )
        .unwrap();
        assert!(crate::StateTree::load(tree.path()).1.is_empty());
        let diagnostics = load(&format!(
            "x:\n  file.managed:\n    name: /x\n    contents: a\n    source_hash: sha256={sha}\ny:\n  file.managed:\n    name: /y\n    source: https://example.com/f\n"
        ));
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].0 == 5 && lines[0].1.contains("without `source`"), "{lines:#?}");
        assert!(lines[1].0 == 9 && lines[1].1.contains("URL"), "{lines:#?}");
        // A wrong hash is an error at source_hash.
        fs::write(tree.path().join("s.yaml"), "x:\n  file.managed:\n    name: /x\n    source: files/b\n    source_hash: md5=00\ny:\n  file.managed:\n    name: /y\n    source: files/b\n    source_hash: sha256=0000000000000000000000000000000000000000000000000000000000000000\n").unwrap();
        let diagnostics = crate::StateTree::load(tree.path()).1;
        assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
        assert!(diagnostics[0].line == 5 && diagnostics[0].message.contains("md5"), "{diagnostics:#?}");
        assert!(diagnostics[1].line == 10 && diagnostics[1].message.contains("source_hash says"), "{diagnostics:#?}");
    }

    /// A URL source needs its hash (or `skip_verify`), in a form halite
    /// reads; what resolves is a fetch request for the master, with the
    /// content left empty (or a tree file after the URLs as fallback).
    #[test]
    fn url_sources_need_a_hash_and_resolve_to_a_fetch_request() {
        use crate::fetch::{Verify, requests};
        use crate::kind_tests::{load, resolved_in};
        let sha = "ab".repeat(32);
        let diagnostics = load(&format!(
            "a:\n  file.managed:\n    name: /a\n    source: http://127.0.0.1/a\nb:\n  file.managed:\n    name: /b\n    source: https://127.0.0.1/b\n    source_hash: md5=d41d8cd98f00b204e9800998ecf8427e\nc:\n  file.managed:\n    name: /c\n    source: https://127.0.0.1/c\n    source_hash: sha256=abc\nd:\n  file.managed:\n    name: /d\n    source: ftp://127.0.0.1/d\ne:\n  file.managed:\n    name: /e\n    source: http://127.0.0.1/e\n    source_hash: {sha}\n    template: jinja\n"
        ));
        let found: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].0 == 4 && found[0].1.contains("has no `source_hash`"), "{found:#?}");
        assert!(found[1].0 == 9 && found[1].1.contains("`md5` is not supported"), "{found:#?}");
        assert!(found[2].0 == 14 && found[2].1.contains("not a sha256 (64 hex digits)"), "{found:#?}");
        assert!(found[3].0 == 18 && found[3].1.contains("does not fetch"), "{found:#?}");
        assert!(found[4].0 == 24 && found[4].1.contains("template"), "{found:#?}");

        let call = resolved_in(KIND.name, &format!("source: http://127.0.0.1/a\nsource_hash: sha256={sha}"), &[]);
        let wanted = requests(&call.args);
        assert_eq!(wanted.len(), 1);
        assert_eq!(
            (wanted[0].urls.as_slice(), &wanted[0].verify),
            (&["http://127.0.0.1/a".to_owned()][..], &Verify::Sha256(sha.clone()))
        );
        assert!(!wanted[0].fallback);
        assert_eq!(args::bytes(&call.args, "contents").unwrap(), b"");
        let call = resolved_in(KIND.name, "source: http://127.0.0.1/a\nskip_verify: True", &[]);
        assert_eq!(requests(&call.args)[0].verify, Verify::Skip);
        // A source list: the URLs before the first tree file that exists,
        // that file as the fallback (checked against the hash here).
        let fallback = Sha256::of(b"B\n").to_hex();
        let call = resolved_in(
            KIND.name,
            &format!(
                "source: [http://127.0.0.1/a, salt://files/missing, https://127.0.0.1/b, salt://files/b, http://127.0.0.1/c]\nsource_hash: {fallback}"
            ),
            &[("files/b", "B\n")],
        );
        let wanted = requests(&call.args);
        assert_eq!(wanted[0].urls, ["http://127.0.0.1/a", "https://127.0.0.1/b"]);
        assert!(wanted[0].fallback);
        assert_eq!(args::bytes(&call.args, "contents").unwrap(), b"B\n");
        // Unfetched, the agent refuses it and says why.
        let error = apply_call(&call_for(&call), true, &ApplyEnv::default());
        let Outcome::Failed { error } = error.outcome else { panic!("{error:?}") };
        assert!(error.contains("was not fetched") && error.contains("http://127.0.0.1/a"), "{error}");
    }

    fn call_for(call: &StateCall) -> StateCall {
        let dir = std::env::temp_dir().join("halite-never-written");
        crate::kind_tests::at_path(call, &dir.join("f"))
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
