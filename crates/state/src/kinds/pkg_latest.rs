//! `pkg.latest`: Debian packages installed at the newest version apt
//! knows (Salt's `pkg.latest`: `name` or `pkgs`, `refresh`). Planning asks
//! `dpkg-query` (installed) and `apt-cache policy` (candidate), read-only;
//! `refresh: true` first runs `apt-get update`, which changes apt's
//! package lists only, also in test mode (as Salt does), so the candidate
//! is current. Installs with `apt-get install -y --no-install-recommends
//! <name>=<candidate>`.

use halite_proto::Value;
use serde::Deserialize;

use super::pkg_removed::{AptPlan, resolve_packages, status};
use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "pkg.latest",
    summary: "Debian packages at the newest version apt knows (`refresh: true`: apt-get update first).",
    example: "openssl:\n  pkg.latest:\n    refresh: true\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    pkgs: Option<Vec<String>>,
    #[serde(default)]
    refresh: bool,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    resolve_packages(state, KIND.name, (config.name, config.pkgs, None)).map(|v| v.with("refresh", config.refresh))
}

/// `apt-cache policy`'s candidate version, `None` when apt has none.
fn candidate(name: &str, env: &ApplyEnv) -> Result<Option<String>, KindError> {
    let output = command::run(&Spec::new(["apt-cache", "policy", name]), env.path.as_ref())?;
    if !output.success() {
        return Err(KindError::Failed { command: format!("apt-cache policy {name}"), output });
    }
    let line =
        output.stdout.lines().find_map(|l| l.trim().strip_prefix("Candidate:").map(str::trim).map(str::to_owned));
    Ok(line.filter(|c| c != "(none)"))
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    super::pkg_installed::refresh_index(args, env)?;
    let mut packages = Vec::new();
    for name in args::strings(args, "pkgs") {
        let latest = candidate(&name, env)?.ok_or_else(|| KindError::NoCandidate { package: name.clone() })?;
        match status(&name, env)? {
            Some((state, have)) if state == "installed" && have == latest => {}
            Some((state, have)) if state == "installed" => {
                packages.push((format!("{name}={latest}"), format!("upgrade {name} {have} -> {latest}")))
            }
            _ => packages.push((format!("{name}={latest}"), format!("install {name} {latest}"))),
        }
    }
    Ok(Box::new(AptPlan { verb: "install", packages, path: env.path.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::changes;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::StateCall;

    #[test]
    fn installs_or_upgrades_to_the_candidate_then_is_unchanged() {
        let fake = StandIns::new();
        fake.set("pkgs/openssl", "3.0.1");
        fake.set("candidates/openssl", "3.0.2");
        fake.set("candidates/curl", "8.0");
        let pkgs = super::super::string_list(vec!["openssl".into(), "curl".into()]);
        let call = StateCall::new("p", KIND.name, Value::map().with("pkgs", pkgs).with("refresh", true));
        let planned = changes(apply_call(&call, true, &fake.env()).outcome);
        assert_eq!(planned, ["upgrade openssl 3.0.1 -> 3.0.2", "install curl 8.0"]);
        assert!(fake.take_calls().contains(&"apt-get update -y".to_owned()), "refresh runs while planning");
        assert_eq!(std::fs::read_to_string(fake.state("pkgs/openssl")).unwrap(), "3.0.1");
        changes(apply_call(&call, false, &fake.env()).outcome);
        assert!(
            fake.take_calls().contains(&"apt-get install -y --no-install-recommends openssl=3.0.2 curl=8.0".to_owned())
        );
        assert!(changes(apply_call(&call, false, &fake.env()).outcome).is_empty());
        let unknown =
            StateCall::new("p", KIND.name, Value::map().with("pkgs", super::super::string_list(vec!["nope".into()])));
        assert!(apply_call(&unknown, false, &fake.env()).outcome.is_failed());
    }
}
