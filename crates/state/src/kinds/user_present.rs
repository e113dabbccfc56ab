//! `user.present`: a local user account (Salt's `user.present`: `uid`,
//! `gid`, `groups`, `optional_groups`, `remove_groups`, `home`,
//! `createhome`, `shell`, `password` (a crypt hash), `fullname`,
//! `system`, `allow_uid_change`, `allow_gid_change`).
//!
//! Planning reads the account from `/etc/passwd`, `/etc/group` and
//! `/etc/shadow` under the agent's root (through `halite_fs`: no link
//! followed); applying runs `useradd` or `usermod` (and `chpasswd -e` for
//! the hash, given on its standard input, never in an argument), each
//! with `--root <root>` when the agent's root is not `/`, so tests and
//! image builds change a throwaway root's users, never the host's.

use std::path::Path;

use halite_proto::Value;
use serde::Deserialize;

use super::cron_present::valid_user;
use super::{Authored, Kind, KindError, OneOrMany, Plan, Problem, args, string_list};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "user.present",
    summary: "A local user with the given uid, groups, home, shell and password hash (useradd/usermod).",
    example: "deploy:\n  user.present:\n    uid: 1500\n    shell: /bin/bash\n    groups: [www-data]\n    home: /home/deploy\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    uid: Option<u32>,
    /// A group id or name.
    gid: Option<serde_json::Value>,
    groups: Option<OneOrMany>,
    /// Groups joined only if they exist.
    optional_groups: Option<OneOrMany>,
    #[serde(default = "yes")]
    remove_groups: bool,
    home: Option<String>,
    #[serde(default = "yes")]
    createhome: bool,
    shell: Option<String>,
    password: Option<String>,
    fullname: Option<String>,
    #[serde(default)]
    system: bool,
    #[serde(default)]
    allow_uid_change: bool,
    #[serde(default)]
    allow_gid_change: bool,
}

fn yes() -> bool {
    true
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("user.present `{}`: {message}", state.id));
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if !valid_user(&name) {
        problems.push(problem("name", format!("`{name}` is not a user name")).help("letters, digits, `_`, `-`, `.`"));
    }
    let gid = match &config.gid {
        None => None,
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => Some(n.to_string()),
        Some(serde_json::Value::String(s)) if valid_user(s) => Some(s.clone()),
        Some(other) => {
            problems.push(problem("gid", format!("`{other}` is not a group id or name")));
            None
        }
    };
    let groups = config.groups.map(OneOrMany::into_vec).unwrap_or_default();
    let optional = config.optional_groups.map(OneOrMany::into_vec).unwrap_or_default();
    for (key, list) in [("groups", &groups), ("optional_groups", &optional)] {
        if let Some(bad) = list.iter().find(|g| !valid_user(g)) {
            problems.push(problem(key, format!("`{bad}` is not a group name")));
        }
    }
    for (key, value) in [("home", &config.home), ("shell", &config.shell)] {
        if let Some(path) = value
            && !path.starts_with('/')
        {
            problems.push(problem(key, format!("{key} `{path}` is not absolute")));
        }
    }
    let text_fields = [
        ("password", &config.password),
        ("fullname", &config.fullname),
        ("home", &config.home),
        ("shell", &config.shell),
    ];
    for (key, value) in text_fields {
        if value.as_deref().is_some_and(|v| v.contains([':', '\n'])) {
            problems.push(problem(key, format!("`{key}` must not contain `:` or a line break")));
        }
    }
    if let Some(hash) = &config.password
        && !(hash.starts_with('$') || hash == "!" || hash == "*" || hash.starts_with('!'))
    {
        problems.push(
            problem("password", "`password` is not a crypt hash".into())
                .help("give the hash, e.g. from `mkpasswd -m sha-512` ($6$...), never the password itself"),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("name", name)
        .with("groups", string_list(groups))
        .with("optional_groups", string_list(optional))
        .with("remove_groups", config.remove_groups)
        .with("createhome", config.createhome)
        .with("system", config.system)
        .with("allow_uid_change", config.allow_uid_change)
        .with("allow_gid_change", config.allow_gid_change);
    if let Some(uid) = config.uid {
        resolved = resolved.with("uid", i64::from(uid));
    }
    for (key, value) in [
        ("gid", gid),
        ("home", config.home),
        ("shell", config.shell),
        ("password", config.password),
        ("fullname", config.fullname),
    ] {
        if let Some(value) = value {
            resolved = resolved.with(key, value);
        }
    }
    Ok(resolved)
}

/// The account database under a root, as the tools read it.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    /// `name:x:uid:gid:gecos:home:shell`, split.
    pub passwd: Vec<Vec<String>>,
    /// `name:x:gid:members`, split.
    pub group: Vec<Vec<String>>,
    /// `name:hash:...`, split.
    pub shadow: Vec<Vec<String>>,
}

impl Accounts {
    /// Reads the three files under `root` (a missing one is empty).
    pub fn read(root: &Path) -> Result<Accounts, KindError> {
        let read = |file: &str| -> Result<Vec<Vec<String>>, KindError> {
            let path = crate::paths::rooted(root, Path::new(file));
            let text = halite_fs::Editable::read(&path, crate::edit::EDIT_LIMIT)?;
            let text = String::from_utf8_lossy(text.content().unwrap_or_default()).into_owned();
            Ok(text.lines().filter(|l| !l.is_empty()).map(|l| l.split(':').map(str::to_owned).collect()).collect())
        };
        Ok(Accounts { passwd: read("/etc/passwd")?, group: read("/etc/group")?, shadow: read("/etc/shadow")? })
    }

    pub fn user(&self, name: &str) -> Option<&[String]> {
        self.passwd.iter().find(|f| f.len() >= 7 && f[0] == name).map(Vec::as_slice)
    }

    pub fn group(&self, name: &str) -> Option<&[String]> {
        self.group.iter().find(|f| f.len() >= 4 && f[0] == name).map(Vec::as_slice)
    }

    /// A group's id, given its id or name.
    pub fn gid(&self, group: &str) -> Option<String> {
        if group.chars().all(|c| c.is_ascii_digit()) {
            return Some(group.to_owned());
        }
        self.group(group).map(|g| g[2].clone())
    }

    pub fn members(group: &[String]) -> Vec<String> {
        group[3].split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect()
    }

    /// The supplementary groups `user` is listed in, sorted.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        let mut groups: Vec<String> = self
            .group
            .iter()
            .filter(|g| g.len() >= 4 && Accounts::members(g).iter().any(|m| m == user))
            .map(|g| g[0].clone())
            .collect();
        groups.sort();
        groups
    }
}

/// `--root <root>` for the shadow tools, unless the root is `/`.
pub(crate) fn root_args(env: &ApplyEnv) -> Vec<String> {
    if env.root == Path::new("/") { Vec::new() } else { vec!["--root".into(), env.root.display().to_string()] }
}

/// Runs one of the shadow tools; its failure names the command.
pub(crate) fn run_tool(env: &ApplyEnv, argv: Vec<String>, stdin: Option<Vec<u8>>) -> Result<String, KindError> {
    let mut spec = Spec::new(argv);
    spec.stdin = stdin;
    let shown = spec.display();
    let output = command::run(&spec, env.path.as_ref())?;
    if output.success() { Ok(shown) } else { Err(KindError::Failed { command: shown, output }) }
}

#[derive(Debug)]
struct UserPlan {
    name: String,
    env: ApplyEnv,
    /// `useradd` or `usermod` and their options; `None`: nothing to do.
    tool: Option<(&'static str, Vec<String>)>,
    password: Option<String>,
    /// `attribute: old -> new`, one per change (the hash never shown).
    what: Vec<(String, String, String)>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let accounts = Accounts::read(&env.root)?;
    let name = args::string(args, "name")?.to_owned();
    let mut groups = args::strings(args, "groups");
    groups.extend(args::strings(args, "optional_groups").into_iter().filter(|g| accounts.group(g).is_some()));
    groups.sort();
    groups.dedup();
    // A group missing now may be made by a group.present earlier in the
    // job (test mode plans both before either runs): useradd says so if
    // it is still missing when the user is changed.
    let remove_groups = args::bool_or(args, "remove_groups", true);
    let uid = args::opt_u64(args, "uid").map(|u| u.to_string());
    let gid = args::opt_string(args, "gid").map(str::to_owned);
    let mut what = Vec::new();
    let mut options = Vec::new();
    let mut option = |flag: &str, value: &str| {
        options.push(flag.to_owned());
        options.push(value.to_owned());
    };
    let password = args::opt_string(args, "password").map(str::to_owned);
    let Some(current) = accounts.user(&name) else {
        for (flag, key) in [("--uid", uid.as_deref()), ("--gid", gid.as_deref())] {
            if let Some(value) = key {
                option(flag, value);
            }
        }
        for (flag, key) in [("--home", "home"), ("--shell", "shell"), ("--comment", "fullname")] {
            if let Some(value) = args::opt_string(args, key) {
                option(flag, value);
            }
        }
        if !groups.is_empty() {
            option("--groups", &groups.join(","));
        }
        options.push(if args::bool_or(args, "createhome", true) { "--create-home" } else { "--no-create-home" }.into());
        if args::bool_or(args, "system", false) {
            options.push("--system".into());
        }
        what.push(("user".into(), "absent".into(), "present".into()));
        return Ok(Box::new(UserPlan { name, env: env.clone(), tool: Some(("useradd", options)), password, what }));
    };
    let mut differs = |attribute: &str, flag: &str, now: &str, wanted: Option<&str>, options: &mut Vec<String>| {
        if let Some(wanted) = wanted.filter(|w| *w != now) {
            what.push((attribute.to_owned(), now.to_owned(), wanted.to_owned()));
            options.push(flag.to_owned());
            options.push(wanted.to_owned());
        }
    };
    let mut changes = Vec::new();
    if uid.as_deref().is_some_and(|u| u != current[2]) && !args::bool_or(args, "allow_uid_change", false) {
        return Err(KindError::UserIdChange {
            name: name.to_owned(),
            attribute: "uid",
            now: current[2].clone(),
            wanted: uid.unwrap_or_default(),
        });
    }
    let wanted_gid = gid.as_deref().map(|g| accounts.gid(g).unwrap_or_else(|| g.to_owned()));
    if wanted_gid.as_deref().is_some_and(|g| g != current[3]) && !args::bool_or(args, "allow_gid_change", false) {
        return Err(KindError::UserIdChange {
            name: name.to_owned(),
            attribute: "gid",
            now: current[3].clone(),
            wanted: wanted_gid.unwrap_or_default(),
        });
    }
    differs("uid", "--uid", &current[2], uid.as_deref(), &mut changes);
    differs("gid", "--gid", &current[3], wanted_gid.as_deref(), &mut changes);
    differs(
        "fullname",
        "--comment",
        current[4].split(',').next().unwrap_or_default(),
        args::opt_string(args, "fullname"),
        &mut changes,
    );
    differs("home", "--home", &current[5], args::opt_string(args, "home"), &mut changes);
    differs("shell", "--shell", &current[6], args::opt_string(args, "shell"), &mut changes);
    let now = accounts.groups_of(&name);
    let missing: Vec<&String> = groups.iter().filter(|g| !now.contains(g)).collect();
    let extra = remove_groups && now.iter().any(|g| !groups.contains(g));
    if !missing.is_empty() || extra {
        let wanted =
            if remove_groups { groups.clone() } else { now.iter().chain(missing.iter().copied()).cloned().collect() };
        let mut sorted = wanted.clone();
        sorted.sort();
        what.push(("groups".into(), now.join(","), sorted.join(",")));
        changes.push("--groups".into());
        changes.push(wanted.join(","));
    }
    if args.get("home").is_some() && changes.contains(&"--home".to_owned()) && args::bool_or(args, "createhome", true) {
        changes.push("--move-home".into());
    }
    let hash_now = accounts.shadow.iter().find(|s| s.len() >= 2 && s[0] == name).map(|s| s[1].clone());
    let password = password.filter(|p| hash_now.as_deref() != Some(p.as_str()));
    if password.is_some() {
        what.push(("password".into(), "(hash)".into(), "(another hash)".into()));
    }
    let tool = (!changes.is_empty()).then_some(("usermod", changes));
    Ok(Box::new(UserPlan { name, env: env.clone(), tool, password, what }))
}

impl Plan for UserPlan {
    fn changes(&self) -> Vec<String> {
        self.what
            .iter()
            .map(|(attribute, from, to)| match attribute.as_str() {
                "user" => format!("created user {}", self.name),
                _ => format!("{attribute} of user {}: {from} -> {to}", self.name),
            })
            .collect()
    }

    fn diff(&self) -> Option<String> {
        let lines: Vec<String> = self
            .what
            .iter()
            .filter(|(attribute, _, _)| attribute != "user")
            .map(|(attribute, from, to)| format!("-{attribute}: {from}\n+{attribute}: {to}\n"))
            .collect();
        (!lines.is_empty()).then(|| format!("--- user {0}\n+++ user {0}\n{1}", self.name, lines.concat()))
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        if let Some((tool, options)) = &self.tool {
            let mut argv = vec![(*tool).to_owned()];
            argv.extend(root_args(&self.env));
            argv.extend(options.iter().cloned());
            argv.push("--".into());
            argv.push(self.name.clone());
            run_tool(&self.env, argv, None)?;
        }
        if let Some(hash) = &self.password {
            let mut argv = vec!["chpasswd".to_owned(), "--encrypted".into()];
            argv.extend(root_args(&self.env));
            run_tool(&self.env, argv, Some(format!("{}:{hash}\n", self.name).into_bytes()))?;
        }
        Ok(self.changes())
    }
}

/// A throwaway root with the account files the shadow tools need.
#[cfg(test)]
pub(crate) fn test_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::create_dir_all(root.path().join("home")).unwrap();
    for (file, text) in [
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("group", "root:x:0:\nusers:x:100:\nwww-data:x:33:\nadm:x:4:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\nusers:*::\nwww-data:*::\nadm:*::\n"),
    ] {
        std::fs::write(root.path().join("etc").join(file), text).unwrap();
    }
    crate::test_support::chmod(&root.path().join("etc/shadow"), 0o600);
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};

    fn passwd(root: &Path) -> String {
        std::fs::read_to_string(root.join("etc/passwd")).unwrap()
    }

    /// The shadow tools chroot into the root: only root may run them.
    fn privileged() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn creates_then_changes_then_is_unchanged_in_a_throwaway_root() {
        if !privileged() {
            // useradd --root needs chroot(2); the plan is still checked.
            let root = test_root();
            let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
            let call = resolved(KIND.name, "name: deploy\nuid: 1500");
            assert_eq!(changes(apply_call(&call, true, &env).outcome), ["created user deploy"]);
            return;
        }
        let root = test_root();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let hash = "$6$salt$2f0bLkxF7oRZ6ypYoi1u5nLbmtnWyJeLPKp1JnV5E3tLqZGq2tJ6gGv6b6w5Xb5yJ5d7sZ5m8z2x1C3v4B5n6.";
        let call = resolved(
            KIND.name,
            &format!(
                "name: deploy\nuid: 1500\nshell: /bin/bash\ngroups: [www-data, adm]\npassword: '{hash}'\nfullname: Deploy Bot"
            ),
        );
        assert_eq!(changes(apply_call(&call, true, &env).outcome), ["created user deploy"]);
        assert!(!passwd(root.path()).contains("deploy"), "test mode created the user");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 1);
        assert!(
            passwd(root.path()).contains("deploy:x:1500:100:Deploy Bot:/home/deploy:/bin/bash"),
            "{}",
            passwd(root.path())
        );
        assert!(root.path().join("home/deploy").is_dir());
        assert!(std::fs::read_to_string(root.path().join("etc/shadow")).unwrap().contains(hash));
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        // Drift: another shell and one group less wanted.
        let call = resolved(
            KIND.name,
            &format!(
                "name: deploy\nuid: 1500\nshell: /bin/sh\ngroups: [adm]\npassword: '{hash}'\nfullname: Deploy Bot"
            ),
        );
        let result = apply_call(&call, false, &env);
        assert!(result.diff.as_deref().unwrap().contains("-shell: /bin/bash\n+shell: /bin/sh\n"), "{result:?}");
        assert_eq!(changes(result.outcome).len(), 2);
        let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
        assert!(group.contains("adm:x:4:deploy") && group.contains("www-data:x:33:\n"), "{group}");
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        // A uid change is refused unless allowed.
        let call = resolved(KIND.name, "name: deploy\nuid: 1501");
        assert!(apply_call(&call, false, &env).outcome.is_failed());
    }

    #[test]
    fn plans_read_the_roots_accounts_only() {
        let root = test_root();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let call = resolved(KIND.name, "name: root\nshell: /bin/zsh\ngroups: [nope]");
        let planned = changes(apply_call(&call, true, &env).outcome);
        assert_eq!(planned[1], "groups of user root:  -> nope", "{planned:?}");
        if nix::unistd::geteuid().is_root() {
            let halite_proto::Outcome::Failed { error } = apply_call(&call, false, &env).outcome else { panic!() };
            assert!(error.contains("usermod") && error.contains("nope"), "{error}");
        }
        let call = resolved(KIND.name, "name: root\nshell: /bin/zsh\noptional_groups: [nope]\nremove_groups: false");
        assert_eq!(changes(apply_call(&call, true, &env).outcome), ["shell of user root: /bin/bash -> /bin/zsh"]);
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "a:\n  user.present:\n    name: 'bad:name'\n    shell: bin/sh\n    password: hunter2\n    groups: ['a b']\n",
        );
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4, 5, 6], "{diagnostics:#?}");
    }
}
