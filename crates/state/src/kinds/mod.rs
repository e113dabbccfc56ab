//! The registry of state kinds.
//!
//! A kind is one file in this folder plus one line in [`KINDS`]. It declares
//! its name, a summary and an example, resolves authored arguments on the
//! master ([`Kind::resolve`]) and plans on the agent ([`Kind::plan`]).
//! Planning has no side effects; applying executes the plan. Test mode stops
//! after planning.
//!
//! A kind that keeps a file's content (`file.managed`) also declares a
//! [`FileLike`]: its typed view of its resolved arguments. Offline healing
//! (agent), `watch: true` (master) and template rendering (tree) use only
//! that view, so a new file-like kind is its own file plus its line in
//! [`KINDS`], nothing elsewhere (`example_file`, under the `example-kinds`
//! feature, proves it in the agent's and master's tests).

use std::path::{Path, PathBuf};

use halite_proto::Value;

use crate::diag::Location;
use crate::env::{ApplyEnv, ManagedFile};
use crate::yaml::Fields;

pub mod archive_extracted;
pub mod cmd_run;
pub mod cmd_script;
pub mod cmd_wait;
pub mod cron_absent;
pub mod cron_present;
#[cfg(any(test, feature = "example-kinds"))]
pub mod example_file;
pub mod file_absent;
pub mod file_append;
pub mod file_blockreplace;
pub mod file_copy;
pub mod file_directory;
pub mod file_exists;
pub mod file_line;
pub mod file_managed;
pub mod file_missing;
pub mod file_prepend;
pub mod file_recurse;
pub mod file_replace;
pub mod file_symlink;
pub mod git_latest;
pub mod group_absent;
pub mod group_present;
pub mod host_absent;
pub mod host_present;
pub mod mount_mounted;
pub mod pkg_installed;
pub mod pkg_latest;
pub mod pkg_purged;
pub mod pkg_removed;
pub mod pkgrepo_managed;
pub mod service_dead;
pub mod service_disabled;
pub mod service_enabled;
pub mod service_running;
pub mod sysctl_present;
pub mod timezone_system;
pub mod user_absent;
pub mod user_present;

/// Every state kind halite knows. Keep sorted by name.
pub static KINDS: &[&Kind] = &[
    &archive_extracted::KIND,
    &cmd_run::KIND,
    &cmd_script::KIND,
    &cmd_wait::KIND,
    &cron_absent::KIND,
    &cron_present::KIND,
    // Proves a file-like kind is its file plus this line (tests only; the
    // `example-kinds` feature links it into test builds of the binaries).
    #[cfg(any(test, feature = "example-kinds"))]
    &example_file::KIND,
    &file_absent::KIND,
    &file_append::KIND,
    &file_blockreplace::KIND,
    &file_copy::KIND,
    &file_directory::KIND,
    &file_exists::KIND,
    &file_line::KIND,
    &file_managed::KIND,
    &file_missing::KIND,
    &file_prepend::KIND,
    &file_recurse::KIND,
    &file_replace::KIND,
    &file_symlink::KIND,
    &git_latest::KIND,
    &group_absent::KIND,
    &group_present::KIND,
    &host_absent::KIND,
    &host_present::KIND,
    &mount_mounted::KIND,
    &pkg_installed::KIND,
    &pkg_latest::KIND,
    &pkg_purged::KIND,
    &pkg_removed::KIND,
    &pkgrepo_managed::KIND,
    &service_dead::KIND,
    &service_disabled::KIND,
    &service_enabled::KIND,
    &service_running::KIND,
    &sysctl_present::KIND,
    &timezone_system::KIND,
    &user_absent::KIND,
    &user_present::KIND,
];

pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().copied().find(|kind| kind.name == name)
}

/// The kinds offered to authors (in `check`'s help): every registered kind
/// but the `example.*` ones, which exist only to prove the registry in
/// tests (a test build may link them into the binaries through the
/// `example-kinds` feature; they are never named to a user).
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|kind| kind.name).filter(|name| !name.starts_with("example.")).collect()
}

/// The contents a template renders in a call of `kind` (`template:
/// jinja`): a file-like kind's one content (named ""), or each text file
/// of a `file.recurse` (named by its path in the source).
pub fn template_contents<'a>(kind: &str, args: &'a mut Value) -> Vec<(String, &'a mut Vec<u8>)> {
    if kind == file_recurse::KIND.name {
        return file_recurse::templates_mut(args);
    }
    file_like(kind).and_then(|file| (file.contents_mut)(args)).map(|c| (String::new(), c)).into_iter().collect()
}

/// The file-like interface of the kind named `kind`, if it is one.
pub fn file_like(kind: &str) -> Option<&'static FileLike> {
    find(kind).and_then(|kind| kind.file)
}

/// The typed interface of a kind that keeps one file's content in shape:
/// what the rest of halite needs of its resolved arguments, so nothing
/// outside the kind's file reads them by key.
#[derive(Debug)]
pub struct FileLike {
    /// The managed file in resolved arguments; `None` when they are not
    /// the kind's.
    pub view: fn(&Value) -> Option<FileView<'_>>,
    /// The desired content in resolved arguments: rendered per agent when
    /// it is a template (the master), set aside and put back (the agent's
    /// offline store keeps content once per digest).
    pub contents_mut: fn(&mut Value) -> Option<&mut Vec<u8>>,
    /// The authored key that holds the content: a template itself when
    /// `template: jinja`, so the tree does not check it for stray Jinja.
    pub contents_key: &'static str,
}

/// A file-like state's file, read from its resolved arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileView<'a> {
    /// As resolved (authored), not rooted under the agent's root.
    pub path: &'a str,
    pub contents: &'a [u8],
    pub mode: Option<u32>,
}

/// Plans a call's resolved arguments in an agent's environment.
pub type PlanFn = fn(&Value, &ApplyEnv) -> Result<Box<dyn Plan>, KindError>;

/// Why a state could not be planned or applied on the agent: the error of
/// the kind interface ([`PlanFn`], [`Plan::apply`]), shared by every kind
/// file so the job runner handles one type. Each variant names its subject
/// (the file, the command, the user or group, the argument). It reaches the
/// master as the text of `Outcome::Failed`: the wire carries a string.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// Resolved arguments not in the shape the kind resolves them to.
    #[error("argument `{key}` missing or not {expected}")]
    Argument { key: &'static str, expected: &'static str },
    /// A file operation (the error names the path).
    #[error(transparent)]
    Fs(#[from] halite_fs::FsError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is a directory")]
    IsDirectory { path: PathBuf },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} exists and is not a link{}",
        if *is_dir { " (a directory is never replaced)" } else { " (set `force: true` to replace it)" }
    )]
    NotALink { path: PathBuf, is_dir: bool },
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error("the parent of {path} does not exist (set `makedirs: true`)")]
    ParentMissing { path: PathBuf },
    #[error("{path}: the template was not rendered (the master renders it for each agent)")]
    NotRendered { path: PathBuf },
    #[error("no user `{name}` on this host")]
    NoUser { name: String },
    #[error("cannot look up user `{name}`: {source}")]
    UserLookup { name: String, source: nix::errno::Errno },
    #[error("no group `{name}` on this host")]
    NoGroup { name: String },
    #[error("cannot look up group `{name}`: {source}")]
    GroupLookup { name: String, source: nix::errno::Errno },
    /// A source given by URL that the master could not fetch, that does
    /// not match its hash or fingerprint, or that nobody fetched (names
    /// the URL).
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// The backup of the content a write replaces (names the backup).
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A program (or its probe) that could not be run (names the command).
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
    /// A program that ran and failed: how it ended and its stderr's tail.
    #[error("{}", output.failure(command))]
    Failed { command: String, output: crate::command::Output },
    /// `halite-master cmd`'s captured run that did not succeed: its exit
    /// code and output, line by line, shown as they are.
    #[error("{lines}")]
    CapturedFailure { lines: String },
    #[error("{path} is not UTF-8 text; halite edits only text in place")]
    NotText { path: PathBuf },
    /// An in-place edit ([`crate::edit`]) that cannot be made to the
    /// file's text.
    #[error("{path}: {source}")]
    Text { path: PathBuf, source: crate::text::TextError },
    #[error("{path} does not exist{help}")]
    Missing { path: PathBuf, help: &'static str },
    #[error("{path} exists ({help})")]
    Exists { path: PathBuf, help: &'static str },
    /// A file taken from the state tree (names it as authored).
    #[error(transparent)]
    Tree(#[from] crate::paths::TreePathError),
    #[error("source {path} is not a directory")]
    SourceNotADirectory { path: PathBuf },
    #[error("{path} leads out of the source directory (a symbolic link?)")]
    OutsideSource { path: PathBuf },
    #[error("more than {limit} bytes under the source {path}; copy it another way")]
    SourceTooLarge { path: PathBuf, limit: u64 },
    #[error("{path} changed while being applied")]
    ChangedWhileApplied { path: PathBuf },
    #[error("cannot make a private directory for {subject}: {source}")]
    ScratchDir { subject: String, source: std::io::Error },
    #[error(
        "{archive} does not hold one top-level directory (it has {tops}); set `enforce_toplevel: false` to extract it as it is"
    )]
    NoTopLevel { archive: String, tops: String },
    #[error("user `{name}` has {attribute} {now}, not {wanted} (set `allow_{attribute}_change: true` to change it)")]
    UserIdChange { name: String, attribute: &'static str, now: String, wanted: String },
    #[error("{unit} is not active {seconds:.1} s after it was started (init_delay)")]
    NotActiveAfterDelay { unit: String, seconds: f64 },
    #[error("apt knows no version of `{package}` (is its repository configured?)")]
    NoCandidate { package: String },
    #[error("{repository} has no revision `{rev}`")]
    NoRevision { repository: String, rev: String },
    #[error("{path} exists and is not a git checkout; halite does not clone over it")]
    NotACheckout { path: PathBuf },
    #[error("{path} {why} (set `force_reset: true` to discard them)")]
    LocalChanges { path: PathBuf, why: &'static str },
    #[error("{mounted} is mounted at {point}, not {device}; halite does not unmount it")]
    MountedElsewhere { point: String, mounted: String, device: String },
    #[error("no kernel parameter `{name}` ({path} does not exist)")]
    NoKernelParameter { name: String, path: PathBuf },
    #[error("no time zone `{name}` ({path} does not exist)")]
    NoTimeZone { name: String, path: PathBuf },
}

#[derive(Debug)]
pub struct Kind {
    /// As written in state files, e.g. `file.managed`.
    pub name: &'static str,
    pub summary: &'static str,
    /// A complete state file using this kind; the registry test loads it.
    pub example: &'static str,
    /// Master side: check the authored arguments and turn them into the
    /// self-contained arguments the agent applies.
    pub resolve: fn(&Authored<'_>) -> Result<Value, Vec<Problem>>,
    /// Agent side: what applying would change. No side effects beyond
    /// read-only probes (`unless`/`onlyif`, `dpkg-query`, `systemctl
    /// is-active`): test mode runs this and nothing else.
    pub plan: PlanFn,
    /// For a kind that keeps a file's content: its typed view (offline
    /// healing, `watch: true`, templates). `None` for every other kind.
    pub file: Option<&'static FileLike>,
}

/// A state as the operator wrote it.
#[derive(Debug)]
pub struct Authored<'a> {
    /// The state's id, e.g. `nginx-conf` (Salt: the `name` default).
    pub id: &'a str,
    pub fields: &'a Fields,
    /// The state tree's root; sources are resolved inside it.
    pub tree_root: &'a Path,
}

/// What is wrong with an authored state; the tree loader adds the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Option<Location>,
    pub message: String,
    pub help: Option<String>,
    /// When the problem is in another file than the state file (a
    /// template's syntax error is in the template).
    pub file: Option<std::path::PathBuf>,
}

impl Problem {
    pub fn new(at: Option<Location>, message: impl Into<String>) -> Self {
        Problem { at, message: message.into(), help: None, file: None }
    }

    #[must_use]
    pub fn in_file(mut self, file: impl Into<std::path::PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl Authored<'_> {
    /// The arguments as the kind's typed configuration; an unknown or
    /// ill-typed key is a problem at that key.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<T, Vec<Problem>> {
        self.fields.decode().map_err(|(at, message)| vec![Problem::new(at, format!("{kind} `{}`: {message}", self.id))])
    }

    pub fn at(&self, key: &str) -> Option<Location> {
        self.fields.key_location(key)
    }
}

/// One string or a list of them, as Salt allows for `pkgs`, `unless`, ….
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// The file a file kind manages: `path` (Salt: `name`), defaulting to the
/// state id; must be absolute.
pub(crate) fn absolute_path(state: &Authored<'_>, kind: &str, path: Option<String>) -> Result<String, Problem> {
    let path = path.unwrap_or_else(|| state.id.to_owned());
    if Path::new(&path).is_absolute() {
        Ok(path)
    } else {
        Err(Problem::new(
            state.at("path").or(state.at("name")),
            format!("{kind} `{}`: path `{path}` is not absolute", state.id),
        )
        .help("give the full path on the agent, e.g. /etc/motd"))
    }
}

pub(crate) fn string_list(items: Vec<String>) -> Value {
    Value::List(items.into_iter().map(Value::String).collect())
}

/// The changes one state would make, ready to be applied.
pub trait Plan: Send {
    /// One line per change; empty when the state is already as desired.
    fn changes(&self) -> Vec<String>;
    /// The file this state keeps in shape, so the agent can tell drift from
    /// its own writes.
    fn managed_file(&self) -> Option<ManagedFile> {
        None
    }
    /// A unified diff of the file content that would change, or a line
    /// saying binary content differs.
    fn diff(&self) -> Option<String> {
        None
    }
    /// A state this one watches changed: plan the kind's watch reaction
    /// (a service restarts, a command runs). False when the kind has none,
    /// and `watch` then acts like `require`.
    fn watch_triggered(&mut self) -> bool {
        false
    }
    /// Makes the changes; returns what was done (usually [`Plan::changes`]).
    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError>;
}

/// Typed access to resolved arguments, for the agent-side `plan`s.
pub(crate) mod args {
    use halite_proto::Value;

    use super::KindError;

    pub fn string<'a>(args: &'a Value, key: &'static str) -> Result<&'a str, KindError> {
        args.get(key).and_then(Value::as_str).ok_or(KindError::Argument { key, expected: "a string" })
    }

    pub fn opt_string<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
        args.get(key).and_then(Value::as_str)
    }

    pub fn bytes<'a>(args: &'a Value, key: &'static str) -> Result<&'a [u8], KindError> {
        match args.get(key) {
            Some(Value::Bytes(b)) => Ok(b),
            _ => Err(KindError::Argument { key, expected: "bytes" }),
        }
    }

    pub fn opt_u64(args: &Value, key: &str) -> Option<u64> {
        match args.get(key) {
            Some(Value::Int(i)) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    pub fn strings(args: &Value, key: &str) -> Vec<String> {
        match args.get(key) {
            Some(Value::List(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        }
    }

    pub fn bytes_mut<'a>(args: &'a mut Value, key: &str) -> Option<&'a mut Vec<u8>> {
        match args {
            Value::Map(map) => match map.get_mut(key) {
                Some(Value::Bytes(bytes)) => Some(bytes),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn opt_u32(args: &Value, key: &str) -> Option<u32> {
        match args.get(key) {
            Some(Value::Int(i)) => u32::try_from(*i).ok(),
            _ => None,
        }
    }

    pub fn bool_or(args: &Value, key: &str, default: bool) -> bool {
        match args.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sorted() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "kind names must be unique and KINDS sorted");
    }

    /// A kind file that is not in KINDS is dead code nobody can use.
    #[test]
    fn every_kind_file_is_registered() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kinds");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".rs") else { continue };
            if stem == "mod" {
                continue;
            }
            let kind = stem.replacen('_', ".", 1);
            assert!(find(&kind).is_some(), "src/kinds/{name} is not registered as `{kind}` in KINDS");
        }
    }

    #[test]
    fn every_example_loads_cleanly() {
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("example.yaml"), kind.example).unwrap();
            // The files examples may take from the tree (file.recurse, cmd.script, pkgrepo.managed,
            // archive.extracted).
            std::fs::create_dir_all(dir.path().join("files/www")).unwrap();
            std::fs::write(dir.path().join("files/www/index.html"), "<h1>example</h1>\n").unwrap();
            std::fs::write(dir.path().join("files/setup.sh"), "#!/bin/sh\n").unwrap();
            std::fs::write(dir.path().join("files/example.asc"), "a key\n").unwrap();
            std::fs::write(dir.path().join("files/app.tar.gz"), "an archive").unwrap();
            let (tree, diagnostics) = crate::StateTree::load(dir.path());
            assert!(diagnostics.is_empty(), "{}: {diagnostics:?}", kind.name);
            assert!(!tree.files["example"].states.is_empty(), "{} example declares no state", kind.name);
        }
    }
}
