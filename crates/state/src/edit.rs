//! The plan of every kind that edits a file's text in place
//! (`file.replace`, `file.append`, `file.prepend`, `file.blockreplace`,
//! `file.line`, and the system kinds that keep a line in a file): the
//! current content read through one descriptor ([`halite_fs::Editable`]),
//! the kind's pure edit applied to it, a unified diff of the difference,
//! and the atomic write of exactly that edit. A kind only supplies the
//! edit; reading, diffing, backing up and writing are here, once.

use std::path::{Path, PathBuf};

use halite_fs::{Editable, Perms};

use crate::env::ApplyEnv;
use crate::kinds::{KindError, Plan};

/// Files larger than this are not edited in place (the state fails).
pub const EDIT_LIMIT: u64 = 16 * 1024 * 1024;

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
    /// `backup = false`. The edit's error is the kind's, which names the
    /// file ([`KindError::Text`]).
    pub fn new(
        path: &Path,
        env: &ApplyEnv,
        backup: bool,
        new_file: NewFile,
        edit: impl FnOnce(Option<&str>) -> Result<(Edited, Vec<String>), KindError>,
    ) -> Result<EditPlan, KindError> {
        let file = Editable::read(path, EDIT_LIMIT)?;
        let current = match file.content() {
            Some(bytes) => {
                Some(std::str::from_utf8(bytes).map_err(|_| KindError::NotText { path: path.to_path_buf() })?)
            }
            None => None,
        };
        let (edited, what) = edit(current)?;
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

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let Some(new) = &self.new else { return Ok(Vec::new()) };
        let mut changes = self.changes();
        if let (Some((dir, kept, max)), Some(old)) = (&self.backup, self.file.content())
            && old.len() as u64 <= *max
        {
            let backup = crate::backup::save(dir, self.file.path(), &mut &old[..], *kept)?;
            changes.push(format!("previous content kept in {}", backup.display()));
        }
        self.file.replace(new.as_bytes(), self.new_file.perms, self.new_file.makedirs)?;
        Ok(changes)
    }
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
    fn binary_content_is_not_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let error =
            EditPlan::new(&path, &ApplyEnv::default(), false, NewFile::default(), |_| Ok((Edited::Keep, vec![])))
                .unwrap_err();
        assert!(matches!(error, KindError::NotText { .. }), "{error}");
    }
}
