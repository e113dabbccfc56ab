//! `file.append`: text that must be in a file, appended when it is not
//! (Salt's `file.append`: `text` a string or a list of chunks, each looked
//! for as whole lines whatever its whitespace unless
//! `ignore_whitespace: false`; `makedirs`). The file is made when missing.
//! Read and written through [`crate::edit`].

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, OneOrMany, Plan, Problem, absolute_path, args, string_list};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text;

pub static KIND: Kind = Kind {
    name: "file.append",
    summary: "Text that must be in a file, appended when it is not (each chunk looked for as whole lines).",
    example: "path-profile:\n  file.append:\n    name: /etc/profile.d/opt.sh\n    text:\n      - export PATH=$PATH:/opt/bin\n",
    resolve,
    plan,
    file: None,
};

/// `file.append` and `file.prepend` take the same arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    text: Option<OneOrMany>,
    #[serde(default)]
    makedirs: bool,
    #[serde(default = "yes")]
    ignore_whitespace: bool,
    /// Salt's `file.prepend` only: keep leading comment lines first.
    #[serde(default)]
    header: bool,
}

fn yes() -> bool {
    true
}

/// Resolves `file.append` or `file.prepend` (`kind`).
pub(crate) fn resolve_chunks(state: &Authored<'_>, kind: &str) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(kind)?;
    let path = absolute_path(state, kind, config.path).map_err(|p| vec![p])?;
    let text = config.text.map(OneOrMany::into_vec).unwrap_or_default();
    if text.is_empty() {
        return Err(vec![
            Problem::new(state.at("text"), format!("{kind} `{}`: no `text` given", state.id))
                .help("add `text:` with a line or a list of chunks"),
        ]);
    }
    if config.header && kind == KIND.name {
        return Err(vec![
            Problem::new(state.at("header"), format!("{kind} `{}`: `header` is an argument of file.prepend", state.id))
                .help("remove it"),
        ]);
    }
    Ok(Value::map()
        .with("path", path)
        .with("text", string_list(text))
        .with("makedirs", config.makedirs)
        .with("ignore_whitespace", config.ignore_whitespace)
        .with("header", config.header))
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_chunks(state, KIND.name)
}

/// The chunks not yet in `text`, as Salt looks for them.
pub(crate) fn missing_chunks(text: &str, args: &Value) -> Vec<String> {
    let loose = args::bool_or(args, "ignore_whitespace", true);
    args::strings(args, "text")
        .into_iter()
        .filter(|chunk| {
            if loose { !text::whitespace_split_regex(chunk).is_match(text) } else { !text.contains(chunk.as_str()) }
        })
        .collect()
}

/// Plans `file.append` or `file.prepend`; `place` puts the missing chunks'
/// lines into the text.
pub(crate) fn plan_chunks(
    args: &Value,
    env: &ApplyEnv,
    verb: &'static str,
    place: fn(&str, &str, &Value) -> String,
) -> Result<Box<dyn Plan>, KindError> {
    let path = std::path::PathBuf::from(args::string(args, "path")?);
    let new_file = NewFile { makedirs: args::bool_or(args, "makedirs", false), ..NewFile::default() };
    let plan = EditPlan::new(&path, env, true, new_file, |text| {
        let text = text.unwrap_or_default();
        let missing = missing_chunks(text, args);
        if missing.is_empty() {
            return Ok((Edited::Text(text.to_owned()), Vec::new()));
        }
        let lines: String = missing.iter().flat_map(|chunk| chunk.lines()).map(|l| format!("{l}\n")).collect();
        let what = missing.iter().map(|chunk| format!("{verb} `{}`", chunk.trim_end())).collect();
        Ok((Edited::Text(place(text, &lines, args)), what))
    })?;
    Ok(plan.boxed())
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_chunks(args, env, "appended", |text, lines, _| format!("{}{lines}", text::with_newline(text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, load, resolved};

    #[test]
    fn appends_what_is_missing_then_reports_unchanged() {
        let call = resolved(KIND.name, "text:\n  - 'export  PATH=/opt/bin'\n  - |\n    a\n    b\n  - present");
        let (first, second, text) = apply_twice(&call, Some("present\nexport PATH=/opt/bin"));
        assert_eq!(text, "present\nexport PATH=/opt/bin\na\nb\n");
        assert_eq!(first, ["appended `a\nb`"]);
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn a_missing_file_is_made() {
        let call = resolved(KIND.name, "text: hello");
        let (first, second, text) = apply_twice(&call, None);
        assert_eq!(text, "hello\n");
        assert!(first[0].starts_with("created"), "{first:?}");
        assert!(second.is_empty());
    }

    #[test]
    fn exact_matching_when_whitespace_counts() {
        let call = resolved(KIND.name, "text: 'a  b'\nignore_whitespace: false");
        let (_, _, text) = apply_twice(&call, Some("a b\n"));
        assert_eq!(text, "a b\na  b\n");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load(
            "x:\n  file.append:\n    name: /etc/x\n    txt: a\ny:\n  file.append:\n    name: /etc/y\n    header: true\n    text: a\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].0 == 4 && lines[0].1.contains("txt"), "{lines:#?}");
        assert!(lines[1].0 == 8 && lines[1].1.contains("header"), "{lines:#?}");
    }
}
