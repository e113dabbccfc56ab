//! `sysctl.present`: a kernel parameter with a value, now and at boot
//! (Salt's `sysctl.present`: `name`, `value`, `config`). The live value is
//! read from and written to `/proc/sys/<name with / for .>` under the
//! agent's root (through `halite_fs`, in place, no link followed); the
//! boot value is a `name = value` line in `config` (Salt's default
//! `/etc/sysctl.d/99-salt.conf`), edited through [`crate::edit`]. Values
//! compare by their whitespace-separated fields, as the kernel prints a
//! range with a tab.

use std::path::PathBuf;

use halite_fs::Dir;
use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text;

pub static KIND: Kind = Kind {
    name: "sysctl.present",
    summary: "A kernel parameter with a value, now (/proc/sys) and at boot (a line in /etc/sysctl.d/).",
    example: "vm.swappiness:\n  sysctl.present:\n    value: 10\n",
    resolve,
    plan,
    file: None,
};

const DEFAULT_CONFIG: &str = "/etc/sysctl.d/99-salt.conf";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The parameter, e.g. `vm.swappiness`; defaults to the state id.
    name: Option<String>,
    value: serde_json::Value,
    /// The file that sets it at boot.
    config: Option<String>,
}

/// A parameter name: words of `[A-Za-z0-9_-]` joined by `.` or `/`.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .split(['.', '/'])
            .all(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("sysctl.present `{}`: {message}", state.id));
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if !valid_key(&name) {
        problems.push(
            problem("name", format!("`{name}` is not a kernel parameter name"))
                .help("e.g. vm.swappiness or net.ipv4.ip_forward"),
        );
    }
    let value = match &config.value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => u8::from(*b).to_string(),
        other => {
            problems.push(problem("value", format!("value `{other}` is not a number or string")));
            String::new()
        }
    };
    if value.contains('\n') || value.trim().is_empty() && problems.is_empty() {
        problems.push(problem("value", "the value must be one non-empty line".into()));
    }
    let path = config.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
    if !path.starts_with('/') {
        problems.push(
            problem("config", format!("config `{path}` is not absolute")).help("e.g. /etc/sysctl.d/99-halite.conf"),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Value::map().with("path", path).with("name", name).with("value", value))
}

/// What a config file halite creates starts with: Salt's header
/// (`linux_sysctl.persist`), so a host converted from Salt gets the same
/// file (tests/e2e/salt_system.rs compares it with Salt's).
const NEW_CONFIG: &str = "#\n# Kernel sysctl configuration\n#\n";

fn fields(value: &str) -> Vec<&str> {
    value.split_whitespace().collect()
}

/// The config text with `name = value` set: the last line setting `name`
/// replaced (earlier ones removed, so the file says it once), or the line
/// appended.
fn set_line(text: &str, name: &str, value: &str) -> String {
    let wanted = format!("{name} = {value}");
    let key = |line: &str| {
        let line = line.trim_start();
        (!line.starts_with('#') && !line.starts_with(';'))
            .then(|| line.split_once('=').map(|(k, _)| k.trim().replace('/', ".")))
            .flatten()
    };
    let ours = name.replace('/', ".");
    let lines = text::lines(text);
    let setting: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| key(l).as_deref() == Some(&ours)).map(|(i, _)| i).collect();
    let Some(&last) = setting.last() else { return format!("{}{wanted}\n", text::with_newline(text)) };
    let current = lines[last].split_once('=').map(|(_, v)| v.trim()).unwrap_or_default();
    if setting.len() == 1 && fields(current) == fields(value) {
        return text.to_owned();
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i == last {
            out.push_str(&wanted);
            out.push('\n');
        } else if !setting.contains(&i) {
            out.push_str(line);
        }
    }
    out
}

#[derive(Debug)]
struct SysctlPlan {
    file: EditPlan,
    live_path: PathBuf,
    /// The live value's directory and file name; `(current, desired)`
    /// when it differs.
    live: Option<(Dir, std::ffi::OsString, String, String)>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let name = args::string(args, "name")?;
    let value = args::string(args, "value")?;
    let live_path = env.rooted(&format!("/proc/sys/{}", name.replace('.', "/")));
    let unknown = || KindError::NoKernelParameter { name: name.to_owned(), path: live_path.clone() };
    let (dir, file_name) =
        halite_fs::open_parent(&live_path, None).map_err(|e| if e.is_not_found() { unknown() } else { e.into() })?;
    let current = dir.open_file(&file_name)?;
    let current = current.ok_or_else(unknown)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut current.file(), &mut text)
        .map_err(|source| KindError::Read { path: live_path.clone(), source })?;
    let live = (fields(&text) != fields(value)).then(|| (dir, file_name, text.trim_end().to_owned(), value.to_owned()));
    let path = PathBuf::from(args::string(args, "path")?);
    let new_file = NewFile { makedirs: true, ..NewFile::default() };
    let file = EditPlan::new(&path, env, true, new_file, |text| {
        let text = text.unwrap_or(NEW_CONFIG);
        Ok((Edited::Text(set_line(text, name, value)), vec![format!("{name} = {value} in {}", path.display())]))
    })?;
    Ok(Box::new(SysctlPlan { file, live_path, live }))
}

impl Plan for SysctlPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if let Some((_, _, from, to)) = &self.live {
            changes.push(format!("{}: {from} -> {to}", self.live_path.display()));
        }
        changes.extend(self.file.changes());
        changes
    }

    fn diff(&self) -> Option<String> {
        let live = self.live.as_ref().map(|(_, _, from, to)| {
            let shown = self.live_path.display();
            format!("--- {shown}\n+++ {shown}\n@@ -1 +1 @@\n-{from}\n+{to}\n")
        });
        match (live, self.file.diff()) {
            (None, None) => None,
            (live, file) => Some(format!("{}{}", live.unwrap_or_default(), file.unwrap_or_default())),
        }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let mut done = Vec::new();
        if let Some((dir, name, from, to)) = &self.live {
            dir.write_in_place(name, format!("{to}\n").as_bytes())?;
            done.push(format!("{}: {from} -> {to}", self.live_path.display()));
        }
        done.extend(Box::new(self.file).apply()?);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};

    /// A root with /proc/sys/vm/swappiness at 60.
    fn root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/vm")).unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/net/ipv4")).unwrap();
        std::fs::write(root.path().join("proc/sys/vm/swappiness"), "60\n").unwrap();
        std::fs::write(root.path().join("proc/sys/net/ipv4/ip_local_port_range"), "32768\t60999\n").unwrap();
        root
    }

    fn rooted(call: &halite_proto::StateCall, root: &std::path::Path) -> halite_proto::StateCall {
        crate::paths::rooted_call(call, root)
    }

    #[test]
    fn sets_the_live_value_and_the_boot_file_then_is_unchanged() {
        let root = root();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let call = rooted(&resolved(KIND.name, "name: vm.swappiness\nvalue: 10"), root.path());
        let would = apply_call(&call, true, &env);
        assert!(would.diff.as_deref().unwrap().contains("-60\n+10\n"), "{would:?}");
        assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(), "60\n");
        let first = changes(apply_call(&call, false, &env).outcome);
        assert!(first[0].ends_with("proc/sys/vm/swappiness: 60 -> 10"), "{first:?}");
        assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(), "10\n");
        let conf = root.path().join("etc/sysctl.d/99-salt.conf");
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "#\n# Kernel sysctl configuration\n#\nvm.swappiness = 10\n",
            "a new file starts with Salt's header"
        );
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        // A range compares by fields; an old line is replaced, not added to.
        std::fs::write(&conf, "# tuning\nvm.swappiness=30\nnet.ipv4.ip_local_port_range = 1 2\n").unwrap();
        let range =
            rooted(&resolved(KIND.name, "name: net.ipv4.ip_local_port_range\nvalue: '32768 60999'"), root.path());
        let first = changes(apply_call(&range, false, &env).outcome);
        assert_eq!(first.len(), 1, "only the file: {first:?}");
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "# tuning\nvm.swappiness=30\nnet.ipv4.ip_local_port_range = 32768 60999\n"
        );
    }

    #[test]
    fn an_unknown_parameter_fails() {
        let root = root();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let call = rooted(&resolved(KIND.name, "name: vm.nope\nvalue: 1"), root.path());
        let halite_proto::Outcome::Failed { error } = apply_call(&call, false, &env).outcome else { panic!() };
        assert!(error.contains("no kernel parameter `vm.nope`"), "{error}");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "a:\n  sysctl.present:\n    name: 'vm..x'\n    value: 1\nb:\n  sysctl.present:\n    name: vm.x\n    value: [1]\n    config: rel\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].0 == 3, "{lines:#?}");
        assert!(lines[1].0 == 8 && lines[2].0 == 9, "{lines:#?}");
    }
}
