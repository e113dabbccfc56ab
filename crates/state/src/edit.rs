//! The plan of every kind that edits a file's text in place
//! (`file.replace`, `file.append`, `file.prepend`, `file.blockreplace`,
//! `file.line`, and the system kinds that keep a line in a file): the
//! current content read through one descriptor ([`halite_fs::Editable`]),
//! the kind's pure edit applied to it, a unified diff of the difference,
//! and the atomic write of exactly that edit. A kind only supplies the
//! edit; reading, diffing, backing up and writing are here, once.

use std::path::{Path, PathBuf};

use halite_fs::{Editable, FsError, Perms};

use crate::env::ApplyEnv;
use crate::kinds::Plan;

/// Files larger than this are not edited in place (the state fails).
pub const EDIT_LIMIT: u64 = 16 * 1024 * 1024;

/// Why a file could not be planned for an edit; names the file.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path} is not UTF-8 text; halite edits only text in place")]
    NotText { path: PathBuf },
    #[error("{path}: {message}")]
    Edit { path: PathBuf, message: String },
}

/// What a kind's edit decided, given the current text (`None`: no file).
#[derive(Debug, PartialEq, Eq)]
pub enum Edited {
    /// The text as it should be; equal to the current text when nothing
    /// is to change.
    Text(String),
    /// Leave the file as it is, or absent (`file.replace` of a missing
    /// file with `ignore_if_missing`).
    Keep,
}

/// How a file the edit creates is made.
#[derive(Debug, Clone, Copy)]
pub struct NewFile {
    pub perms: Perms,
    pub makedirs: bool,
}

impl Default for NewFile {
    fn default() -> Self {
        NewFile { perms: Perms::mode(0o644), makedirs: false }
    }
}

/// An edit planned on one file.
#[derive(Debug)]
pub struct EditPlan {
    file: Editable,
    /// The new content; `None` when nothing changes.
    new: Option<String>,
    /// What the change is, in words (one line per change).
    what: Vec<String>,
    new_file: NewFile,
    /// Where to keep the replaced content (the agent's backup directory),
    /// unless the state says `backup: false`.
    backup: Option<(PathBuf, usize, u64)>,
}

impl EditPlan {
    /// Reads `path` and applies `edit` to its text. `what` describes the
    /// change when there is one. A state's `backup: false` passes
    /// `backup = false`.
    pub fn new(
        path: &Path,
        env: &ApplyEnv,
        backup: bool,
        new_file: NewFile,
        edit: impl FnOnce(Option<&str>) -> Result<(Edited, Vec<String>), String>,
    ) -> Result<EditPlan, EditError> {
        let file = Editable::read(path, EDIT_LIMIT)?;
        let current = match file.content() {
            Some(bytes) => {
                Some(std::str::from_utf8(bytes).map_err(|_| EditError::NotText { path: path.to_path_buf() })?)
            }
            None => None,
        };
        let (edited, what) = edit(current).map_err(|message| EditError::Edit { path: path.to_path_buf(), message })?;
        let new = match edited {
            Edited::Text(text) if Some(text.as_str()) != current => Some(text),
            _ => None,
        };
        let backup = env.backup_dir.clone().filter(|_| backup).map(|dir| (dir, env.backups_kept, env.backup_max_bytes));
        Ok(EditPlan { file, new, what, new_file, backup })
    }

    /// The plan as a kind's `plan` returns it.
    pub fn boxed(self) -> Box<dyn Plan> {
        Box::new(self)
    }
}

impl Plan for EditPlan {
    fn changes(&self) -> Vec<String> {
        match (&self.new, self.file.content()) {
            (None, _) => Vec::new(),
            (Some(_), None) => {
                let mut changes = vec![format!("created {}", self.file.path().display())];
                changes.extend(self.what.iter().cloned());
                changes
            }
            (Some(_), Some(_)) if self.what.is_empty() => vec![format!("edited {}", self.file.path().display())],
            (Some(_), Some(_)) => self.what.clone(),
        }
    }

    fn diff(&self) -> Option<String> {
        let new = self.new.as_ref()?;
        let old = self.file.content().unwrap_or_default();
        Some(crate::kinds::file_managed::unified_diff(self.file.path(), old, new.as_bytes()))
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, String> {
        let Some(new) = &self.new else { return Ok(Vec::new()) };
        let mut changes = self.changes();
        if let (Some((dir, kept, max)), Some(old)) = (&self.backup, self.file.content())
            && old.len() as u64 <= *max
        {
            let backup = crate::backup::save(dir, self.file.path(), &mut &old[..], *kept)?;
            changes.push(format!("previous content kept in {}", backup.display()));
        }
        self.file.replace(new.as_bytes(), self.new_file.perms, self.new_file.makedirs).map_err(|e| e.to_string())?;
        Ok(changes)
    }
}

/// The text with a final newline, unless it is empty.
pub fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') { text.to_owned() } else { format!("{text}\n") }
}

/// Salt's `flags` (Python `re` flags, a number or a list of names) as
/// the inline flags of a Rust regex, e.g. `(?m)`. Salt's default for
/// `file.replace` is 8 (MULTILINE).
pub fn regex_flags(flags: &serde_json::Value) -> Result<String, String> {
    const NAMED: &[(&str, u64, char)] = &[
        ("IGNORECASE", 2, 'i'),
        ("I", 2, 'i'),
        ("MULTILINE", 8, 'm'),
        ("M", 8, 'm'),
        ("DOTALL", 16, 's'),
        ("S", 16, 's'),
        ("VERBOSE", 64, 'x'),
        ("X", 64, 'x'),
    ];
    // LOCALE (4) and UNICODE (32) change nothing for a Rust regex.
    const IGNORED: &[&str] = &["LOCALE", "L", "UNICODE", "U"];
    let mut bits = 0u64;
    match flags {
        serde_json::Value::Number(n) => bits = n.as_u64().ok_or_else(|| format!("flags `{n}` is not a number"))?,
        serde_json::Value::Array(names) => {
            for name in names {
                let name = name.as_str().ok_or_else(|| format!("flag `{name}` is not a name"))?.to_uppercase();
                if IGNORED.contains(&name.as_str()) {
                    continue;
                }
                let (_, bit, _) = NAMED
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .ok_or_else(|| format!("flag `{name}` is not one of IGNORECASE, MULTILINE, DOTALL, VERBOSE"))?;
                bits |= bit;
            }
        }
        other => return Err(format!("flags `{other}` is neither a number nor a list of flag names")),
    }
    let mut inline = String::new();
    for (_, bit, letter) in NAMED.iter().step_by(2) {
        if bits & bit != 0 {
            inline.push(*letter);
        }
    }
    Ok(if inline.is_empty() { String::new() } else { format!("(?{inline})") })
}

/// A Python regex as Salt writes it, compiled with inline `flags`; the
/// error says what Rust's regex does not have (look-around,
/// back-references).
pub fn compile(pattern: &str, flags: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("{flags}{pattern}")).map_err(|e| {
        let e = e.to_string();
        let detail = e.lines().last().unwrap_or(&e).trim().to_owned();
        if e.contains("look-around") || e.contains("backreferences") {
            format!("pattern `{pattern}`: {detail} (halite's regexes have no look-around or back-references)")
        } else {
            format!("pattern `{pattern}`: {detail}")
        }
    })
}

/// A Python `re.sub` replacement (`\1`, `\g<1>`, `\g<name>`, `\n`,
/// `\\`) as a Rust regex replacement (`${1}`, `$$` for a dollar sign).
/// With `literal` (Salt's `backslash_literal`) a backslash is itself.
pub fn replacement(python: &str, literal: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = python.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' if literal => out.push('\\'),
            '\\' => match chars.next() {
                Some(d @ '0'..='9') => {
                    let mut group = d.to_string();
                    if let Some(e @ '0'..='9') = chars.peek().copied() {
                        group.push(e);
                        chars.next();
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('g') if chars.peek() == Some(&'<') => {
                    chars.next();
                    let name: String = chars.by_ref().take_while(|c| *c != '>').collect();
                    if name.is_empty() {
                        return Err(format!("replacement `{python}`: empty group name in \\g<>"));
                    }
                    out.push_str(&format!("${{{name}}}"));
                }
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err(format!("replacement `{python}` ends with a lone backslash")),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Salt's `build_whitespace_split_regex`: `chunk` found as whole lines,
/// however the whitespace between its words differs. `file.append` and
/// `file.prepend` add a chunk only when this finds nothing.
pub fn whitespace_split_regex(chunk: &str) -> regex::Regex {
    let mut pattern = String::new();
    for line in chunk.lines() {
        let words: Vec<String> = line.split_whitespace().map(regex::escape).collect();
        pattern.push_str(&format!(r"(?:[\s]+)?{}(?:[\s]+)?", words.join(r"(?:[\s]+)?")));
    }
    // Escaped words only: always a valid pattern.
    regex::Regex::new(&format!("(?m)^{pattern}$")).unwrap_or_else(|_| regex::Regex::new("$^").expect("valid"))
}

/// Salt's `backup` argument of the edit kinds: `false` keeps no backup;
/// a suffix (`.bak`, Salt's default) or `true` keeps one, in the agent's
/// backup directory rather than beside the file.
pub fn backup_wanted(value: Option<&serde_json::Value>) -> Result<bool, String> {
    match value {
        None | Some(serde_json::Value::Bool(true) | serde_json::Value::String(_)) => Ok(true),
        Some(serde_json::Value::Bool(false) | serde_json::Value::Null) => Ok(false),
        Some(other) => Err(format!("backup `{other}` is neither a suffix nor false")),
    }
}

/// The text split into lines, each keeping its `\n` (the last may lack it).
pub fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_read_only_and_apply_exactly_the_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        std::fs::write(&path, "a\n").unwrap();
        let env = ApplyEnv { backup_dir: Some(dir.path().join("backup")), ..ApplyEnv::default() };
        let edit = |text: Option<&str>| Ok((Edited::Text(format!("{}b\n", text.unwrap())), vec!["added b".into()]));
        let plan = EditPlan::new(&path, &env, true, NewFile::default(), edit).unwrap();
        assert_eq!(plan.changes(), ["added b"]);
        assert!(plan.diff().unwrap().contains("+b\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n", "planning wrote");
        let done = Box::new(plan).apply().unwrap();
        assert!(done[1].starts_with("previous content kept in"), "{done:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        let same = |text: Option<&str>| Ok((Edited::Text(text.unwrap().to_owned()), vec!["nothing".into()]));
        let plan = EditPlan::new(&path, &env, true, NewFile::default(), same).unwrap();
        assert!(plan.changes().is_empty() && plan.diff().is_none());
    }

    #[test]
    fn python_regex_forms_translate() {
        let cases = [
            (serde_json::json!(8), "(?m)"),
            (serde_json::json!(0), ""),
            (serde_json::json!(["IGNORECASE", "multiline", "UNICODE"]), "(?im)"),
            (serde_json::json!(26), "(?ims)"),
        ];
        for (flags, inline) in cases {
            assert_eq!(regex_flags(&flags).unwrap(), inline, "{flags}");
        }
        assert!(regex_flags(&serde_json::json!(["NOPE"])).is_err());
        let replacements = [
            (r"\1=\g<2> \g<name>", false, "${1}=${2} ${name}"),
            (r"cost $5\n", false, "cost $$5\n"),
            (r"a\\b", false, r"a\b"),
            (r"a\1", true, r"a\1"),
        ];
        for (python, literal, rust) in replacements {
            assert_eq!(replacement(python, literal).unwrap(), rust, "{python}");
        }
        let re = compile(r"^(\w+)=(.*)$", "(?m)").unwrap();
        assert_eq!(re.replace_all("a=1\nb=2\n", replacement(r"\1: \2", false).unwrap().as_str()), "a: 1\nb: 2\n");
        assert!(compile(r"(?<=x)y", "").unwrap_err().contains("look-around"));
    }

    #[test]
    fn chunks_are_found_whatever_their_whitespace() {
        let re = whitespace_split_regex("export  PATH=/opt/bin\nalias ll='ls -l'");
        assert!(re.is_match("x\n  export PATH=/opt/bin\nalias   ll='ls -l'\ny\n"));
        assert!(!re.is_match("export PATH=/opt/bin\n"));
        assert!(!whitespace_split_regex("a b").is_match("xa b\n"));
    }

    #[test]
    fn binary_content_is_not_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let error =
            EditPlan::new(&path, &ApplyEnv::default(), false, NewFile::default(), |_| Ok((Edited::Keep, vec![])))
                .unwrap_err();
        assert!(matches!(error, EditError::NotText { .. }), "{error}");
    }
}
