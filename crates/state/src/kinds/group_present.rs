//! `group.present`: a local group (Salt's `group.present`: `gid`,
//! `system`, `members` the exact list, or `addusers`/`delusers`), read
//! from `/etc/group` under the agent's root and changed with `groupadd`,
//! `groupmod` and `gpasswd --members`, each with `--root <root>` (see
//! `user.present`).

use halite_proto::Value;
use serde::Deserialize;

use super::cron_present::valid_user;
use super::user_present::{Accounts, root_args, run_tool};
use super::{Authored, Kind, KindError, Plan, Problem, args, string_list};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "group.present",
    summary: "A local group with the given gid and members (groupadd/groupmod/gpasswd).",
    example: "devs:\n  group.present:\n    gid: 2000\n    members: [alice, bob]\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    gid: Option<u32>,
    #[serde(default)]
    system: bool,
    members: Option<Vec<String>>,
    addusers: Option<Vec<String>>,
    delusers: Option<Vec<String>>,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("group.present `{}`: {message}", state.id));
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if !valid_user(&name) {
        problems.push(problem("name", format!("`{name}` is not a group name")));
    }
    if config.members.is_some() && (config.addusers.is_some() || config.delusers.is_some()) {
        problems.push(
            problem("members", "`members` with `addusers`/`delusers`".into())
                .help("give the whole list in `members`, or change it with addusers/delusers"),
        );
    }
    for (key, list) in [("members", &config.members), ("addusers", &config.addusers), ("delusers", &config.delusers)] {
        if let Some(bad) = list.iter().flatten().find(|u| !valid_user(u)) {
            problems.push(problem(key, format!("`{bad}` is not a user name")));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map().with("name", name).with("system", config.system);
    if let Some(gid) = config.gid {
        resolved = resolved.with("gid", i64::from(gid));
    }
    for (key, list) in [("members", config.members), ("addusers", config.addusers), ("delusers", config.delusers)] {
        if let Some(list) = list {
            resolved = resolved.with(key, string_list(list));
        }
    }
    Ok(resolved)
}

#[derive(Debug)]
struct GroupPlan {
    name: String,
    env: ApplyEnv,
    create: Option<Vec<String>>,
    gid: Option<(String, String)>,
    members: Option<(Vec<String>, Vec<String>)>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let accounts = Accounts::read(&env.root)?;
    let name = args::string(args, "name")?.to_owned();
    let gid = args::opt_u64(args, "gid").map(|g| g.to_string());
    let current = accounts.group(&name);
    let now = current.map(Accounts::members).unwrap_or_default();
    let mut wanted = match args.get("members") {
        Some(_) => args::strings(args, "members"),
        None => {
            let delete = args::strings(args, "delusers");
            let mut list: Vec<String> = now.iter().filter(|m| !delete.contains(m)).cloned().collect();
            list.extend(args::strings(args, "addusers").into_iter().filter(|u| !now.contains(u)));
            list
        }
    };
    wanted.dedup();
    // A user missing now may be made earlier in the job; gpasswd says so
    // if it is still missing.
    let (mut sorted_now, mut sorted_wanted) = (now.clone(), wanted.clone());
    sorted_now.sort();
    sorted_wanted.sort();
    let members = (sorted_now != sorted_wanted).then_some((now, wanted));
    let Some(current) = current else {
        let mut options = Vec::new();
        if let Some(gid) = &gid {
            options.extend(["--gid".to_owned(), gid.clone()]);
        }
        if args::bool_or(args, "system", false) {
            options.push("--system".into());
        }
        return Ok(Box::new(GroupPlan { name, env: env.clone(), create: Some(options), gid: None, members }));
    };
    let gid = gid.filter(|g| *g != current[2]).map(|g| (current[2].clone(), g));
    Ok(Box::new(GroupPlan { name, env: env.clone(), create: None, gid, members }))
}

impl Plan for GroupPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if self.create.is_some() {
            changes.push(format!("created group {}", self.name));
        }
        if let Some((from, to)) = &self.gid {
            changes.push(format!("gid of group {}: {from} -> {to}", self.name));
        }
        if let Some((from, to)) = &self.members {
            changes.push(format!("members of group {}: [{}] -> [{}]", self.name, from.join(","), to.join(",")));
        }
        changes
    }

    fn diff(&self) -> Option<String> {
        let (from, to) = self.members.as_ref()?;
        Some(format!(
            "--- group {0}\n+++ group {0}\n-members: {1}\n+members: {2}\n",
            self.name,
            from.join(","),
            to.join(",")
        ))
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let tool = |program: &str, options: Vec<String>, name_last: bool| {
            let mut argv = vec![program.to_owned()];
            argv.extend(root_args(&self.env));
            argv.extend(options);
            if name_last {
                argv.extend(["--".to_owned(), self.name.clone()]);
            } else {
                argv.push(self.name.clone());
            }
            run_tool(&self.env, argv, None)
        };
        if let Some(options) = &self.create {
            tool("groupadd", options.clone(), true)?;
        }
        if let Some((_, gid)) = &self.gid {
            tool("groupmod", vec!["--gid".into(), gid.clone()], true)?;
        }
        if let Some((_, members)) = &self.members {
            // gpasswd takes no `--` before the group.
            tool("gpasswd", vec!["--members".into(), members.join(",")], false)?;
        }
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};
    use crate::kinds::user_present::test_root;

    #[test]
    fn creates_sets_members_then_is_unchanged_in_a_throwaway_root() {
        let root = test_root();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1500:100::/home/alice:/bin/sh\n",
        )
        .unwrap();
        let call = resolved(KIND.name, "name: devs\ngid: 2000\nmembers: [alice]");
        assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 2);
        if !nix::unistd::geteuid().is_root() {
            return; // groupadd --root needs chroot(2); the plan is checked above.
        }
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 2);
        let group = || std::fs::read_to_string(root.path().join("etc/group")).unwrap();
        assert!(group().contains("devs:x:2000:alice\n"), "{}", group());
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        let call = resolved(KIND.name, "name: devs\ngid: 2001\ndelusers: [alice]");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 2);
        assert!(group().contains("devs:x:2001:\n"), "{}", group());
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load("a:\n  group.present:\n    name: devs\n    members: [a]\n    addusers: ['b c']\n");
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [4, 5], "{diagnostics:#?}");
    }
}
