//! Salt's text-editing arguments as Rust has them, for the kinds that edit
//! a file in place ([`crate::edit`]) and check those arguments on the
//! master: Python `re` flags, patterns and `re.sub` replacements, the
//! whitespace-tolerant chunk match of `file.append`, the `backup`
//! argument, and the failures of an edit to a text ([`TextError`]). Pure
//! functions of text; nothing here touches a file.

/// Why an edit cannot be made to a text, or its arguments are not what
/// Salt takes (regex flags, patterns, replacements); the kind adds the
/// file ([`crate::kinds::KindError::Text`]).
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("no such file{help}")]
    NoFile { help: &'static str },
    #[error("flags `{flags}` is not a number")]
    FlagsNotANumber { flags: String },
    #[error("flag `{flag}` is not a name")]
    FlagNotAName { flag: String },
    #[error("flag `{flag}` is not one of IGNORECASE, MULTILINE, DOTALL, VERBOSE")]
    UnknownFlag { flag: String },
    #[error("flags `{flags}` is neither a number nor a list of flag names")]
    FlagsShape { flags: String },
    #[error(
        "pattern `{pattern}`: {detail}{}",
        if *unsupported { " (halite's regexes have no look-around or back-references)" } else { "" }
    )]
    Pattern { pattern: String, detail: String, unsupported: bool },
    #[error("replacement `{replacement}`: empty group name in \\g<>")]
    EmptyGroupName { replacement: String },
    #[error("replacement `{replacement}` ends with a lone backslash")]
    LoneBackslash { replacement: String },
    #[error("backup `{value}` is neither a suffix nor false")]
    Backup { value: String },
    #[error("pattern `{pattern}`: {source}")]
    Glob { pattern: String, source: globset::Error },
    #[error("no line matches {anchor} `{pattern}`")]
    NoLine { anchor: &'static str, pattern: String },
    #[error("no line after `{after}` matches before `{before}`")]
    NoLineBetween { after: String, before: String },
    #[error("{lines} lines between `{after}` and `{before}`; ensure keeps exactly one")]
    LinesBetween { lines: usize, after: String, before: String },
    #[error("mode `ensure` needs `before` or `after`")]
    EnsureAnchor,
    #[error("mode `{mode}` is not one of {known}")]
    UnknownMode { mode: String, known: String },
    #[error("the block after `{start}` has no `{end}` line")]
    Unterminated { start: String, end: String },
    #[error("no line matches `{pattern}` to put the block {how}")]
    NoBlockAnchor { pattern: String, how: String },
    #[error("the markers `{start}` and `{end}` were not found (set `append_if_not_found: true` to add the block)")]
    NoMarkers { start: String, end: String },
}

/// The text with a final newline, unless it is empty.
pub fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') { text.to_owned() } else { format!("{text}\n") }
}

/// Salt's `flags` (Python `re` flags, a number or a list of names) as
/// the inline flags of a Rust regex, e.g. `(?m)`. Salt's default for
/// `file.replace` is 8 (MULTILINE).
pub fn regex_flags(flags: &serde_json::Value) -> Result<String, TextError> {
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
        serde_json::Value::Number(n) => {
            bits = n.as_u64().ok_or_else(|| TextError::FlagsNotANumber { flags: n.to_string() })?;
        }
        serde_json::Value::Array(names) => {
            for name in names {
                let name =
                    name.as_str().ok_or_else(|| TextError::FlagNotAName { flag: name.to_string() })?.to_uppercase();
                if IGNORED.contains(&name.as_str()) {
                    continue;
                }
                let (_, bit, _) = NAMED
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .ok_or_else(|| TextError::UnknownFlag { flag: name.clone() })?;
                bits |= bit;
            }
        }
        other => return Err(TextError::FlagsShape { flags: other.to_string() }),
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
pub fn compile(pattern: &str, flags: &str) -> Result<regex::Regex, TextError> {
    regex::Regex::new(&format!("{flags}{pattern}")).map_err(|e| {
        let e = e.to_string();
        TextError::Pattern {
            pattern: pattern.to_owned(),
            detail: e.lines().last().unwrap_or(&e).trim().to_owned(),
            unsupported: e.contains("look-around") || e.contains("backreferences"),
        }
    })
}

/// A Python `re.sub` replacement (`\1`, `\g<1>`, `\g<name>`, `\n`,
/// `\\`) as a Rust regex replacement (`${1}`, `$$` for a dollar sign).
/// With `literal` (Salt's `backslash_literal`) a backslash is itself.
pub fn replacement(python: &str, literal: bool) -> Result<String, TextError> {
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
                        return Err(TextError::EmptyGroupName { replacement: python.to_owned() });
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
                None => return Err(TextError::LoneBackslash { replacement: python.to_owned() }),
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
pub fn backup_wanted(value: Option<&serde_json::Value>) -> Result<bool, TextError> {
    match value {
        None | Some(serde_json::Value::Bool(true) | serde_json::Value::String(_)) => Ok(true),
        Some(serde_json::Value::Bool(false) | serde_json::Value::Null) => Ok(false),
        Some(other) => Err(TextError::Backup { value: other.to_string() }),
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
        assert!(compile(r"(?<=x)y", "").unwrap_err().to_string().contains("look-around"));
    }

    #[test]
    fn chunks_are_found_whatever_their_whitespace() {
        let re = whitespace_split_regex("export  PATH=/opt/bin\nalias ll='ls -l'");
        assert!(re.is_match("x\n  export PATH=/opt/bin\nalias   ll='ls -l'\ny\n"));
        assert!(!re.is_match("export PATH=/opt/bin\n"));
        assert!(!whitespace_split_regex("a b").is_match("xa b\n"));
    }
}
