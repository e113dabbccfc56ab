//! `git.latest`: a git checkout at the newest commit of a remote's
//! revision (Salt's `git.latest`: `name` the repository URL, `target`,
//! `rev` (default `HEAD`; a branch, a tag or a commit), `remote` (default
//! `origin`), `force_reset`, `depth`), with the `git` binary through the
//! spawner.
//!
//! Planning asks read-only questions: `git ls-remote` for the commit the
//! revision names now, `git rev-parse HEAD`, `git status --porcelain` and
//! `git merge-base --is-ancestor` in the checkout. Applying clones, or
//! fetches and moves the checkout to that commit. Local changes, or local
//! commits the remote does not have, fail the state unless `force_reset:
//! true` (as in Salt): nothing is thrown away unasked. `target` is under
//! the agent's root.

use std::path::PathBuf;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "git.latest",
    summary: "A git checkout at the newest commit of a remote revision; local changes fail it unless `force_reset`.",
    example: "app-code:\n  git.latest:\n    name: https://git.example.com/app.git\n    target: /srv/app\n    rev: main\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The repository URL; defaults to the state id.
    name: Option<String>,
    target: Option<String>,
    #[serde(default = "head")]
    rev: String,
    branch: Option<String>,
    #[serde(default = "origin")]
    remote: String,
    #[serde(default)]
    force_reset: bool,
    depth: Option<u32>,
}

fn head() -> String {
    "HEAD".into()
}

fn origin() -> String {
    "origin".into()
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("git.latest `{}`: {message}", state.id));
    let url = config.name.unwrap_or_else(|| state.id.to_owned());
    if url.is_empty() || url.starts_with('-') || url.contains(char::is_whitespace) {
        problems.push(problem("name", format!("`{url}` is not a repository URL")));
    }
    let target = config.target.unwrap_or_default();
    if !target.starts_with('/') {
        problems.push(
            problem("target", format!("target `{target}` is not an absolute path"))
                .help("give the checkout's directory, e.g. /srv/app"),
        );
    }
    for (key, value) in [("rev", &config.rev), ("remote", &config.remote)] {
        if value.is_empty() || value.starts_with('-') || value.contains(char::is_whitespace) || value.contains("..") {
            problems.push(problem(key, format!("`{value}` is not a git {key}")));
        }
    }
    if config.branch.is_some() {
        problems.push(
            problem("branch", "`branch` is not supported".into())
                .help("name the branch in `rev`; the checkout is on it"),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("path", target)
        .with("url", url)
        .with("rev", config.rev)
        .with("remote", config.remote)
        .with("force_reset", config.force_reset);
    if let Some(depth) = config.depth {
        resolved = resolved.with("depth", i64::from(depth));
    }
    Ok(resolved)
}

/// Runs `git` with `args`; stdout on success, the failure otherwise.
fn git(env_path: Option<&std::ffi::OsString>, args: &[&str]) -> Result<String, KindError> {
    let mut argv = vec!["git"];
    argv.extend_from_slice(args);
    let mut spec = Spec::new(argv);
    // Never ask for a password on a terminal: fail instead.
    spec.env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    let output = command::run(&spec, env_path)?;
    if output.success() { Ok(output.stdout) } else { Err(KindError::Failed { command: spec.display(), output }) }
}

/// The commit `rev` names at `url` now.
fn remote_commit(url: &str, rev: &str, env: &ApplyEnv) -> Result<String, KindError> {
    if is_commit(rev) {
        return Ok(rev.to_lowercase());
    }
    let listed = git(env.path.as_ref(), &["ls-remote", "--", url, rev])?;
    let refs: Vec<(&str, &str)> = listed.lines().filter_map(|l| l.split_once('\t')).collect();
    let wanted =
        [format!("refs/heads/{rev}"), format!("refs/tags/{rev}^{{}}"), format!("refs/tags/{rev}"), rev.to_owned()];
    wanted
        .iter()
        .find_map(|name| refs.iter().find(|(_, r)| r == name).map(|(sha, _)| (*sha).to_owned()))
        .ok_or_else(|| KindError::NoRevision { repository: url.to_owned(), rev: rev.to_owned() })
}

#[derive(Debug)]
enum Step {
    Clone,
    /// Fetch and move from this commit; with `reset`, local changes go.
    Update {
        from: String,
        reset: bool,
    },
}

#[derive(Debug)]
struct GitPlan {
    target: PathBuf,
    url: String,
    rev: String,
    remote: String,
    commit: String,
    depth: Option<u64>,
    step: Option<Step>,
    path: Option<std::ffi::OsString>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let target = PathBuf::from(args::string(args, "path")?);
    let url = args::string(args, "url")?.to_owned();
    let rev = args::string(args, "rev")?.to_owned();
    let remote = args::string(args, "remote")?.to_owned();
    let force_reset = args::bool_or(args, "force_reset", false);
    let commit = remote_commit(&url, &rev, env)?;
    let shown = target.display().to_string();
    let empty = std::fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(true);
    let step = if empty {
        Some(Step::Clone)
    } else {
        if !super::file_exists::present(&target.join(".git"))? {
            return Err(KindError::NotACheckout { path: target });
        }
        let path = env.path.as_ref();
        let head = git(path, &["-C", &shown, "rev-parse", "HEAD"]).unwrap_or_default().trim().to_owned();
        let dirty = !git(path, &["-C", &shown, "status", "--porcelain"])?.trim().is_empty();
        let ahead = !head.is_empty()
            && head != commit
            && git(path, &["-C", &shown, "cat-file", "-e", &format!("{commit}^{{commit}}")]).is_ok()
            && git(path, &["-C", &shown, "merge-base", "--is-ancestor", &head, &commit]).is_err();
        if (dirty || ahead) && !force_reset {
            let why = if dirty { "has local changes" } else { "has local commits the remote does not" };
            return Err(KindError::LocalChanges { path: target, why });
        }
        (head != commit || dirty).then_some(Step::Update { from: head, reset: dirty || ahead })
    };
    Ok(Box::new(GitPlan {
        target,
        url,
        rev,
        remote,
        commit,
        depth: args::opt_u64(args, "depth"),
        step,
        path: env.path.clone(),
    }))
}

impl Plan for GitPlan {
    fn changes(&self) -> Vec<String> {
        let short = &self.commit[..self.commit.len().min(12)];
        match &self.step {
            None => Vec::new(),
            Some(Step::Clone) => vec![format!("cloned {} into {} at {short}", self.url, self.target.display())],
            Some(Step::Update { from, reset }) => {
                let from = &from[..from.len().min(12)];
                let reset = if *reset { " (local changes discarded)" } else { "" };
                vec![format!("{}: {from} -> {short}{reset}", self.target.display())]
            }
        }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let shown = self.target.display().to_string();
        let path = self.path.as_ref();
        let depth = self.depth.map(|d| format!("--depth={d}"));
        match &self.step {
            None => return Ok(Vec::new()),
            Some(Step::Clone) => {
                let mut argv = vec!["clone", "--quiet", "--origin", self.remote.as_str()];
                argv.extend(depth.as_deref());
                argv.extend(["--", self.url.as_str(), shown.as_str()]);
                git(path, &argv)?;
            }
            Some(Step::Update { .. }) => {
                let mut argv = vec!["-C", shown.as_str(), "fetch", "--quiet"];
                argv.extend(depth.as_deref());
                let refspec = if is_commit(&self.rev) { self.commit.clone() } else { self.rev.clone() };
                argv.extend([self.remote.as_str(), refspec.as_str()]);
                git(path, &argv)?;
            }
        }
        let branch = !is_commit(&self.rev) && self.rev != "HEAD" && !self.rev.starts_with("refs/");
        if branch {
            git(path, &["-C", &shown, "checkout", "--quiet", "--force", "-B", &self.rev, &self.commit])?;
        } else {
            git(path, &["-C", &shown, "checkout", "--quiet", "--force", &self.commit])?;
        }
        git(path, &["-C", &shown, "reset", "--quiet", "--hard", &self.commit])?;
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};

    fn commit(repo: &std::path::Path, file: &str, text: &str) {
        std::fs::write(repo.join(file), text).unwrap();
        let shown = repo.display().to_string();
        git(None, &["-C", &shown, "add", file]).unwrap();
        git(
            None,
            &["-C", &shown, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", text],
        )
        .unwrap();
    }

    #[test]
    fn clones_follows_the_branch_and_keeps_local_changes_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir(&source).unwrap();
        git(None, &["-C", &source.display().to_string(), "init", "--quiet", "--initial-branch=main"]).unwrap();
        commit(&source, "a", "one\n");
        let target = dir.path().join("srv/app");
        let call = resolved(KIND.name, &format!("name: {}\ntarget: /placeholder\nrev: main", source.display()));
        let call = call.with_arg("path", target.display().to_string());
        let env = ApplyEnv::default();
        assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 1);
        assert!(!target.exists(), "test mode cloned");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 1);
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "one\n");
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        commit(&source, "a", "two\n");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 1);
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "two\n");
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        // A local edit fails the state; force_reset discards it.
        std::fs::write(target.join("a"), "local\n").unwrap();
        let halite_proto::Outcome::Failed { error } = apply_call(&call, false, &env).outcome else { panic!() };
        assert!(error.contains("local changes"), "{error}");
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "local\n");
        let forced = call.with_arg("force_reset", true);
        assert_eq!(changes(apply_call(&forced, false, &env).outcome).len(), 1);
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "two\n");
        assert!(changes(apply_call(&forced, false, &env).outcome).is_empty());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "a:\n  git.latest:\n    name: 'https://x/y.git'\n    target: srv/app\n    rev: '--upload-pack=x'\n    branch: main\n",
        );
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [4, 5, 6], "{diagnostics:#?}");
    }
}
