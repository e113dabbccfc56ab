//! `file.blockreplace`: the lines between two marker lines replaced by
//! `content` (Salt's `file.blockreplace`: `marker_start`, `marker_end`,
//! `content`, `append_if_not_found`, `prepend_if_not_found`,
//! `insert_before_match`, `insert_after_match`, `append_newline`,
//! `backup`). A marker line is any line containing the marker; the
//! marker lines themselves are kept as they are. Read and written through
//! [`crate::edit`].

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text::{self, TextError};

pub static KIND: Kind = Kind {
    name: "file.blockreplace",
    summary: "The lines between two marker lines replaced by the given content; the block added when not found, if asked.",
    example: "hosts-block:\n  file.blockreplace:\n    name: /etc/hosts\n    marker_start: '# BEGIN halite'\n    marker_end: '# END halite'\n    content: |\n      10.0.0.5 db\n    append_if_not_found: true\n",
    resolve,
    plan,
    file: None,
};

const MARKER_START: &str = "#-- start managed zone --";
const MARKER_END: &str = "#-- end managed zone --";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    marker_start: Option<String>,
    marker_end: Option<String>,
    #[serde(default)]
    content: String,
    #[serde(default)]
    append_if_not_found: bool,
    #[serde(default)]
    prepend_if_not_found: bool,
    insert_before_match: Option<String>,
    insert_after_match: Option<String>,
    /// `None`: a newline only when the content lacks one.
    append_newline: Option<bool>,
    backup: Option<serde_json::Value>,
    /// Diffs are always shown.
    #[allow(dead_code)]
    show_changes: Option<bool>,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    let mut problems = Vec::new();
    let problem = |key: &str, message: String| {
        Problem::new(state.at(key), format!("file.blockreplace `{}`: {message}", state.id))
    };
    let start = config.marker_start.unwrap_or_else(|| MARKER_START.into());
    let end = config.marker_end.unwrap_or_else(|| MARKER_END.into());
    for (key, marker) in [("marker_start", &start), ("marker_end", &end)] {
        if marker.trim().is_empty() || marker.contains('\n') {
            problems.push(problem(key, format!("{key} must be one non-empty line")));
        }
    }
    let wanted = [
        config.append_if_not_found,
        config.prepend_if_not_found,
        config.insert_before_match.is_some(),
        config.insert_after_match.is_some(),
    ];
    if wanted.iter().filter(|w| **w).count() > 1 {
        problems.push(
            problem(
                "content",
                "more than one of append_if_not_found, prepend_if_not_found, insert_before_match, insert_after_match"
                    .into(),
            )
            .help("keep one way to add the block"),
        );
    }
    for key in ["insert_before_match", "insert_after_match"] {
        let value = if key == "insert_before_match" { &config.insert_before_match } else { &config.insert_after_match };
        if let Some(pattern) = value
            && let Err(e) = text::compile(pattern, "")
        {
            problems.push(problem(key, e.to_string()));
        }
    }
    let backup = text::backup_wanted(config.backup.as_ref()).unwrap_or_else(|e| {
        problems.push(problem("backup", e.to_string()).help("write `backup: false` or leave it out"));
        true
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let content = match config.append_newline {
        Some(true) => format!("{}\n", config.content),
        Some(false) => config.content,
        None => text::with_newline(&config.content),
    };
    let mut resolved = Value::map()
        .with("path", path)
        .with("marker_start", start)
        .with("marker_end", end)
        .with("content", content)
        .with("backup", backup);
    if config.append_if_not_found {
        resolved = resolved.with("if_not_found", "append");
    } else if config.prepend_if_not_found {
        resolved = resolved.with("if_not_found", "prepend");
    } else if let Some(pattern) = config.insert_before_match {
        resolved = resolved.with("if_not_found", "before").with("match", pattern);
    } else if let Some(pattern) = config.insert_after_match {
        resolved = resolved.with("if_not_found", "after").with("match", pattern);
    }
    Ok(resolved)
}

/// The edit, pure.
fn replace_block(path: &std::path::Path, text: &str, args: &Value) -> Result<String, KindError> {
    let fail = |source| KindError::Text { path: path.to_owned(), source };
    let (start, end) = (args::string(args, "marker_start")?, args::string(args, "marker_end")?);
    let content = args::string(args, "content")?;
    let lines = text::lines(text);
    if let Some(first) = lines.iter().position(|l| l.contains(start)) {
        let Some(last) = lines[first + 1..].iter().position(|l| l.contains(end)).map(|i| i + first + 1) else {
            return Err(fail(TextError::Unterminated { start: start.to_owned(), end: end.to_owned() }));
        };
        let mut new: String = lines[..=first].concat();
        if !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(content);
        new.push_str(&lines[last..].concat());
        return Ok(new);
    }
    let block = format!("{start}\n{content}{end}\n");
    let at = match args::opt_string(args, "if_not_found") {
        Some("append") => lines.len(),
        Some("prepend") => 0,
        Some(how @ ("before" | "after")) => {
            let pattern = text::compile(args::string(args, "match")?, "").map_err(fail)?;
            let found = lines.iter().position(|l| pattern.is_match(l.trim_end_matches('\n')));
            let Some(found) = found else {
                return Err(fail(TextError::NoBlockAnchor {
                    pattern: pattern.as_str().to_owned(),
                    how: how.to_owned(),
                }));
            };
            if how == "before" { found } else { found + 1 }
        }
        _ => {
            return Err(fail(TextError::NoMarkers { start: start.to_owned(), end: end.to_owned() }));
        }
    };
    let mut head = lines[..at].concat();
    if !head.is_empty() && !head.ends_with('\n') {
        head.push('\n');
    }
    Ok(format!("{head}{block}{}", lines[at..].concat()))
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = std::path::PathBuf::from(args::string(args, "path")?);
    let plan = EditPlan::new(&path, env, args::bool_or(args, "backup", true), NewFile::default(), |text| {
        let text =
            text.ok_or_else(|| KindError::Text { path: path.clone(), source: TextError::NoFile { help: "" } })?;
        let new = replace_block(&path, text, args)?;
        Ok((Edited::Text(new), vec![format!("block `{}` in {}", args::string(args, "marker_start")?, path.display())]))
    })?;
    Ok(plan.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, load, resolved};

    #[test]
    fn replaces_the_block_then_reports_unchanged() {
        let call = resolved(KIND.name, "marker_start: '# BEGIN'\nmarker_end: '# END'\ncontent: |\n  new 1\n  new 2");
        let (first, second, text) = apply_twice(&call, Some("a\n# BEGIN x\nold\n# END x\nb\n"));
        assert_eq!(text, "a\n# BEGIN x\nnew 1\nnew 2\n# END x\nb\n");
        assert_eq!(first.len(), 1);
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn adds_the_block_where_asked_when_not_found() {
        let cases = [
            ("append_if_not_found: true", "a\nb\n#-- start managed zone --\nx\n#-- end managed zone --\n"),
            ("prepend_if_not_found: true", "#-- start managed zone --\nx\n#-- end managed zone --\na\nb"),
            ("insert_after_match: '^a$'", "a\n#-- start managed zone --\nx\n#-- end managed zone --\nb"),
            ("insert_before_match: '^b'", "a\n#-- start managed zone --\nx\n#-- end managed zone --\nb"),
        ];
        for (how, expected) in cases {
            let call = resolved(KIND.name, &format!("content: x\n{how}"));
            let (_, second, text) = apply_twice(&call, Some("a\nb"));
            assert_eq!(text, expected, "{how}");
            assert!(second.is_empty(), "{how}: {second:?}");
        }
    }

    #[test]
    fn markers_not_found_or_unterminated_fail() {
        let args = resolved(KIND.name, "content: x").args;
        let path = std::path::Path::new("/etc/conf");
        let error = replace_block(path, "a\n", &args).unwrap_err().to_string();
        assert!(error.starts_with("/etc/conf: ") && error.contains("were not found"), "{error}");
        let error = replace_block(path, "#-- start managed zone --\nx\n", &args).unwrap_err().to_string();
        assert!(error.contains("has no"), "{error}");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "x:\n  file.blockreplace:\n    name: /etc/x\n    append_if_not_found: true\n    insert_after_match: '(?<=a)'\n    content: x\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines.iter().any(|(l, m)| *l == 6 && m.contains("more than one")), "{lines:#?}");
        assert!(lines.iter().any(|(l, m)| *l == 5 && m.contains("look-around")), "{lines:#?}");
    }
}
