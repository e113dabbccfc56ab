//! `group.absent`: no local group of this name (Salt's `group.absent`),
//! through `groupdel --root <root>` (see `user.present`).

use halite_proto::Value;
use serde::Deserialize;

use super::cron_present::valid_user;
use super::user_present::{Accounts, root_args, run_tool};
use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "group.absent",
    summary: "No local group of this name.",
    example: "olddevs:\n  group.absent: {}\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if !valid_user(&name) {
        return Err(vec![Problem::new(
            state.at("name"),
            format!("group.absent `{}`: `{name}` is not a group name", state.id),
        )]);
    }
    Ok(Value::map().with("name", name))
}

#[derive(Debug)]
struct AbsentPlan {
    name: String,
    present: bool,
    env: ApplyEnv,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let name = args::string(args, "name")?.to_owned();
    let present = Accounts::read(&env.root)?.group(&name).is_some();
    Ok(Box::new(AbsentPlan { name, present, env: env.clone() }))
}

impl Plan for AbsentPlan {
    fn changes(&self) -> Vec<String> {
        if self.present { vec![format!("removed group {}", self.name)] } else { Vec::new() }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        if self.present {
            let mut argv = vec!["groupdel".to_owned()];
            argv.extend(root_args(&self.env));
            argv.extend(["--".to_owned(), self.name.clone()]);
            run_tool(&self.env, argv, None)?;
        }
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, resolved};
    use crate::kinds::user_present::test_root;

    #[test]
    fn removes_then_is_unchanged_in_a_throwaway_root() {
        let root = test_root();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let call = resolved(KIND.name, "name: adm");
        assert_eq!(changes(apply_call(&call, true, &env).outcome), ["removed group adm"]);
        if !nix::unistd::geteuid().is_root() {
            return; // groupdel --root needs chroot(2); the plan is checked above.
        }
        assert_eq!(changes(apply_call(&call, false, &env).outcome), ["removed group adm"]);
        assert!(!std::fs::read_to_string(root.path().join("etc/group")).unwrap().contains("adm:"));
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
    }
}
