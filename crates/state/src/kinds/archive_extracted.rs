//! `archive.extracted`: an archive of the state tree extracted into a
//! directory on the agent (Salt's `archive.extracted`: `name` the
//! directory, `source` (a tar or zip file of the tree), `source_hash`,
//! `archive_format`, `if_missing`, `enforce_toplevel` (default true: the
//! archive must hold one top-level directory), `overwrite`).
//!
//! The master reads the archive when the tree loads (at most
//! [`MAX_BYTES`]) and checks `source_hash`; an `http(s)://` source is
//! fetched by the master before each job instead ([`crate::fetch`]: its
//! `source_hash` required unless `skip_verify`, checked again here). Planning lists its members
//! (`tar -t` on the archive given on standard input, `unzip -Z1` on a
//! private copy) and is done when `if_missing` exists, or, without it,
//! when every member is there already; applying extracts it with `tar -x
//! -C` (GNU tar: no absolute paths or `..`, a link in the way replaced)
//! or `unzip -o -d`. `name` is under the agent's root.

use std::path::{Path, PathBuf};

use halite_proto::Value;
use serde::Deserialize;

use super::file_managed::{check_hash, read_source};
use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "archive.extracted",
    summary: "A tar or zip archive of the state tree extracted into a directory (done when its files are there, or `if_missing` exists).",
    example: "app-release:\n  archive.extracted:\n    name: /opt/app\n    source: salt://files/app.tar.gz\n    if_missing: /opt/app/app-1.0\n    enforce_toplevel: false\n",
    resolve,
    plan,
    file: None,
};

/// The largest archive carried to an agent.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The directory to extract into; defaults to the state id.
    name: Option<String>,
    source: Option<String>,
    source_hash: Option<String>,
    /// Salt's: take a URL's body without a `source_hash`.
    #[serde(default)]
    skip_verify: bool,
    archive_format: Option<String>,
    if_missing: Option<String>,
    #[serde(default = "yes")]
    enforce_toplevel: bool,
    #[serde(default)]
    overwrite: bool,
}

fn yes() -> bool {
    true
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem = |key: &str, message: String| {
        Problem::new(state.at(key), format!("archive.extracted `{}`: {message}", state.id))
    };
    let path = config.name.unwrap_or_else(|| state.id.to_owned());
    if !path.starts_with('/') {
        problems.push(
            problem("name", format!("`{path}` is not an absolute path"))
                .help("the directory to extract into, e.g. /opt/app"),
        );
    }
    let source = config.source.unwrap_or_default();
    let format = match config.archive_format.as_deref() {
        Some(f @ ("tar" | "zip")) => f.to_owned(),
        Some(other) => {
            problems.push(problem("archive_format", format!("`{other}` is neither tar nor zip")));
            String::new()
        }
        None if source.ends_with(".zip") => "zip".into(),
        None => "tar".into(),
    };
    let mut fetch = None;
    if crate::fetch::is_other_scheme(&source) {
        problems.push(
            problem("source", format!("`{source}` is a URL halite does not fetch (only http:// and https://)"))
                .help("put the archive in the tree (with its source_hash), or serve it over HTTP(S)"),
        );
    } else if crate::fetch::is_url(&source) {
        use crate::fetch::{Request, Verify};
        let verify = match (&config.source_hash, config.skip_verify) {
            (_, true) => Some(Verify::Skip),
            (None, false) => {
                problems.push(
                    problem("source", format!("`{source}` is a URL and has no `source_hash`"))
                        .help("add `source_hash: sha256=<hex>` (sha256sum of the archive), or `skip_verify: True`"),
                );
                None
            }
            (Some(hash), false) if crate::fetch::is_url(hash) => Some(Verify::HashFile(hash.clone())),
            (Some(hash), false) => match Verify::parse_hash(hash) {
                Ok(verify) => Some(verify),
                Err(error) => {
                    problems.push(problem("source_hash", error.to_string()).help("give the sha256: sha256=<hex>"));
                    None
                }
            },
        };
        if let Some(verify) = verify {
            let mut request = Request::new("archive", vec![source.clone()], verify);
            request.max_bytes = MAX_BYTES;
            fetch = Some(request);
        }
    }
    let bytes = match read_source(state.tree_root, &source) {
        _ if crate::fetch::is_url(&source) => Vec::new(),
        Ok(bytes) if bytes.len() as u64 > MAX_BYTES => {
            problems.push(problem("source", format!("`{source}` is larger than {MAX_BYTES} bytes")));
            Vec::new()
        }
        Ok(bytes) => bytes,
        Err((what, help)) if problems.is_empty() => {
            problems.push(problem("source", what).help(help));
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    if let Some(hash) = &config.source_hash
        && fetch.is_none()
        && !bytes.is_empty()
        && let Err((what, help)) = check_hash(state.tree_root, &source, hash, &bytes)
    {
        problems.push(problem("source_hash", what).help(help));
    }
    if let Some(marker) = &config.if_missing
        && !marker.starts_with('/')
    {
        problems.push(problem("if_missing", format!("`{marker}` is not an absolute path")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("path", path)
        .with("source", source)
        .with("archive", bytes)
        .with("format", format)
        .with("enforce_toplevel", config.enforce_toplevel)
        .with("overwrite", config.overwrite);
    if let Some(marker) = config.if_missing {
        resolved = resolved.with("if_missing", marker);
    }
    if let Some(request) = fetch {
        resolved = crate::fetch::with_requests(resolved, &[request]);
    }
    Ok(resolved)
}

/// Runs `argv` with `stdin`; its standard output, or the failure.
fn run(argv: Vec<String>, stdin: Option<Vec<u8>>, path: Option<&std::ffi::OsString>) -> Result<String, KindError> {
    let mut spec = Spec::new(argv);
    spec.stdin = stdin;
    let output = command::run(&spec, path)?;
    if output.success() { Ok(output.stdout) } else { Err(KindError::Failed { command: spec.display(), output }) }
}

/// Runs `make(archive path)` on a private copy of the archive (unzip
/// reads a file, not standard input).
fn with_copy<T>(archive: &[u8], make: impl FnOnce(&Path) -> Result<T, KindError>) -> Result<T, KindError> {
    let dir = tempfile::Builder::new()
        .prefix("halite-archive-")
        .tempdir()
        .map_err(|source| KindError::ScratchDir { subject: "the zip archive".into(), source })?;
    let file = dir.path().join("archive.zip");
    halite_fs::write_atomic(&file, archive, 0o600)?;
    make(&file)
}

/// tar's flag for a compressed archive, told by its first bytes: GNU tar
/// detects compression only in a file it can seek, not on standard input.
fn compression(archive: &[u8]) -> Option<&'static str> {
    match archive {
        [0x1f, 0x8b, ..] => Some("-z"),
        [b'B', b'Z', b'h', ..] => Some("-j"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Some("-J"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("--zstd"),
        _ => None,
    }
}

/// The archive's members, directories with their trailing `/`.
fn members(archive: &[u8], format: &str, env: &ApplyEnv) -> Result<Vec<String>, KindError> {
    let listed = match format {
        "zip" => with_copy(archive, |file| {
            run(vec!["unzip".into(), "-Z1".into(), file.display().to_string()], None, env.path.as_ref())
        })?,
        _ => {
            let argv = ["tar", "-t"].into_iter().chain(compression(archive)).chain(["-f", "-"]);
            run(argv.map(str::to_owned).collect(), Some(archive.to_vec()), env.path.as_ref())?
        }
    };
    Ok(listed.lines().map(|l| l.trim_start_matches("./").to_owned()).filter(|l| !l.is_empty()).collect())
}

#[derive(Debug)]
struct ExtractPlan {
    path: PathBuf,
    source: String,
    archive: Vec<u8>,
    format: String,
    /// Why it is done already, or `None`: extract.
    done: Option<String>,
    overwrite: bool,
    env_path: Option<std::ffi::OsString>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    crate::fetch::check(args)?;
    let archive = args::bytes(args, "archive")?.to_vec();
    let format = args::string(args, "format")?.to_owned();
    let members = members(&archive, &format, env)?;
    if args::bool_or(args, "enforce_toplevel", true) {
        let tops: std::collections::BTreeSet<&str> = members.iter().filter_map(|m| m.split('/').next()).collect();
        if tops.len() != 1
            || !members
                .iter()
                .all(|m| m.contains('/') || m.ends_with('/') || members.iter().any(|o| o.starts_with(&format!("{m}/"))))
        {
            return Err(KindError::NoTopLevel {
                archive: args::string(args, "source")?.to_owned(),
                tops: tops.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let done = match args::opt_string(args, "if_missing") {
        Some(marker) => {
            let marker = env.rooted(marker);
            super::file_exists::present(&marker)?.then(|| format!("{} exists", marker.display()))
        }
        None => {
            let mut all = true;
            for member in &members {
                all &= super::file_exists::present(&path.join(member.trim_end_matches('/')))?;
            }
            all.then(|| "every file of the archive is there".to_owned())
        }
    };
    Ok(Box::new(ExtractPlan {
        path,
        source: args::string(args, "source")?.to_owned(),
        archive,
        format,
        done,
        overwrite: args::bool_or(args, "overwrite", false),
        env_path: env.path.clone(),
    }))
}

impl Plan for ExtractPlan {
    fn changes(&self) -> Vec<String> {
        match self.done {
            Some(_) => Vec::new(),
            None => vec![format!("extracted {} into {}", self.source, self.path.display())],
        }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        if self.done.is_some() {
            return Ok(Vec::new());
        }
        halite_fs::Dir::create_all(&self.path, 0o755)?;
        let target = self.path.display().to_string();
        let path = self.env_path.as_ref();
        match self.format.as_str() {
            "zip" => {
                let keep = if self.overwrite { "-o" } else { "-n" };
                with_copy(&self.archive, |file| {
                    run(
                        vec![
                            "unzip".into(),
                            "-q".into(),
                            keep.into(),
                            file.display().to_string(),
                            "-d".into(),
                            target.clone(),
                        ],
                        None,
                        path,
                    )
                })?;
            }
            _ => {
                let mut argv: Vec<String> = vec!["tar".into(), "-x".into()];
                argv.extend(compression(&self.archive).map(str::to_owned));
                argv.extend(["--no-same-owner".into(), "-f".into(), "-".into(), "-C".into(), target]);
                if !self.overwrite {
                    argv.push("--skip-old-files".into());
                }
                run(argv, Some(self.archive.clone()), path)?;
            }
        }
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load};

    /// A tree holding `files/app.tar` (app-1.0/{bin/run,README}) and the
    /// same as `files/app.zip`.
    fn tree() -> tempfile::TempDir {
        let tree = tempfile::tempdir().unwrap();
        let work = tree.path().join("work/app-1.0/bin");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("run"), "#!/bin/sh\n").unwrap();
        std::fs::write(tree.path().join("work/app-1.0/README"), "app\n").unwrap();
        std::fs::create_dir_all(tree.path().join("files")).unwrap();
        let work = tree.path().join("work").display().to_string();
        let tar = tree.path().join("files/app.tar").display().to_string();
        let zip = tree.path().join("files/app.zip").display().to_string();
        run(vec!["tar".into(), "-cf".into(), tar, "-C".into(), work.clone(), "app-1.0".into()], None, None).unwrap();
        let mut spec = Spec::new(["zip", "-q", "-r", zip.as_str(), "app-1.0"]);
        spec.cwd = Some(work.into());
        assert!(command::run(&spec, None).unwrap().success());
        tree
    }

    fn state(tree: &Path, fields: &str) -> halite_proto::StateCall {
        std::fs::write(tree.join("s.yaml"), format!("t:\n  archive.extracted:\n    name: /opt/app\n{fields}")).unwrap();
        let (loaded, diagnostics) = crate::StateTree::load(tree);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        loaded.files["s"].states[0].call.clone()
    }

    #[test]
    fn extracts_tar_and_zip_then_is_unchanged() {
        let tree = tree();
        for source in ["salt://files/app.tar", "salt://files/app.zip"] {
            let root = tempfile::tempdir().unwrap();
            let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
            let call = crate::paths::rooted_call(&state(tree.path(), &format!("    source: {source}\n")), root.path());
            assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 1, "{source}");
            assert!(!root.path().join("opt/app").exists(), "test mode extracted");
            assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 1, "{source}");
            assert_eq!(std::fs::read_to_string(root.path().join("opt/app/app-1.0/README")).unwrap(), "app\n");
            assert!(changes(apply_call(&call, false, &env).outcome).is_empty(), "{source}");
        }
    }

    #[test]
    fn if_missing_decides_and_toplevel_is_enforced() {
        let tree = tree();
        let root = tempfile::tempdir().unwrap();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        std::fs::create_dir_all(root.path().join("opt/marker")).unwrap();
        let call = crate::paths::rooted_call(
            &state(tree.path(), "    source: salt://files/app.tar\n    if_missing: /opt/marker\n"),
            root.path(),
        );
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        let loose = tree.path().join("files/loose.tar").display().to_string();
        run(
            vec![
                "tar".into(),
                "-cf".into(),
                loose,
                "-C".into(),
                tree.path().join("work/app-1.0").display().to_string(),
                "README".into(),
                "bin".into(),
            ],
            None,
            None,
        )
        .unwrap();
        let call = crate::paths::rooted_call(&state(tree.path(), "    source: salt://files/loose.tar\n"), root.path());
        let halite_proto::Outcome::Failed { error } = apply_call(&call, false, &env).outcome else { panic!() };
        assert!(error.contains("one top-level directory"), "{error}");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "a:\n  archive.extracted:\n    name: opt/app\n    source: https://x/app.tar.gz\n    archive_format: rar\n",
        );
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4, 5], "{diagnostics:#?}");
        assert!(diagnostics[1].message.contains("has no `source_hash`"), "{diagnostics:#?}");
        let diagnostics = load(
            "a:\n  archive.extracted:\n    name: /opt/app\n    source: https://x/app.tar.gz\n    source_hash: sha1=00\n",
        );
        assert_eq!(diagnostics.iter().map(|d| d.line).collect::<Vec<_>>(), [5], "{diagnostics:#?}");
    }

    #[test]
    fn compressed_tars_are_told_by_their_first_bytes() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (&[0x1f, 0x8b, 8, 0], Some("-z")),
            (b"BZh91AY", Some("-j")),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0], Some("-J")),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], Some("--zstd")),
            (b"app-1.0/\0\0\0", None),
        ];
        for (archive, flag) in cases {
            assert_eq!(compression(archive), flag, "{archive:?}");
        }
    }

    #[test]
    fn a_url_source_resolves_to_a_fetch_request_into_the_archive() {
        let sha = "cd".repeat(32);
        let call = crate::kind_tests::resolved(
            KIND.name,
            &format!("name: /opt/app\nsource: https://127.0.0.1/app.tar.gz\nsource_hash: sha256={sha}"),
        );
        let wanted = crate::fetch::requests(&call.args);
        assert_eq!(wanted.len(), 1);
        assert_eq!((wanted[0].into.as_str(), wanted[0].max_bytes), ("archive", MAX_BYTES));
        assert_eq!(wanted[0].verify, crate::fetch::Verify::Sha256(sha));
        assert_eq!(args::string(&call.args, "format").unwrap(), "tar");
    }
}
