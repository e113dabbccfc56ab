//! `pkg.purged`: Debian packages neither installed nor leaving
//! configuration files (Salt's `pkg.purged`: `name` or `pkgs`,
//! `version`), through `dpkg-query` and `apt-get purge -y`.

use halite_proto::Value;
use serde::Deserialize;

use super::pkg_removed::{plan_removal, resolve_packages};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "pkg.purged",
    summary: "Debian packages not installed and without configuration files left, via dpkg-query and apt-get purge.",
    example: "old-daemon:\n  pkg.purged:\n    pkgs: [telnetd, rsh-server]\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    pkgs: Option<Vec<String>>,
    version: Option<String>,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    resolve_packages(state, KIND.name, (config.name, config.pkgs, config.version))
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_removal(args, env, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::changes;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::StateCall;

    #[test]
    fn purges_installed_and_leftover_configuration_then_is_unchanged() {
        let fake = StandIns::new();
        fake.set("pkgs/telnetd", "0.17");
        fake.set("conf/rsh-server", "0.17");
        let pkgs = super::super::string_list(vec!["telnetd".into(), "rsh-server".into()]);
        let call = StateCall::new("p", KIND.name, Value::map().with("pkgs", pkgs));
        let first = changes(apply_call(&call, false, &fake.env()).outcome);
        assert_eq!(first, ["purge telnetd 0.17", "purge the configuration files of rsh-server"]);
        assert!(!fake.state("pkgs/telnetd").exists() && !fake.state("conf/rsh-server").exists());
        assert!(changes(apply_call(&call, false, &fake.env()).outcome).is_empty());
    }
}
