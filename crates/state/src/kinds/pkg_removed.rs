//! `pkg.removed`: Debian packages that are not installed (Salt's
//! `pkg.removed`: `name` or `pkgs`, `version`: removed only at that
//! version), through `dpkg-query` (the read-only probe) and `apt-get
//! remove -y` with `DEBIAN_FRONTEND=noninteractive`; their configuration
//! files stay (that is `pkg.purged`).

use std::time::Duration;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args, string_list};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "pkg.removed",
    summary: "Debian packages not installed (their configuration files kept), via dpkg-query and apt-get remove.",
    example: "telnet:\n  pkg.removed: {}\n",
    resolve,
    plan,
    file: None,
};

/// A removal that takes longer than this is killed and fails.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    pkgs: Option<Vec<String>>,
    version: Option<String>,
}

pub(crate) fn valid_package(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c))
}

/// Resolves `pkg.removed`, `pkg.purged` and `pkg.latest` (`kind`):
/// `name` or `pkgs`, checked as Debian names; `version` when `versions`.
pub(crate) fn resolve_packages(
    state: &Authored<'_>,
    kind: &str,
    config: (Option<String>, Option<Vec<String>>, Option<String>),
) -> Result<Value, Vec<Problem>> {
    let problem = |key: &str, message: String| Problem::new(state.at(key), format!("{kind} `{}`: {message}", state.id));
    let (name, pkgs, version) = config;
    let (names, key) = match (name, pkgs) {
        (Some(_), Some(_)) => {
            return Err(vec![problem("pkgs", "both `name` and `pkgs` given".into()).help("keep one of them")]);
        }
        (_, Some(pkgs)) => (pkgs, "pkgs"),
        (name, None) => (vec![name.unwrap_or_else(|| state.id.to_owned())], "name"),
    };
    let mut problems: Vec<Problem> = names
        .iter()
        .filter(|n| !valid_package(n))
        .map(|n| {
            problem(key, format!("`{n}` is not a Debian package name"))
                .help("lower case letters, digits and + - . (e.g. nginx)")
        })
        .collect();
    if names.is_empty() {
        problems.push(problem(key, "no package named".into()));
    }
    if version.as_ref().is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace)) {
        problems.push(problem("version", "not a version".into()));
    }
    if version.is_some() && key == "pkgs" {
        problems.push(problem("version", "`version` applies to one package (`name`)".into()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map().with("pkgs", string_list(names));
    if let Some(version) = version {
        resolved = resolved.with("version", version);
    }
    Ok(resolved)
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    resolve_packages(state, KIND.name, (config.name, config.pkgs, config.version))
}

/// dpkg's view of a package: (`installed` or another state word, version).
pub(crate) fn status(name: &str, env: &ApplyEnv) -> Result<Option<(String, String)>, KindError> {
    let spec = Spec::new(["dpkg-query", "-W", "-f", "${Status} ${Version}", name]);
    let output = command::run(&spec, env.path.as_ref())?;
    if !output.success() {
        return Ok(None);
    }
    let words: Vec<&str> = output.stdout.split_whitespace().collect();
    let state = words.get(2).copied().unwrap_or("not-installed").to_owned();
    Ok((state != "not-installed").then(|| (state, words.get(3).copied().unwrap_or_default().to_owned())))
}

/// Runs `apt-get <verb> -y <packages>` non-interactively.
pub(crate) fn apt_get(verb: &str, packages: &[String], env_path: Option<&std::ffi::OsString>) -> Result<(), KindError> {
    let mut spec = Spec::new(["apt-get", verb, "-y"]);
    if verb == "install" {
        spec.argv.push("--no-install-recommends".into());
    }
    spec.argv.extend(packages.iter().cloned());
    spec.env.push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
    spec.timeout = Some(TIMEOUT);
    let output = command::run(&spec, env_path)?;
    if output.success() { Ok(()) } else { Err(KindError::Failed { command: spec.display(), output }) }
}

/// Packages to hand to one `apt-get` verb, each with what it does.
#[derive(Debug)]
pub(crate) struct AptPlan {
    pub verb: &'static str,
    pub packages: Vec<(String, String)>,
    pub path: Option<std::ffi::OsString>,
}

impl Plan for AptPlan {
    fn changes(&self) -> Vec<String> {
        self.packages.iter().map(|(_, why)| why.clone()).collect()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let names: Vec<String> = self.packages.iter().map(|(p, _)| p.clone()).collect();
        apt_get(self.verb, &names, self.path.as_ref())?;
        Ok(self.changes())
    }
}

/// `pkg.removed` (`purge` false) or `pkg.purged`: the packages dpkg still
/// knows as installed (or, to purge, with configuration files left).
pub(crate) fn plan_removal(args: &Value, env: &ApplyEnv, purge: bool) -> Result<Box<dyn Plan>, KindError> {
    let version = args::opt_string(args, "version");
    let mut packages = Vec::new();
    for name in args::strings(args, "pkgs") {
        let Some((state, have)) = status(&name, env)? else { continue };
        let installed = state == "installed";
        if version.is_some_and(|v| v != have) || !(installed || purge) {
            continue;
        }
        let why = match (purge, installed) {
            (false, _) => format!("remove {name} {have}"),
            (true, true) => format!("purge {name} {have}"),
            (true, false) => format!("purge the configuration files of {name}"),
        };
        packages.push((name, why));
    }
    Ok(Box::new(AptPlan { verb: if purge { "purge" } else { "remove" }, packages, path: env.path.clone() }))
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_removal(args, env, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::changes;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::StateCall;

    #[test]
    fn removes_keeping_configuration_then_is_unchanged() {
        let fake = StandIns::new();
        fake.set("pkgs/telnet", "0.17");
        let call = StateCall::new(
            "telnet",
            KIND.name,
            Value::map().with("pkgs", string_list(vec!["telnet".into(), "absent".into()])),
        );
        assert_eq!(changes(apply_call(&call, true, &fake.env()).outcome), ["remove telnet 0.17"]);
        assert!(fake.state("pkgs/telnet").exists());
        assert_eq!(changes(apply_call(&call, false, &fake.env()).outcome), ["remove telnet 0.17"]);
        assert!(fake.take_calls().contains(&"apt-get remove -y telnet".to_owned()));
        assert!(fake.state("conf/telnet").exists(), "configuration kept");
        assert!(changes(apply_call(&call, false, &fake.env()).outcome).is_empty());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = crate::kind_tests::load("a:\n  pkg.removed:\n    pkgs: [Bad]\n    version: '1'\n");
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4], "{diagnostics:#?}");
    }
}
