//! `file.line`: one line of a file ensured, replaced, deleted or inserted
//! (Salt's `file.line`: `content`, `match`, `mode`
//! ensure/replace/delete/insert, `location` start/end, `before`, `after`,
//! `indent`, `create`, `backup`). `match`, `before` and `after` are
//! regular expressions searched in each line; a line is "the content"
//! when it equals it without surrounding whitespace. Read and written
//! through [`crate::edit`].

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text::{self, TextError};

pub static KIND: Kind = Kind {
    name: "file.line",
    summary: "One line of a file ensured (before/after another), replaced, deleted or inserted.",
    example: "swappiness:\n  file.line:\n    name: /etc/sysctl.conf\n    mode: ensure\n    content: vm.swappiness = 10\n    after: '^# tuning'\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    content: Option<String>,
    #[serde(rename = "match")]
    matches: Option<String>,
    mode: Option<String>,
    location: Option<String>,
    before: Option<String>,
    after: Option<String>,
    #[serde(default = "yes")]
    indent: bool,
    #[serde(default)]
    create: bool,
    backup: Option<serde_json::Value>,
    /// Diffs are always shown; nothing to quieten.
    #[allow(dead_code)]
    show_changes: Option<bool>,
    #[allow(dead_code)]
    quiet: Option<bool>,
}

fn yes() -> bool {
    true
}

const MODES: &[&str] = &["ensure", "replace", "delete", "insert"];

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("file.line `{}`: {message}", state.id));
    let mode = config.mode.clone().unwrap_or_default().to_lowercase();
    if !MODES.contains(&mode.as_str()) {
        problems.push(
            problem("mode", format!("mode `{mode}` is not one of {}", MODES.join(", ")))
                .help("say what to do with the line, e.g. `mode: ensure`"),
        );
    }
    let content = config.content.clone().unwrap_or_default();
    if mode != "delete" && config.content.is_none() {
        problems.push(problem("content", format!("mode `{mode}` needs `content`")).help("add `content: <the line>`"));
    }
    if mode == "delete" && config.content.is_none() && config.matches.is_none() {
        problems.push(
            problem("mode", "mode `delete` needs `match` or `content`".into())
                .help("add `match: <a regex of the line>`"),
        );
    }
    if content.contains('\n') {
        problems.push(
            problem("content", "content must be one line".into()).help("use file.blockreplace for several lines"),
        );
    }
    for (key, value) in [("match", &config.matches), ("before", &config.before), ("after", &config.after)] {
        if let Some(pattern) = value
            && let Err(e) = text::compile(pattern, "")
        {
            problems.push(problem(key, e.to_string()));
        }
    }
    if let Some(location) = &config.location
        && !["start", "end"].contains(&location.as_str())
    {
        problems.push(problem("location", format!("location `{location}` is neither start nor end")));
    }
    let anchored = config.before.is_some() || config.after.is_some();
    if mode == "ensure" && !anchored {
        problems.push(
            problem("mode", "mode `ensure` needs `before` or `after`".into())
                .help("add `after: <a regex of the line before>`"),
        );
    }
    if mode == "insert" && !anchored && config.location.is_none() {
        problems.push(
            problem("mode", "mode `insert` needs `location`, `before` or `after`".into()).help("add `location: end`"),
        );
    }
    let backup = match text::backup_wanted(config.backup.as_ref().or(Some(&serde_json::Value::Bool(false)))) {
        Ok(backup) => backup,
        Err(e) => {
            problems.push(problem("backup", e.to_string()));
            false
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    // Salt: with neither before nor after, `match` falls back to the content.
    let matches = config.matches.unwrap_or_else(|| regex::escape(&content));
    let mut resolved = Value::map()
        .with("path", path)
        .with("mode", mode)
        .with("content", content)
        .with("match", matches)
        .with("indent", config.indent)
        .with("create", config.create)
        .with("backup", backup);
    for (key, value) in [("location", config.location), ("before", config.before), ("after", config.after)] {
        if let Some(value) = value {
            resolved = resolved.with(key, value);
        }
    }
    Ok(resolved)
}

fn indent_of(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// The edit, pure: the new text, or an error Salt would also give.
fn edit_line(path: &std::path::Path, text: &str, args: &Value) -> Result<String, KindError> {
    let fail = |source| KindError::Text { path: path.to_owned(), source };
    let content = args::string(args, "content")?;
    let indent = args::bool_or(args, "indent", true);
    let regex = |key: &str| args::opt_string(args, key).map(|p| text::compile(p, "")).transpose().map_err(fail);
    let matches = regex("match")?.ok_or(KindError::Argument { key: "match", expected: "a pattern" })?;
    let no_line =
        |anchor: &'static str, re: &regex::Regex| fail(TextError::NoLine { anchor, pattern: re.as_str().to_owned() });
    let (before, after) = (regex("before")?, regex("after")?);
    let mut lines: Vec<String> = text::lines(text).iter().map(|l| l.trim_end_matches('\n').to_owned()).collect();
    let ends_with_newline = text.is_empty() || text.ends_with('\n');
    let is_content = |line: &str| line.trim() == content.trim();
    let find = |re: &regex::Regex, lines: &[String]| lines.iter().position(|l| re.is_match(l));
    let indented = |anchor: Option<&String>| match (indent, anchor) {
        (true, Some(line)) => format!("{}{}", indent_of(line), content.trim_start()),
        _ => content.to_owned(),
    };
    match args::string(args, "mode")? {
        "delete" => lines.retain(|l| !matches.is_match(l)),
        "replace" => {
            for line in lines.iter_mut().filter(|l| matches.is_match(l) && !is_content(l)) {
                *line =
                    if indent { format!("{}{}", indent_of(line), content.trim_start()) } else { content.to_owned() };
            }
        }
        "insert" if lines.iter().any(|l| is_content(l)) => {}
        "insert" => {
            // The new line takes the indentation of the line it is put beside.
            let (at, anchor) = match (&before, &after) {
                (_, Some(after)) => {
                    let a = find(after, &lines).ok_or_else(|| no_line("after", after))?;
                    (a + 1, Some(a))
                }
                (Some(before), None) => {
                    let b = find(before, &lines).ok_or_else(|| no_line("before", before))?;
                    (b, Some(b))
                }
                (None, None) if args::opt_string(args, "location") == Some("start") => (0, None),
                (None, None) => (lines.len(), None),
            };
            let line = indented(anchor.and_then(|i| lines.get(i)));
            lines.insert(at, line);
        }
        "ensure" => match (&before, &after) {
            (Some(before), Some(after)) => {
                let a = find(after, &lines).ok_or_else(|| no_line("after", after))?;
                let b = lines[a + 1..].iter().position(|l| before.is_match(l)).map(|i| i + a + 1);
                let b = b.ok_or_else(|| {
                    fail(TextError::NoLineBetween {
                        after: after.as_str().to_owned(),
                        before: before.as_str().to_owned(),
                    })
                })?;
                match b - a - 1 {
                    0 => {
                        let line = indented(lines.get(a));
                        lines.insert(b, line);
                    }
                    1 if is_content(&lines[a + 1]) => {}
                    1 => lines[a + 1] = indented(lines.get(a)),
                    n => {
                        return Err(fail(TextError::LinesBetween {
                            lines: n,
                            after: after.as_str().to_owned(),
                            before: before.as_str().to_owned(),
                        }));
                    }
                }
            }
            (None, Some(after)) => {
                let a = find(after, &lines).ok_or_else(|| no_line("after", after))?;
                if !lines.get(a + 1).is_some_and(|l| is_content(l)) {
                    let line = indented(lines.get(a));
                    lines.insert(a + 1, line);
                }
            }
            (Some(before), None) => {
                let b = find(before, &lines).ok_or_else(|| no_line("before", before))?;
                if !(b > 0 && is_content(&lines[b - 1])) {
                    let line = indented(lines.get(b));
                    lines.insert(b, line);
                }
            }
            (None, None) => return Err(fail(TextError::EnsureAnchor)),
        },
        other => return Err(fail(TextError::UnknownMode { mode: other.to_owned(), known: MODES.join(", ") })),
    }
    let mut new = lines.join("\n");
    if !lines.is_empty() && (ends_with_newline || new.len() > text.len()) {
        new.push('\n');
    }
    Ok(if new.trim_end_matches('\n') == text.trim_end_matches('\n') { text.to_owned() } else { new })
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = std::path::PathBuf::from(args::string(args, "path")?);
    let create = args::bool_or(args, "create", false);
    let plan = EditPlan::new(&path, env, args::bool_or(args, "backup", false), NewFile::default(), |text| {
        let text = match text {
            Some(text) => text,
            None if create => "",
            None => {
                return Err(KindError::Text {
                    path: path.clone(),
                    source: TextError::NoFile { help: " (set `create: true` to make it)" },
                });
            }
        };
        let mode = args::string(args, "mode")?;
        let new = edit_line(&path, text, args)?;
        Ok((
            Edited::Text(new),
            vec![format!("line `{}` ({mode}) in {}", args::string(args, "content")?, path.display())],
        ))
    })?;
    Ok(plan.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, load, resolved};

    #[test]
    fn every_mode_edits_then_reports_unchanged() {
        let cases = [
            ("mode: replace\nmatch: 'key='\ncontent: key=2", "a\n  key=1\nb\n", "a\n  key=2\nb\n"),
            ("mode: delete\nmatch: '^key='", "a\nkey=1\nb\n", "a\nb\n"),
            ("mode: insert\nlocation: end\ncontent: z", "a\nb", "a\nb\nz\n"),
            ("mode: insert\nlocation: start\ncontent: z", "a\n", "z\na\n"),
            ("mode: insert\nafter: '^a'\ncontent: z", "a\nb\n", "a\nz\nb\n"),
            ("mode: insert\nbefore: 'b'\ncontent: z", "a\n  b\n", "a\n  z\n  b\n"),
            ("mode: ensure\nafter: '^\\[main\\]'\ncontent: x=1", "[main]\ny=2\n", "[main]\nx=1\ny=2\n"),
            ("mode: ensure\nbefore: '^end'\ncontent: x=1", "start\nend\n", "start\nx=1\nend\n"),
            ("mode: ensure\nafter: '^a'\nbefore: '^c'\ncontent: b", "a\nold\nc\n", "a\nb\nc\n"),
            ("mode: ensure\nafter: '^a'\nbefore: '^c'\ncontent: b", "a\nc\n", "a\nb\nc\n"),
        ];
        for (fields, before, expected) in cases {
            let call = resolved(KIND.name, fields);
            let (first, second, text) = apply_twice(&call, Some(before));
            assert_eq!(text, expected, "{fields}");
            assert_eq!(first.len(), 1, "{fields}: {first:?}");
            assert!(second.is_empty(), "{fields}: {second:?}");
        }
    }

    #[test]
    fn a_line_already_in_place_is_unchanged() {
        for fields in [
            "mode: insert\nlocation: end\ncontent: b",
            "mode: ensure\nafter: '^a'\ncontent: b",
            "mode: delete\ncontent: z",
        ] {
            let call = resolved(KIND.name, fields);
            let (first, _, text) = apply_twice(&call, Some("a\nb\n"));
            assert!(first.is_empty(), "{fields}: {first:?}");
            assert_eq!(text, "a\nb\n");
        }
    }

    #[test]
    fn a_missing_file_fails_unless_created() {
        let call = resolved(KIND.name, "mode: insert\nlocation: end\ncontent: z\ncreate: true");
        let (_, second, text) = apply_twice(&call, None);
        assert_eq!(text, "z\n");
        assert!(second.is_empty());
        let call = resolved(KIND.name, "mode: insert\nlocation: end\ncontent: z");
        let dir = tempfile::tempdir().unwrap();
        let args = call.args.with("path", dir.path().join("none").to_str().unwrap());
        let error = plan(&args, &ApplyEnv::default()).err().unwrap();
        assert!(
            matches!(&error, KindError::Text { path, source: TextError::NoFile { .. } } if path.ends_with("none")),
            "{error}"
        );
        assert!(error.to_string().contains("no such file (set `create: true`"), "{error}");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "x:\n  file.line:\n    name: /etc/x\n    mode: ensur\n    content: a\ny:\n  file.line:\n    name: /etc/y\n    mode: ensure\n    content: a\nz:\n  file.line:\n    name: /etc/z\n    mode: insert\n    content: a\n    location: middle\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].0 == 4 && lines[0].1.contains("ensur"), "{lines:#?}");
        assert!(lines[1].0 == 9 && lines[1].1.contains("before"), "{lines:#?}");
        assert!(lines[2].0 == 16 && lines[2].1.contains("middle"), "{lines:#?}");
    }
}
