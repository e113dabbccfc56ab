//! `file.recurse`: a directory of the state tree copied to a directory on
//! the agent (Salt's `file.recurse`: `source`, `clean`, `include_pat`,
//! `exclude_pat`, `file_mode` (or `keep`), `dir_mode`, `makedirs`,
//! `user`, `group`, `include_empty`, `maxdepth`, `template: jinja` with
//! `context`/`defaults`: every text file rendered per agent by the master,
//! as `file.managed`'s template is, and syntax-checked when the tree
//! loads).
//!
//! The master reads the tree's directory when it loads the tree (no link
//! leading out of the tree followed; at most [`MAX_BYTES`] in all), so the
//! agent gets every file's content in the call. On the agent every step
//! goes through `halite_fs` descriptors: each directory opened
//! `O_NOFOLLOW` in its parent (a link in the target tree fails the state,
//! never followed), files replaced with the one atomic write, modes set
//! with `fchmod`, `clean` removing what the source does not have without
//! following a link. Patterns are Salt's: a glob matched against the path
//! relative to the source (`*` also crosses `/`), or a regex after `E@`;
//! with `clean`, files matching `exclude_pat` are kept.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use halite_fs::{Dir, FileType, Perms};
use halite_proto::{Sha256, Value};
use serde::Deserialize;

use super::file_managed::{DIFF_LIMIT, lookup_group, lookup_user, parse_mode, unified_diff};
use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args, string_list};
use crate::env::ApplyEnv;
use crate::text::TextError;

pub static KIND: Kind = Kind {
    name: "file.recurse",
    summary: "A directory of the state tree copied to a directory on the agent; `clean` removes what the source does not have.",
    example: "site:\n  file.recurse:\n    name: /srv/www\n    source: salt://files/www\n    clean: true\n    exclude_pat: '*.swp'\n    file_mode: \"0644\"\n    dir_mode: \"0755\"\n",
    resolve,
    plan,
    file: None,
};

/// The most content one `file.recurse` carries to an agent.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    source: Option<String>,
    #[serde(default)]
    clean: bool,
    include_pat: Option<super::OneOrMany>,
    exclude_pat: Option<super::OneOrMany>,
    file_mode: Option<serde_json::Value>,
    dir_mode: Option<serde_json::Value>,
    #[serde(default)]
    makedirs: bool,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    include_empty: bool,
    maxdepth: Option<usize>,
    /// `jinja`: every (UTF-8) file is a template, rendered per agent by
    /// the master as `file.managed`'s is.
    template: Option<String>,
    /// Salt's template variables: `defaults` overridden by `context`.
    context: Option<serde_json::Map<String, serde_json::Value>>,
    defaults: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Salt's include/exclude patterns: globs, or regexes after `E@`.
#[derive(Debug)]
struct Patterns {
    globs: globset::GlobSet,
    regexes: Vec<regex::Regex>,
}

impl Patterns {
    fn new(patterns: &[String]) -> Result<Patterns, TextError> {
        let mut globs = globset::GlobSetBuilder::new();
        let mut regexes = Vec::new();
        for pattern in patterns {
            match pattern.strip_prefix("E@") {
                Some(re) => regexes.push(crate::text::compile(re, "")?),
                None => {
                    globs.add(
                        globset::Glob::new(pattern)
                            .map_err(|source| TextError::Glob { pattern: pattern.clone(), source })?,
                    );
                }
            }
        }
        let globs = globs.build().map_err(|source| TextError::Glob { pattern: patterns.join(", "), source })?;
        Ok(Patterns { globs, regexes })
    }

    fn is_match(&self, relative: &str) -> bool {
        self.globs.is_match(relative) || self.regexes.iter().any(|re| re.is_match(relative))
    }
}

/// Salt's `check_include_exclude`.
fn wanted(relative: &str, include: &[String], exclude: &[String]) -> bool {
    let matches = |patterns: &[String]| Patterns::new(patterns).is_ok_and(|p| p.is_match(relative));
    (include.is_empty() || matches(include)) && (exclude.is_empty() || !matches(exclude))
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("file.recurse `{}`: {message}", state.id));
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    let include = config.include_pat.map(super::OneOrMany::into_vec).unwrap_or_default();
    let exclude = config.exclude_pat.map(super::OneOrMany::into_vec).unwrap_or_default();
    for (key, patterns) in [("include_pat", &include), ("exclude_pat", &exclude)] {
        if let Err(e) = Patterns::new(patterns) {
            problems.push(problem(key, e.to_string()).help("a glob (`*.conf`) or a regex after `E@` (`E@\\.conf$`)"));
        }
    }
    match config.template.as_deref() {
        None | Some("jinja") => {}
        Some(engine) => problems.push(
            problem("template", format!("template engine `{engine}` is not supported"))
                .help("halite templates are Jinja (minijinja): write `template: jinja`"),
        ),
    }
    if config.template.is_none() {
        for key in ["context", "defaults"] {
            if state.fields.get(key).is_some() {
                problems.push(
                    problem(key, format!("`{key}` without `template: jinja`"))
                        .help("add `template: jinja`, or remove it: without a template nothing reads it"),
                );
            }
        }
    }
    let keep_mode = config.file_mode.as_ref().is_some_and(|m| m.as_str() == Some("keep"));
    let mut modes = [None, None];
    for (i, (key, value)) in [("file_mode", &config.file_mode), ("dir_mode", &config.dir_mode)].into_iter().enumerate()
    {
        match value.as_ref().filter(|_| !(i == 0 && keep_mode)).map(parse_mode).transpose() {
            Ok(mode) => modes[i] = mode,
            Err(e) => problems
                .push(problem(key, e.to_string()).help("write the mode in octal as a quoted string, e.g. \"0644\"")),
        }
    }
    let source = config.source.unwrap_or_default();
    let relative = source.strip_prefix("salt://").unwrap_or(&source).trim_end_matches('/');
    let (files, dirs) = match crate::paths::dir_in_tree(state.tree_root, relative) {
        Err(e) => {
            problems.push(
                problem("source", e.to_string()).help("name a directory of the state tree, e.g. salt://files/www"),
            );
            (Vec::new(), Vec::new())
        }
        Ok(top) => match read_tree(&top, config.maxdepth, &include, &exclude, config.include_empty, keep_mode) {
            Ok(found) => found,
            Err(e) => {
                problems.push(problem("source", e.to_string()));
                (Vec::new(), Vec::new())
            }
        },
    };
    let mut variables = config.defaults.clone().unwrap_or_default();
    variables.extend(config.context.clone().unwrap_or_default());
    if config.template.as_deref() == Some("jinja") {
        // Each file's syntax is checked now, at its own line.
        let names: Vec<String> = variables.keys().cloned().collect();
        for file in &files {
            let (Some(name), Some(Value::Bytes(contents))) =
                (file.get("name").and_then(Value::as_str), file.get("contents"))
            else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(contents) else { continue };
            if let Err(error) = crate::template::check_with(text, &names) {
                let line = error.line.unwrap_or(0) as u64;
                problems.push(
                    Problem::new(
                        Some(crate::diag::Location::new(line, 1)),
                        format!("file.recurse `{}`: template {}", state.id, error.message),
                    )
                    .in_file(state.tree_root.join(relative).join(name))
                    .help("fix the Jinja syntax at that line"),
                );
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("path", path)
        .with("files", Value::List(files))
        .with("dirs", string_list(dirs))
        .with("clean", config.clean)
        .with("makedirs", config.makedirs)
        .with("exclude_pat", string_list(exclude));
    for (key, mode) in [("file_mode", modes[0]), ("dir_mode", modes[1])] {
        if let Some(mode) = mode {
            resolved = resolved.with(key, mode);
        }
    }
    for (key, value) in [("user", config.user), ("group", config.group)] {
        if let Some(value) = value {
            resolved = resolved.with(key, value);
        }
    }
    if config.template.is_some() {
        resolved = resolved.with("template", "jinja");
        if !variables.is_empty() {
            resolved = resolved.with("context", Value::from_json(&serde_json::Value::Object(variables)));
        }
    }
    Ok(resolved)
}

/// The contents the master renders when `template: jinja` is set: each
/// file's that is UTF-8 text (a binary file is copied as it is), with its
/// name relative to the source.
pub fn templates_mut(args: &mut Value) -> Vec<(String, &mut Vec<u8>)> {
    let Value::Map(map) = args else { return Vec::new() };
    let Some(Value::List(files)) = map.get_mut("files") else { return Vec::new() };
    files
        .iter_mut()
        .filter_map(|file| {
            let Value::Map(file) = file else { return None };
            let name = file.get("name").and_then(Value::as_str).map(str::to_owned)?;
            match file.get_mut("contents") {
                Some(Value::Bytes(contents)) if std::str::from_utf8(contents).is_ok() => Some((name, contents)),
                _ => None,
            }
        })
        .collect()
}

/// The files (relative path, content, mode when kept) and directories
/// under `top`, sorted. Links that stay inside the tree are read as the
/// file they lead to; the caller checked `top` is inside the tree.
fn read_tree(
    top: &Path,
    maxdepth: Option<usize>,
    include: &[String],
    exclude: &[String],
    include_empty: bool,
    keep_mode: bool,
) -> Result<(Vec<Value>, Vec<String>), KindError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut dirs = BTreeSet::new();
    let mut total = 0u64;
    let mut pending = vec![(top.to_path_buf(), 0usize)];
    if !top.is_dir() {
        return Err(KindError::SourceNotADirectory { path: top.to_path_buf() });
    }
    while let Some((dir, depth)) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .and_then(Iterator::collect::<Result<_, _>>)
            .map_err(|source| KindError::Read { path: dir.clone(), source })?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let full = entry.path();
            let relative = full.strip_prefix(top).unwrap_or(&full).to_string_lossy().into_owned();
            // A link must stay in the tree (its canonical path under the top).
            let unreadable = |source| KindError::Read { path: full.clone(), source };
            let real = full.canonicalize().map_err(unreadable)?;
            if !real.starts_with(top) {
                return Err(KindError::OutsideSource { path: full });
            }
            let meta = std::fs::metadata(&real).map_err(unreadable)?;
            if meta.is_dir() {
                if maxdepth.is_none_or(|max| depth < max) {
                    if include_empty && wanted(&relative, include, exclude) {
                        dirs.insert(relative.clone());
                    }
                    pending.push((full, depth + 1));
                }
            } else if meta.is_file() && wanted(&relative, include, exclude) {
                total += meta.len();
                if total > MAX_BYTES {
                    return Err(KindError::SourceTooLarge { path: top.to_path_buf(), limit: MAX_BYTES });
                }
                // One name only, read without blocking: the tree's rule for
                // every file it gives (`paths::in_tree`).
                let real = crate::paths::in_tree(top, &relative)?;
                let content = crate::paths::read_tree_file(&real).map_err(unreadable)?;
                let mut file = Value::map().with("name", relative.clone()).with("contents", content);
                if keep_mode {
                    file = file.with("mode", meta.permissions().mode() & 0o7777);
                }
                let mut parent = Path::new(&relative).parent();
                while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                    dirs.insert(p.to_string_lossy().into_owned());
                    parent = p.parent();
                }
                files.push(file);
            }
        }
    }
    files.sort_by(|a, b| a.get("name").and_then(Value::as_str).cmp(&b.get("name").and_then(Value::as_str)));
    Ok((files, dirs.into_iter().collect()))
}

/// One step of the plan, relative to the target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    MakeDir(PathBuf),
    DirMode(PathBuf, u32),
    /// The index of the file in `files`.
    Write(PathBuf, usize),
    FileMode(PathBuf, u32),
    Owner(PathBuf),
    Remove(PathBuf, &'static str),
}

#[derive(Debug)]
struct RecursePlan {
    path: PathBuf,
    files: Vec<(PathBuf, Vec<u8>, u32)>,
    steps: Vec<Step>,
    /// Unified diffs of the text files that change.
    diffs: Vec<String>,
    dir_mode: u32,
    owner: (Option<u32>, Option<u32>),
    makedirs: bool,
}

/// Opens `relative` under `top` one directory at a time, no link followed.
fn open_under(top: &Dir, relative: &Path) -> Result<Option<Dir>, KindError> {
    let mut dir = top.open_dir(OsStr::new("."));
    for part in relative.iter() {
        dir = match dir? {
            Some(d) => d.open_dir(part),
            None => return Ok(None),
        };
    }
    Ok(dir?)
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    if args.get("template").is_some() {
        return Err(KindError::NotRendered { path });
    }
    let file_mode = args::opt_u32(args, "file_mode");
    let dir_mode = args::opt_u32(args, "dir_mode");
    let owner = (
        args::opt_string(args, "user").map(lookup_user).transpose()?,
        args::opt_string(args, "group").map(lookup_group).transpose()?,
    );
    let mut files = Vec::new();
    if let Some(Value::List(items)) = args.get("files") {
        for item in items {
            let name = PathBuf::from(args::string(item, "name")?);
            let contents = args::bytes(item, "contents")?.to_vec();
            let mode = args::opt_u32(item, "mode").or(file_mode).unwrap_or(0o644);
            files.push((name, contents, mode));
        }
    }
    let dirs: BTreeSet<PathBuf> = args::strings(args, "dirs").into_iter().map(PathBuf::from).collect();
    let top = match halite_fs::open_parent(&path, None) {
        Ok((parent, name)) => parent.open_dir(&name)?,
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let owner_differs = |uid: u32, gid: u32| owner.0.is_some_and(|u| u != uid) || owner.1.is_some_and(|g| g != gid);
    let mut steps = Vec::new();
    let mut diffs = Vec::new();
    let Some(top) = top else {
        steps.push(Step::MakeDir(PathBuf::new()));
        steps.extend(dirs.iter().map(|d| Step::MakeDir(d.clone())));
        steps.extend((0..files.len()).map(|i| Step::Write(files[i].0.clone(), i)));
        return Ok(Box::new(RecursePlan {
            path,
            files,
            steps,
            diffs,
            dir_mode: dir_mode.unwrap_or(0o755),
            owner,
            makedirs: args::bool_or(args, "makedirs", false),
        }));
    };
    for dir in std::iter::once(PathBuf::new()).chain(dirs.iter().cloned()) {
        match open_under(&top, &dir)? {
            None => steps.push(Step::MakeDir(dir)),
            Some(opened) => {
                let stat = opened.stat()?;
                if let Some(mode) = dir_mode.filter(|m| *m != stat.mode) {
                    steps.push(Step::DirMode(dir.clone(), mode));
                }
                if owner_differs(stat.uid, stat.gid) {
                    steps.push(Step::Owner(dir));
                }
            }
        }
    }
    for (index, (name, contents, mode)) in files.iter().enumerate() {
        let parent = name.parent().unwrap_or(Path::new(""));
        let current = match open_under(&top, parent)? {
            Some(dir) => dir.open_file(name.file_name().unwrap_or_default())?,
            None => None,
        };
        let Some(current) = current else {
            steps.push(Step::Write(name.clone(), index));
            continue;
        };
        let stat = current.stat();
        // Another name may be a file halite must not disclose: not read.
        if stat.nlink > 1 {
            steps.push(Step::Write(name.clone(), index));
            continue;
        }
        let fail = |source| KindError::Read { path: path.join(name), source };
        let mut head = Vec::new();
        current.file().take(DIFF_LIMIT + 1).read_to_end(&mut head).map_err(fail)?;
        let small = head.len() as u64 <= DIFF_LIMIT;
        let sha = if small {
            Sha256::of(&head)
        } else {
            Sha256::of_reader(head.as_slice().chain(current.file())).map_err(fail)?
        };
        if sha != Sha256::of(contents) {
            if small {
                diffs.push(unified_diff(&path.join(name), &head, contents));
            }
            steps.push(Step::Write(name.clone(), index));
            continue;
        }
        if stat.mode != *mode {
            steps.push(Step::FileMode(name.clone(), *mode));
        }
        if owner_differs(stat.uid, stat.gid) {
            steps.push(Step::Owner(name.clone()));
        }
    }
    if args::bool_or(args, "clean", false) {
        let exclude = args::strings(args, "exclude_pat");
        let keep_names: BTreeSet<PathBuf> = files.iter().map(|f| f.0.clone()).chain(dirs.iter().cloned()).collect();
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            let Some(dir) = open_under(&top, &relative)? else { continue };
            let mut names = dir.names()?;
            names.sort();
            for name in names {
                let entry = relative.join(&name);
                let shown = entry.to_string_lossy();
                if !exclude.is_empty() && Patterns::new(&exclude).is_ok_and(|p| p.is_match(&shown)) {
                    continue;
                }
                let Some(stat) = dir.entry(&name)? else { continue };
                if keep_names.contains(&entry) {
                    if stat.file_type == FileType::Dir {
                        pending.push(entry);
                    }
                    continue;
                }
                let what = match stat.file_type {
                    FileType::Dir => "directory",
                    FileType::Link => "link",
                    _ => "file",
                };
                steps.push(Step::Remove(entry, what));
            }
        }
    }
    Ok(Box::new(RecursePlan {
        path,
        files,
        steps,
        diffs,
        dir_mode: dir_mode.unwrap_or(0o755),
        owner,
        makedirs: args::bool_or(args, "makedirs", false),
    }))
}

impl Plan for RecursePlan {
    fn changes(&self) -> Vec<String> {
        let shown = |relative: &Path| self.path.join(relative).display().to_string();
        self.steps
            .iter()
            .map(|step| match step {
                Step::MakeDir(d) => format!("created directory {}", shown(d)),
                Step::DirMode(d, mode) | Step::FileMode(d, mode) => format!("mode of {}: {mode:04o}", shown(d)),
                Step::Write(f, i) => format!("wrote {} ({} bytes)", shown(f), self.files[*i].1.len()),
                Step::Owner(f) => format!("owner of {} changed", shown(f)),
                Step::Remove(f, what) => format!("removed {what} {}", shown(f)),
            })
            .collect()
    }

    fn diff(&self) -> Option<String> {
        (!self.diffs.is_empty()).then(|| self.diffs.concat())
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let changes = self.changes();
        if self.steps.is_empty() {
            return Ok(changes);
        }
        let (parent, name) = halite_fs::open_parent(&self.path, self.makedirs.then_some(0o755))?;
        let top = match parent.open_dir(&name)? {
            Some(top) => top,
            None => parent.create_dir(&name, 0o700)?,
        };
        let missing = |relative: &Path| KindError::ChangedWhileApplied { path: self.path.join(relative) };
        let parent_of = |relative: &Path| -> Result<Dir, KindError> {
            open_under(&top, relative.parent().unwrap_or(Path::new("")))?.ok_or_else(|| missing(relative))
        };
        let (uid, gid) = self.owner;
        for step in &self.steps {
            match step {
                Step::MakeDir(d) => {
                    let dir = if d.as_os_str().is_empty() {
                        open_under(&top, d)?.ok_or_else(|| missing(d))?
                    } else {
                        parent_of(d)?.create_dir(d.file_name().unwrap_or_default(), 0o700)?
                    };
                    if uid.is_some() || gid.is_some() {
                        dir.set_owner(uid, gid)?;
                    }
                    dir.set_mode(self.dir_mode)?;
                }
                Step::DirMode(d, mode) => open_under(&top, d)?.ok_or_else(|| missing(d))?.set_mode(*mode)?,
                Step::Write(f, i) => {
                    let (_, contents, mode) = &self.files[*i];
                    parent_of(f)?.write_atomic(
                        f.file_name().unwrap_or_default(),
                        &mut contents.as_slice(),
                        Perms { mode: *mode, uid, gid },
                    )?;
                }
                Step::FileMode(f, mode) => {
                    let file = parent_of(f)?.open_file(f.file_name().unwrap_or_default())?;
                    file.ok_or_else(|| missing(f))?.set_mode(*mode)?;
                }
                Step::Owner(f) => {
                    let dir = parent_of(f)?;
                    let name = f.file_name().unwrap_or(OsStr::new("."));
                    match dir.entry(name)?.map(|s| s.file_type) {
                        Some(FileType::Dir) => dir.open_dir(name)?.ok_or_else(|| missing(f))?.set_owner(uid, gid),
                        _ => dir.open_file(name)?.ok_or_else(|| missing(f))?.set_owner(uid, gid),
                    }?;
                }
                Step::Remove(f, _) => parent_of(f)?.remove(f.file_name().unwrap_or_default())?,
            }
        }
        Ok(changes)
    }
}

/// The files of a resolved call by name, for tests.
#[cfg(test)]
fn names(args: &Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    match args.get("files") {
        Some(Value::List(items)) => items
            .iter()
            .map(|i| (args::string(i, "name").unwrap().to_owned(), args::bytes(i, "contents").unwrap().to_vec()))
            .collect(),
        _ => std::collections::BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{at_path, changes, load, resolved_in};

    const TREE: &[(&str, &str)] = &[
        ("files/www/index.html", "<h1>hi</h1>\n"),
        ("files/www/css/site.css", "body {}\n"),
        ("files/www/notes.swp", "junk"),
    ];

    #[test]
    fn include_and_exclude_patterns_pick_the_files() {
        let call = resolved_in(KIND.name, "source: salt://files/www\nexclude_pat: '*.swp'", TREE);
        assert_eq!(names(&call.args).into_keys().collect::<Vec<_>>(), ["css/site.css", "index.html"]);
        let call = resolved_in(KIND.name, "source: files/www\ninclude_pat: 'E@\\.css$'", TREE);
        assert_eq!(names(&call.args).into_keys().collect::<Vec<_>>(), ["css/site.css"]);
    }

    #[test]
    fn copies_cleans_then_reports_unchanged() {
        let call = resolved_in(
            KIND.name,
            "source: files/www\nclean: true\nexclude_pat: '*.swp'\nfile_mode: '0640'\ndir_mode: '0750'",
            TREE,
        );
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("srv");
        std::fs::create_dir_all(target.join("old/deep")).unwrap();
        std::fs::write(target.join("old/deep/x"), "x").unwrap();
        std::fs::write(target.join("index.html"), "stale\n").unwrap();
        std::fs::write(target.join("keep.swp"), "kept: excluded").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, target.join("link")).unwrap();
        let call = at_path(&call, &target);
        let env = ApplyEnv::default();
        let result = apply_call(&call, true, &env);
        assert!(result.diff.unwrap().contains("-stale\n+<h1>hi</h1>"));
        assert_eq!(std::fs::read_to_string(target.join("index.html")).unwrap(), "stale\n", "test mode wrote");
        let first = changes(apply_call(&call, false, &env).outcome);
        assert!(first.iter().any(|c| c.contains("removed directory") && c.ends_with("/old")), "{first:?}");
        assert!(first.iter().any(|c| c.contains("removed link")), "{first:?}");
        assert_eq!(std::fs::read_to_string(target.join("css/site.css")).unwrap(), "body {}\n");
        assert_eq!(std::fs::read_to_string(target.join("index.html")).unwrap(), "<h1>hi</h1>\n");
        assert!(target.join("keep.swp").exists() && !target.join("old").exists());
        assert!(outside.join("secret").exists(), "clean followed a link");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(&target.join("css")), mode(&target.join("index.html"))), (0o750, 0o640));
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
    }

    #[test]
    fn a_missing_target_is_made_and_a_link_in_it_is_refused() {
        let call = resolved_in(KIND.name, "source: files/www", TREE);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("new");
        let call = at_path(&call, &target);
        assert_eq!(changes(apply_call(&call, false, &ApplyEnv::default()).outcome).len(), 5);
        assert!(changes(apply_call(&call, false, &ApplyEnv::default()).outcome).is_empty());
        let (parent, name) = halite_fs::open_parent(&target.join("css"), None).unwrap();
        parent.remove(&name).unwrap();
        std::os::unix::fs::symlink(dir.path(), target.join("css")).unwrap();
        assert!(apply_call(&call, false, &ApplyEnv::default()).outcome.is_failed());
        assert!(!dir.path().join("site.css").exists());
    }

    /// The tree's rule for every file it gives (`paths::in_tree`) holds
    /// under a recursed source too: a hard link out is refused, a FIFO is
    /// not read (nor waited on), and a file is no source directory.
    #[test]
    fn a_hard_link_out_is_refused_and_a_fifo_is_not_read() {
        let outer = tempfile::tempdir().unwrap();
        let www = outer.path().join("tree/files/www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "<h1>hi</h1>\n").unwrap();
        nix::unistd::mkfifo(&www.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (files, _) = read_tree(&www, None, &[], &[], false, false).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::write(outer.path().join("shadow"), "secret").unwrap();
        std::fs::hard_link(outer.path().join("shadow"), www.join("shadow")).unwrap();
        let error = read_tree(&www, None, &[], &[], false, false).unwrap_err().to_string();
        assert!(error.contains("`shadow` has 2 names"), "{error}");
        let error = crate::paths::dir_in_tree(&outer.path().join("tree"), "files/www/index.html").unwrap_err();
        assert!(error.to_string().contains("is a regular file, not a directory"), "{error}");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("files/www")).unwrap();
        let diagnostics = load(
            "x:\n  file.recurse:\n    name: /srv\n    source: salt://nowhere\n    include_pat: 'E@(?<=a)'\n    template: mako\n    dir_mode: '0999'\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        for (line, word) in [(4, "nowhere"), (5, "look-around"), (6, "template"), (7, "0999")] {
            assert!(lines.iter().any(|(l, m)| *l == line && m.contains(word)), "{word}: {lines:#?}");
        }
    }

    /// `template: jinja`: each text file is rendered by the master for the
    /// agent (facts, vars.yaml, `defaults` under `context`), a binary file
    /// is carried as it is, a syntax error points at its file and line
    /// when the tree loads, and an unrendered call is refused.
    #[test]
    fn templates_render_each_file_per_agent() {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("files/www");
        std::fs::create_dir_all(www.join("conf")).unwrap();
        std::fs::write(www.join("index.html"), "<h1>{{ id }} on {{ facts.os }}</h1>\n").unwrap();
        std::fs::write(www.join("conf/app.conf"), "port = {{ port }}\nname = {{ name }}\n").unwrap();
        std::fs::write(www.join("logo.bin"), [0xffu8, 0xfe, b'{', b'{']).unwrap();
        std::fs::write(
            dir.path().join("site.yaml"),
            "site:\n  file.recurse:\n    name: /srv/www\n    source: salt://files/www\n    template: jinja\n    defaults: {port: 80, name: default}\n    context: {port: 8080}\n",
        )
        .unwrap();
        let (tree, diagnostics) = crate::StateTree::load(dir.path());
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let facts = Value::map().with("os", "debian");
        let calls = tree.calls_for(&["site".into()], &crate::RenderContext::new("web1", &facts)).unwrap();
        let files = names(&calls[0].args);
        assert_eq!(files["index.html"], b"<h1>web1 on debian</h1>\n");
        assert_eq!(files["conf/app.conf"], b"port = 8080\nname = default\n");
        assert_eq!(files["logo.bin"], [0xffu8, 0xfe, b'{', b'{']);
        assert!(calls[0].args.get("template").is_none() && calls[0].args.get("context").is_none());
        // Applied as rendered.
        let target = tempfile::tempdir().unwrap();
        let call = at_path(&calls[0], &target.path().join("www"));
        assert_eq!(
            changes(apply_call(&call, false, &ApplyEnv::default()).outcome).len(),
            5,
            "the directory, conf/ and three files"
        );
        assert_eq!(
            std::fs::read_to_string(target.path().join("www/conf/app.conf")).unwrap(),
            "port = 8080\nname = default\n"
        );
        assert!(changes(apply_call(&call, false, &ApplyEnv::default()).outcome).is_empty());
        // Unrendered, the agent refuses it.
        let raw = at_path(&tree.files["site"].states[0].call, &target.path().join("raw"));
        assert!(apply_call(&raw, true, &ApplyEnv::default()).outcome.is_failed());
        assert!(!target.path().join("raw").exists());

        std::fs::write(www.join("conf/bad.conf"), "ok\n{% if %}\n").unwrap();
        let (_, diagnostics) = crate::StateTree::load(dir.path());
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert!(
            diagnostics[0].file.ends_with("files/www/conf/bad.conf") && diagnostics[0].line == 2,
            "{diagnostics:#?}"
        );
    }
}
