//! `pkg.installed`: Debian packages that are installed (at a version, if
//! given), through `dpkg-query` (a read-only probe while planning) and
//! `apt-get install -y --no-install-recommends` with
//! `DEBIAN_FRONTEND=noninteractive`.

use std::time::Duration;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args, string_list};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "pkg.installed",
    summary: "Debian packages installed (`name` or `pkgs: [..]`, optional `version`), via dpkg-query and apt-get.",
    example: "web-packages:\n  pkg.installed:\n    pkgs: [nginx, curl]\n",
    resolve,
    plan,
    file: None,
};

/// An installation that takes longer than this is killed and fails.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// One package; defaults to the state id when `pkgs` is not given.
    name: Option<String>,
    pkgs: Option<Vec<String>>,
    /// The exact version of `name` (Debian version string).
    version: Option<String>,
    /// Salt's: `apt-get update` first (once per job however many ask).
    #[serde(default)]
    refresh: bool,
}

fn valid_package(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c))
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("pkg.installed `{}`: {message}", state.id));
    let (names, key) = match (config.name, config.pkgs) {
        (Some(_), Some(_)) => {
            return Err(vec![problem("pkgs", "both `name` and `pkgs` given".into()).help("keep one of them")]);
        }
        (_, Some(pkgs)) if config.version.is_some() => {
            let _ = pkgs;
            return Err(vec![
                problem("version", "`version` applies to one package (`name`), not to `pkgs`".into())
                    .help("give each its own state, or drop `version`"),
            ]);
        }
        (_, Some(pkgs)) => (pkgs, "pkgs"),
        (name, None) => (vec![name.unwrap_or_else(|| state.id.to_owned())], "name"),
    };
    let mut problems: Vec<Problem> = names
        .iter()
        .filter(|n| !valid_package(n))
        .map(|n| {
            problem(key, format!("`{n}` is not a Debian package name"))
                .help("package names are lower case letters, digits and + - . (e.g. nginx, libc6)")
        })
        .collect();
    if names.is_empty() {
        problems.push(problem(key, "no package named".into()));
    }
    if let Some(version) = &config.version
        && (version.is_empty() || version.contains(char::is_whitespace))
    {
        problems.push(problem("version", format!("`{version}` is not a version")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map().with("pkgs", string_list(names));
    if let Some(version) = config.version {
        resolved = resolved.with("version", version);
    }
    if config.refresh {
        resolved = resolved.with("refresh", true);
    }
    Ok(resolved)
}

/// `apt-get update` before a package state plans, at most once per job:
/// when a repository changed earlier in the job (`pkgrepo.managed`), or
/// when the state says `refresh: True` and no refresh ran in this job yet
/// (`env::PackageIndex`).
pub(crate) fn refresh_index(args: &Value, env: &ApplyEnv) -> Result<(), KindError> {
    if env.packages.take_refresh(args::bool_or(args, "refresh", false)) {
        super::pkg_removed::apt_get("update", &[], env.path.as_ref())?;
    }
    Ok(())
}

#[derive(Debug)]
struct PkgPlan {
    /// `name` or `name=version`, for those not as desired; with the reason.
    missing: Vec<(String, String)>,
    path: Option<std::ffi::OsString>,
}

/// `Some(version)` when installed.
fn installed(name: &str, env: &ApplyEnv) -> Result<Option<String>, KindError> {
    let spec = Spec::new(["dpkg-query", "-W", "-f", "${Status} ${Version}", name]);
    let output = command::run(&spec, env.path.as_ref())?;
    if !output.success() {
        // Unknown to dpkg: not installed.
        return Ok(None);
    }
    let mut words = output.stdout.split_whitespace();
    let status: Vec<&str> = words.by_ref().take(3).collect();
    let version = words.next().unwrap_or_default().to_owned();
    Ok((status == ["install", "ok", "installed"]).then_some(version))
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    refresh_index(args, env)?;
    let wanted = args::opt_string(args, "version");
    let mut missing = Vec::new();
    for name in args::strings(args, "pkgs") {
        match (installed(&name, env)?, wanted) {
            (None, None) => missing.push((name.clone(), format!("install {name}"))),
            (None, Some(v)) => missing.push((format!("{name}={v}"), format!("install {name} {v}"))),
            (Some(have), Some(v)) if have != v => {
                missing.push((format!("{name}={v}"), format!("install {name} {v} (installed: {have})")));
            }
            (Some(_), _) => {}
        }
    }
    Ok(Box::new(PkgPlan { missing, path: env.path.clone() }))
}

impl Plan for PkgPlan {
    fn changes(&self) -> Vec<String> {
        self.missing.iter().map(|(_, why)| why.clone()).collect()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let mut spec = Spec::new(["apt-get", "install", "-y", "--no-install-recommends"]);
        spec.argv.extend(self.missing.iter().map(|(arg, _)| arg.clone()));
        spec.env.push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
        spec.timeout = Some(INSTALL_TIMEOUT);
        let output = command::run(&spec, self.path.as_ref())?;
        if !output.success() {
            return Err(KindError::Failed { command: spec.display(), output });
        }
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::{Outcome, StateCall};

    fn call(pkgs: &[&str], version: Option<&str>) -> StateCall {
        let mut args = Value::map().with("pkgs", string_list(pkgs.iter().map(|s| s.to_string()).collect()));
        if let Some(v) = version {
            args = args.with("version", v);
        }
        StateCall::new("p", KIND.name, args)
    }

    #[test]
    fn installs_what_is_missing_then_is_unchanged() {
        let fake = StandIns::new();
        fake.set("pkgs/curl", "7.88");
        let result = apply_call(&call(&["curl", "nginx"], None), false, &fake.env());
        assert_eq!(result.outcome, Outcome::Changed { changes: vec!["install nginx".into()] });
        let calls = fake.take_calls();
        assert_eq!(calls.last().unwrap(), "apt-get install -y --no-install-recommends nginx");
        assert_eq!(fake.take_calls(), Vec::<String>::new());
        assert_eq!(apply_call(&call(&["curl", "nginx"], None), false, &fake.env()).outcome, Outcome::Unchanged);
        assert!(!fake.take_calls().iter().any(|c| c.starts_with("apt-get")));
    }

    #[test]
    fn a_version_is_installed_exactly() {
        let fake = StandIns::new();
        fake.set("pkgs/nginx", "1.0");
        let result = apply_call(&call(&["nginx"], Some("1.2")), false, &fake.env());
        assert_eq!(result.outcome, Outcome::Changed { changes: vec!["install nginx 1.2 (installed: 1.0)".into()] });
        assert!(fake.take_calls().contains(&"apt-get install -y --no-install-recommends nginx=1.2".to_owned()));
        assert_eq!(std::fs::read_to_string(fake.state("pkgs/nginx")).unwrap(), "1.2");
    }

    #[test]
    fn test_mode_only_queries() {
        let fake = StandIns::new();
        let result = apply_call(&call(&["nginx"], None), true, &fake.env());
        assert!(matches!(result.outcome, Outcome::WouldChange { .. }));
        assert_eq!(fake.take_calls(), ["dpkg-query -W -f ${Status} ${Version} nginx"]);
        assert!(!fake.state("pkgs/nginx").exists());
    }

    /// The real dpkg-query, for a package every Debian system has.
    #[test]
    fn the_real_dpkg_query_sees_dpkg_installed() {
        if command::resolve_program("dpkg-query", None).components().count() <= 1 {
            eprintln!("no dpkg-query on this host; skipped");
            return;
        }
        let env = ApplyEnv::default();
        assert!(installed("dpkg", &env).unwrap().is_some_and(|v| !v.is_empty()));
        assert_eq!(installed("halite-no-such-package", &env).unwrap(), None);
        assert_eq!(apply_call(&call(&["dpkg"], None), true, &env).outcome, Outcome::Unchanged);
    }

    #[test]
    fn authored_forms_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let text = "a:\n  pkg.installed:\n    - pkgs: [nginx, curl]\nb:\n  pkg.installed:\n    name: Bad_Name\nc:\n  pkg.installed:\n    pkgs: [x]\n    version: '1'\nnginx:\n  pkg.installed:\n    version: 1.2-1\n";
        std::fs::write(dir.path().join("p.sls"), text).unwrap();
        let (tree, diagnostics) = crate::StateTree::load(dir.path());
        assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
        assert!(diagnostics[0].message.contains("`Bad_Name` is not a Debian package name"));
        assert!(diagnostics[1].message.contains("`version` applies to one package"));
        let nginx = &tree.files["p"].states[1].call.args;
        assert_eq!(args::strings(nginx, "pkgs"), ["nginx"]);
        assert_eq!(args::opt_string(nginx, "version"), Some("1.2-1"));
    }
}
