//! `user.absent`: no local user of this name (Salt's `user.absent`:
//! `purge` removes the home directory too, `force` even while the user is
//! logged in), through `userdel --root <root>` (see `user.present`).

use halite_proto::Value;
use serde::Deserialize;

use super::cron_present::valid_user;
use super::user_present::{Accounts, root_args, run_tool};
use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "user.absent",
    summary: "No local user of this name (`purge`: its home removed too).",
    example: "olduser:\n  user.absent:\n    purge: true\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    #[serde(default)]
    purge: bool,
    #[serde(default)]
    force: bool,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if !valid_user(&name) {
        return Err(vec![Problem::new(
            state.at("name"),
            format!("user.absent `{}`: `{name}` is not a user name", state.id),
        )]);
    }
    Ok(Value::map().with("name", name).with("purge", config.purge).with("force", config.force))
}

#[derive(Debug)]
struct AbsentPlan {
    name: String,
    present: bool,
    purge: bool,
    force: bool,
    env: ApplyEnv,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let name = args::string(args, "name")?.to_owned();
    let present = Accounts::read(&env.root)?.user(&name).is_some();
    Ok(Box::new(AbsentPlan {
        name,
        present,
        purge: args::bool_or(args, "purge", false),
        force: args::bool_or(args, "force", false),
        env: env.clone(),
    }))
}

impl Plan for AbsentPlan {
    fn changes(&self) -> Vec<String> {
        if self.present { vec![format!("removed user {}", self.name)] } else { Vec::new() }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        if self.present {
            let mut argv = vec!["userdel".to_owned()];
            argv.extend(root_args(&self.env));
            argv.extend(self.purge.then(|| "--remove".to_owned()));
            argv.extend(self.force.then(|| "--force".to_owned()));
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
        let passwd = root.path().join("etc/passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\nold:x:1600:100::/home/old:/bin/sh\n").unwrap();
        std::fs::write(root.path().join("etc/shadow"), "root:*:19000:0:99999:7:::\nold:*:19000:0:99999:7:::\n")
            .unwrap();
        std::fs::create_dir_all(root.path().join("home/old")).unwrap();
        if nix::unistd::geteuid().is_root() {
            halite_fs::Dir::open(&root.path().join("home/old")).unwrap().set_owner(Some(1600), Some(100)).unwrap();
        }
        let call = resolved(KIND.name, "name: old\npurge: true");
        assert_eq!(changes(apply_call(&call, true, &env).outcome), ["removed user old"]);
        if !nix::unistd::geteuid().is_root() {
            return; // userdel --root needs chroot(2); the plan is checked above.
        }
        assert_eq!(changes(apply_call(&call, false, &env).outcome), ["removed user old"]);
        assert!(!std::fs::read_to_string(&passwd).unwrap().contains("old:"));
        assert!(!root.path().join("home/old").exists(), "purge removes the home");
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
    }
}
