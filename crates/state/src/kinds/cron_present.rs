//! `cron.present`: a job in a user's crontab (Salt's `cron.present`:
//! `name` the command, `user`, `minute`, `hour`, `daymonth`, `month`,
//! `dayweek`, `special`, `comment`, `commented`, `identifier`).
//!
//! Identified as Salt does, so a crontab Salt kept is taken over as it
//! is: jobs below Salt's line `# Lines below here are managed by Salt, do
//! not edit` are halite's to change; each has a comment line above it
//! ending `SALT_CRON_IDENTIFIER:<identifier>` (the identifier defaults to
//! the command), and a job without one is matched by its command. Lines
//! above that marker are the user's own and never touched.
//!
//! The crontab is the spool file `/var/spool/cron/crontabs/<user>`
//! (Debian's), under the agent's root, edited through [`crate::edit`]; a
//! new one is the user's, group `crontab`, mode 0600, as `crontab(1)`
//! makes it (cron notices the change by the spool directory's time).

use halite_fs::Perms;
use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text;

pub static KIND: Kind = Kind {
    name: "cron.present",
    summary: "A job in a user's crontab, identified as Salt does (SALT_CRON_IDENTIFIER, else the command).",
    example: "backup:\n  cron.present:\n    name: /usr/local/bin/backup --quiet\n    user: root\n    minute: 30\n    hour: 2\n",
    resolve,
    plan,
    file: None,
};

/// Salt's marker: jobs below it are managed.
pub(crate) const TAG: &str = "# Lines below here are managed by Salt, do not edit";
const IDENTIFIER: &str = "SALT_CRON_IDENTIFIER:";
const SPOOL: &str = "/var/spool/cron/crontabs";
const SPECIALS: &[&str] = &["@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    #[serde(default = "root")]
    user: String,
    minute: Option<serde_json::Value>,
    hour: Option<serde_json::Value>,
    daymonth: Option<serde_json::Value>,
    month: Option<serde_json::Value>,
    dayweek: Option<serde_json::Value>,
    special: Option<String>,
    comment: Option<String>,
    #[serde(default)]
    commented: bool,
    identifier: Option<String>,
}

fn root() -> String {
    "root".into()
}

/// A user name as `useradd` accepts it.
pub(crate) fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
}

/// Resolves `cron.present` or `cron.absent` (`kind`): the crontab's
/// path, the command and its identity; for `cron.present`, the line.
pub(crate) fn resolve_cron(state: &Authored<'_>, kind: &str) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(kind)?;
    let mut problems = Vec::new();
    let problem = |key: &str, message: String| Problem::new(state.at(key), format!("{kind} `{}`: {message}", state.id));
    let command = config.name.unwrap_or_else(|| state.id.to_owned()).trim().to_owned();
    if command.is_empty() || command.contains('\n') {
        problems.push(problem("name", "the command must be one non-empty line".into()));
    }
    if !valid_user(&config.user) {
        problems.push(problem("user", format!("`{}` is not a user name", config.user)));
    }
    let mut times = Vec::new();
    for (key, value) in [
        ("minute", &config.minute),
        ("hour", &config.hour),
        ("daymonth", &config.daymonth),
        ("month", &config.month),
        ("dayweek", &config.dayweek),
    ] {
        let text = match value {
            None => "*".to_owned(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => {
                problems.push(problem(key, format!("`{other}` is not a time field")));
                continue;
            }
        };
        if text == "random" {
            problems.push(problem(key, "`random` is not supported".into()).help("pick the value yourself"));
        } else if text.is_empty()
            || !text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-'))
        {
            problems.push(problem(key, format!("`{text}` is not a cron time field")).help("e.g. 30, */5, 1-5, mon"));
        }
        times.push(text);
    }
    if let Some(special) = &config.special
        && !SPECIALS.contains(&special.as_str())
    {
        problems.push(problem("special", format!("`{special}` is not one of {}", SPECIALS.join(", "))));
    }
    if config.comment.as_deref().is_some_and(|c| c.contains('\n')) {
        problems.push(problem("comment", "the comment must be one line".into()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let identifier = config.identifier.unwrap_or_else(|| command.clone());
    let mut comment = "#".to_owned();
    if let Some(text) = &config.comment {
        comment.push_str(&format!(" {text}"));
    }
    comment.push_str(&format!(" {IDENTIFIER}{identifier}"));
    let schedule = config.special.unwrap_or_else(|| times.join(" "));
    let disabled = if config.commented { "#DISABLED#" } else { "" };
    Ok(Value::map()
        .with("path", format!("{SPOOL}/{}", config.user))
        .with("user", config.user)
        .with("command", command.clone())
        .with("identifier", identifier)
        .with("entry", format!("{comment}\n{disabled}{schedule} {command}\n")))
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_cron(state, KIND.name)
}

/// The command of a job line (Salt's parse): after `@special` or the five
/// time fields; `None` for anything that is not a job.
fn job_command(line: &str) -> Option<String> {
    let line = line.strip_prefix("#DISABLED#").unwrap_or(line).trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let first = line.split_whitespace().next()?;
    if first.contains('=') && !first.starts_with('@') {
        return None; // An environment line.
    }
    let skip = if first.starts_with('@') { 1 } else { 5 };
    let mut rest = line;
    for _ in 0..skip {
        rest = rest.trim_start().split_once(char::is_whitespace)?.1;
    }
    Some(rest.trim().to_owned())
}

/// The line range (start, end exclusive) of the managed job `args`
/// identifies, in `lines`, below the tag at `tag`.
fn find_job(lines: &[&str], tag: usize, args: &Value) -> Option<(usize, usize)> {
    let identifier = args::opt_string(args, "identifier")?;
    let command = args::opt_string(args, "command")?;
    for i in tag + 1..lines.len() {
        let Some(cmd) = job_command(lines[i]) else { continue };
        let id = i
            .checked_sub(1)
            .filter(|p| *p > tag)
            .and_then(|p| lines[p].trim_end().rsplit_once(IDENTIFIER).map(|(_, id)| (p, id.to_owned())));
        match id {
            Some((p, id)) if id == identifier => return Some((p, i + 1)),
            // Salt's "NO ID SET", or a job without a comment: the command.
            Some((p, id)) if id == "NO ID SET" && cmd == command => return Some((p, i + 1)),
            None if cmd == command => return Some((i, i + 1)),
            _ => {}
        }
    }
    None
}

/// The crontab with the job present (`entry`) or absent (`None`).
pub(crate) fn edit_crontab(text: &str, args: &Value, entry: Option<&str>) -> String {
    let lines: Vec<&str> = text::lines(text).into_iter().collect();
    let trimmed: Vec<&str> = lines.iter().map(|l| l.trim_end_matches('\n')).collect();
    let Some(tag) = trimmed.iter().position(|l| *l == TAG) else {
        return match entry {
            Some(entry) => format!("{}{TAG}\n{entry}", text::with_newline(text)),
            None => text.to_owned(),
        };
    };
    match (find_job(&trimmed, tag, args), entry) {
        (Some((start, end)), entry) => {
            format!("{}{}{}", lines[..start].concat(), entry.unwrap_or_default(), lines[end..].concat())
        }
        (None, Some(entry)) => format!("{}{entry}", text::with_newline(text)),
        (None, None) => text.to_owned(),
    }
}

/// A user's or group's id from the root's `/etc/passwd` / `/etc/group`
/// (the agent may manage a root other than its own), else the host's.
pub(crate) fn id_in_root(env: &ApplyEnv, file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(env.rooted(file)).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.nth(1)?.parse().ok()).flatten()
    })
}

pub(crate) fn plan_cron(args: &Value, env: &ApplyEnv, present: bool) -> Result<Box<dyn Plan>, KindError> {
    let path = std::path::PathBuf::from(args::string(args, "path")?);
    let user = args::string(args, "user")?;
    let entry = present.then(|| args::string(args, "entry")).transpose()?;
    let uid = id_in_root(env, "/etc/passwd", user)
        .or_else(|| super::file_managed::lookup_user(user).ok())
        .ok_or_else(|| KindError::NoUser { name: user.to_owned() })?;
    let gid = id_in_root(env, "/etc/group", "crontab");
    let new_file = NewFile { perms: Perms { mode: 0o600, uid: Some(uid), gid }, makedirs: false };
    let command = args::string(args, "command")?;
    let plan = EditPlan::new(&path, env, true, new_file, |text| match text {
        None if !present => Ok((Edited::Keep, Vec::new())),
        text => {
            let verb = if present { "in" } else { "removed from" };
            let what = vec![format!("`{command}` {verb} {user}'s crontab")];
            Ok((Edited::Text(edit_crontab(text.unwrap_or_default(), args, entry)), what))
        }
    })?;
    Ok(plan.boxed())
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_cron(args, env, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, load, resolved};

    fn call(fields: &str) -> halite_proto::StateCall {
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        resolved(KIND.name, &format!("user: {user}\n{fields}"))
    }

    #[test]
    fn adds_the_job_below_the_tag_then_is_unchanged() {
        let c = call("name: /usr/bin/backup\nminute: 30\nhour: 2\ncomment: nightly");
        let (first, second, text) = apply_twice(&c, Some("MAILTO=ops\n0 * * * * mine\n"));
        assert_eq!(
            text,
            format!(
                "MAILTO=ops\n0 * * * * mine\n{TAG}\n# nightly SALT_CRON_IDENTIFIER:/usr/bin/backup\n30 2 * * * /usr/bin/backup\n"
            )
        );
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn a_job_salt_wrote_is_changed_in_place() {
        let before = format!("{TAG}\n# SALT_CRON_IDENTIFIER:nightly\n0 1 * * * /old/backup\n* * * * * /other\n");
        let c = call("name: /usr/bin/backup\nidentifier: nightly\nspecial: '@daily'");
        let (_, second, text) = apply_twice(&c, Some(&before));
        assert_eq!(text, format!("{TAG}\n# SALT_CRON_IDENTIFIER:nightly\n@daily /usr/bin/backup\n* * * * * /other\n"));
        assert!(second.is_empty());
        // A job without an identifier is found by its command.
        let c = call("name: /other\nminute: 5");
        let (_, _, text) = apply_twice(&c, Some(&before));
        assert!(text.ends_with("# SALT_CRON_IDENTIFIER:/other\n5 * * * * /other\n"), "{text}");
        assert_eq!(text.matches("/other").count(), 2, "{text}");
    }

    #[test]
    fn a_new_crontab_is_the_users_and_private() {
        use std::os::unix::fs::MetadataExt;
        let (_, _, text) = apply_twice(&call("name: /bin/true"), None);
        assert_eq!(text, format!("{TAG}\n# SALT_CRON_IDENTIFIER:/bin/true\n* * * * * /bin/true\n"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crontab");
        let c = crate::kind_tests::at_path(&call("name: /bin/true"), &path);
        crate::apply_call(&c, false, &ApplyEnv::default());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "a:\n  cron.present:\n    name: x\n    minute: random\n    hour: '2;3'\n    special: '@sometimes'\n    user: '-x'\n",
        );
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [4, 5, 6, 7], "{diagnostics:#?}");
    }
}
