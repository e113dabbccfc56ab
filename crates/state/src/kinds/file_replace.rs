//! `file.replace`: every match of a regular expression in a file replaced
//! (Salt's `file.replace`: `pattern`, `repl`, `count`, `flags`,
//! `append_if_not_found`, `prepend_if_not_found`, `not_found_content`,
//! `backup`, `ignore_if_missing`, `backslash_literal`). Python's regex
//! syntax as far as Rust's regex has it (no look-around or
//! back-references: an error when the tree loads). Read and written
//! through [`crate::edit`].

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text::{self, TextError};

pub static KIND: Kind = Kind {
    name: "file.replace",
    summary: "Every match of a regular expression in a file replaced; appended or prepended when not found, if asked.",
    example: "sshd-no-root:\n  file.replace:\n    name: /etc/ssh/sshd_config\n    pattern: '^#?PermitRootLogin .*$'\n    repl: PermitRootLogin no\n    append_if_not_found: true\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    pattern: String,
    repl: String,
    /// 0: every match.
    #[serde(default)]
    count: usize,
    /// Python `re` flags; Salt's default is 8 (MULTILINE).
    flags: Option<serde_json::Value>,
    /// Salt reads the file in blocks of this size; halite reads it whole.
    #[allow(dead_code)]
    bufsize: Option<serde_json::Value>,
    #[serde(default)]
    append_if_not_found: bool,
    #[serde(default)]
    prepend_if_not_found: bool,
    not_found_content: Option<String>,
    backup: Option<serde_json::Value>,
    /// Diffs are always shown.
    #[allow(dead_code)]
    show_changes: Option<bool>,
    #[serde(default)]
    ignore_if_missing: bool,
    #[serde(default)]
    backslash_literal: bool,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("file.replace `{}`: {message}", state.id));
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    let flags = match text::regex_flags(config.flags.as_ref().unwrap_or(&serde_json::json!(8))) {
        Ok(flags) => flags,
        Err(e) => {
            problems.push(
                problem("flags", e.to_string())
                    .help("give Python's re flags as a number (8) or names ([MULTILINE, IGNORECASE])"),
            );
            String::new()
        }
    };
    if let Err(e) = text::compile(&config.pattern, &flags) {
        problems.push(
            problem("pattern", e.to_string())
                .help("fix the regular expression (Rust regex syntax, as Python's without look-around)"),
        );
    }
    let repl = text::replacement(&config.repl, config.backslash_literal).unwrap_or_else(|e| {
        problems.push(problem("repl", e.to_string()).help("escape a literal backslash as \\\\"));
        String::new()
    });
    if config.append_if_not_found && config.prepend_if_not_found {
        problems.push(
            problem("prepend_if_not_found", "both `append_if_not_found` and `prepend_if_not_found`".into())
                .help("keep one of them"),
        );
    }
    let backup = text::backup_wanted(config.backup.as_ref()).unwrap_or_else(|e| {
        problems.push(problem("backup", e.to_string()).help("write `backup: false` or leave it out"));
        true
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("path", path)
        .with("pattern", format!("{flags}{}", config.pattern))
        .with("repl", repl)
        .with("not_found_content", config.not_found_content.unwrap_or(config.repl))
        .with("count", config.count as i64)
        .with("backup", backup)
        .with("ignore_if_missing", config.ignore_if_missing)
        .with("flags", flags);
    if config.append_if_not_found {
        resolved = resolved.with("if_not_found", "append");
    } else if config.prepend_if_not_found {
        resolved = resolved.with("if_not_found", "prepend");
    }
    Ok(resolved)
}

/// The edit, pure: `text` with the replacements made (Salt's algorithm:
/// the not-found content counts as found when it is already a line).
fn replace(path: &std::path::Path, text: &str, args: &Value) -> Result<(String, Vec<String>), KindError> {
    let fail = |source| KindError::Text { path: path.to_owned(), source };
    let pattern = text::compile(args::string(args, "pattern")?, "").map_err(fail)?;
    let repl = args::string(args, "repl")?;
    let count = args::opt_u64(args, "count").unwrap_or(0) as usize;
    let content = args::string(args, "not_found_content")?;
    let flags = args::opt_string(args, "flags").unwrap_or("");
    let mut found = pattern.is_match(text);
    let new = pattern.replacen(text, count, repl).into_owned();
    let mut what = Vec::new();
    if new != text {
        what.push(format!("replaced `{}`", pattern.as_str()));
    }
    let mode = args::opt_string(args, "if_not_found");
    if !found && mode.is_some() {
        // A previous run's appended content: found, not appended again.
        let line = text::compile(&format!("^{}(?:$|\\r\\n)", regex::escape(content)), flags).map_err(fail)?;
        found = line.is_match(text);
    }
    if found || mode.is_none() {
        return Ok((new, what));
    }
    let line = format!("{content}\n");
    Ok(match mode {
        Some("prepend") => (format!("{line}{new}"), vec![format!("prepended `{content}`")]),
        _ => (format!("{}{line}", text::with_newline(&new)), vec![format!("appended `{content}`")]),
    })
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = std::path::PathBuf::from(args::string(args, "path")?);
    let ignore_missing = args::bool_or(args, "ignore_if_missing", false);
    let plan = EditPlan::new(&path, env, args::bool_or(args, "backup", true), NewFile::default(), |text| match text {
        None if ignore_missing => Ok((Edited::Keep, Vec::new())),
        None => Err(KindError::Text {
            path: path.clone(),
            source: TextError::NoFile { help: " (set `ignore_if_missing: true` to let that be)" },
        }),
        Some(text) => replace(&path, text, args).map(|(new, what)| (Edited::Text(new), what)),
    })?;
    Ok(plan.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, load, resolved};

    #[test]
    fn replaces_then_reports_unchanged() {
        let args = resolved(KIND.name, "pattern: '^#?PermitRootLogin .*$'\nrepl: PermitRootLogin no");
        let (first, second, text) = apply_twice(&args, Some("Port 22\n#PermitRootLogin yes\n"));
        assert_eq!(text, "Port 22\nPermitRootLogin no\n");
        assert!(first.iter().any(|c| c.contains("replaced")), "{first:?}");
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn appends_or_prepends_when_not_found_once() {
        for (how, expected) in [("append_if_not_found", "a\nb\nkey=1\n"), ("prepend_if_not_found", "key=1\na\nb")] {
            let args = resolved(KIND.name, &format!("pattern: '^key=.*'\nrepl: key=1\n{how}: true"));
            let (first, second, text) = apply_twice(&args, Some("a\nb"));
            assert_eq!(text, expected, "{how}");
            assert_eq!(first.len(), 1, "{first:?}");
            assert!(second.is_empty(), "{how}: {second:?}");
        }
        // The content already there as a line counts as found.
        let args = resolved(
            KIND.name,
            "pattern: 'nomatch'\nrepl: x\nnot_found_content: 'ready = true'\nappend_if_not_found: true",
        );
        let (first, _, _) = apply_twice(&args, Some("ready = true\n"));
        assert!(first.is_empty(), "{first:?}");
    }

    #[test]
    fn count_groups_and_flags_follow_python() {
        let call = resolved(KIND.name, "pattern: '([A-Z])=(\\d)'\nrepl: '\\2=\\1'\ncount: 1\nflags: [IGNORECASE]");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "a=1 b=2\n").unwrap();
        let call = crate::kind_tests::at_path(&call, &path);
        crate::apply_call(&call, false, &ApplyEnv::default());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1=a b=2\n", "one replacement, groups swapped");
    }

    #[test]
    fn a_missing_file_fails_unless_ignored() {
        let args = resolved(KIND.name, "pattern: x\nrepl: z");
        let dir = tempfile::tempdir().unwrap();
        let missing = args.args.clone().with("path", dir.path().join("missing").to_str().unwrap());
        let error = plan(&missing, &ApplyEnv::default()).err().unwrap();
        assert!(
            matches!(&error, KindError::Text { path, source: TextError::NoFile { .. } } if path.ends_with("missing")),
            "{error}"
        );
        let ignored = missing.with("ignore_if_missing", true);
        assert!(plan(&ignored, &ApplyEnv::default()).unwrap().changes().is_empty());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "x:\n  file.replace:\n    name: /etc/x\n    pattern: '(?<=a)b'\n    repl: c\n    flags: [NOPE]\n    backup: 3\ny:\n  file.replace:\n    name: etc/y\n    pattern: a\n    repl: b\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines.iter().any(|(l, m)| *l == 4 && m.contains("look-around")), "{lines:#?}");
        assert!(lines.iter().any(|(l, m)| *l == 6 && m.contains("NOPE")), "{lines:#?}");
        assert!(lines.iter().any(|(l, m)| *l == 7 && m.contains("backup")), "{lines:#?}");
        assert!(lines.iter().any(|(l, m)| *l == 10 && m.contains("not absolute")), "{lines:#?}");
    }
}
