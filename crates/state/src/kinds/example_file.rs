//! `example.file`: a minimal file-like kind that exists only in tests (this
//! crate's, and the agent's and master's through the `example-kinds`
//! feature). It shows that a new kind keeping a file's content is this one
//! file plus its line in `KINDS`: offline healing, `watch: true` and
//! templates pick it up through its [`FileLike`] with no other edit. Its
//! content key is `text`, not `contents`, so nothing can be relying on
//! `file.managed`'s argument names.

use std::path::PathBuf;

use halite_proto::{Sha256, Value};
use serde::Deserialize;

use super::{Authored, FileLike, FileView, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::{ApplyEnv, ManagedFile};

pub static KIND: Kind = Kind {
    name: "example.file",
    summary: "A test-only file-like kind: `path` holds `text`.",
    example: "hello:\n  example.file:\n    path: /etc/hello\n    text: \"hello\\n\"\n",
    resolve,
    plan,
    file: Some(&FILE),
};

static FILE: FileLike = FileLike {
    view: |args| {
        Some(FileView { path: args::string(args, "path").ok()?, contents: args::bytes(args, "text").ok()?, mode: None })
    },
    contents_mut: |args| args::bytes_mut(args, "text"),
    contents_key: "text",
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: Option<String>,
    text: String,
    template: Option<String>,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    let resolved = Value::map().with("path", path).with("text", config.text.into_bytes());
    Ok(match config.template {
        Some(engine) => resolved.with("template", engine),
        None => resolved,
    })
}

#[derive(Debug)]
struct ExamplePlan {
    path: PathBuf,
    text: Vec<u8>,
    differs: bool,
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    let text = args::bytes(args, "text")?.to_vec();
    let (dir, name) = halite_fs::open_parent(&path, None)?;
    let current = dir.open_file(&name)?;
    let differs = match current {
        Some(file) => {
            Sha256::of_reader(file.file()).map_err(|source| KindError::Read { path: path.clone(), source })?
                != Sha256::of(&text)
        }
        None => true,
    };
    Ok(Box::new(ExamplePlan { path, text, differs }))
}

impl Plan for ExamplePlan {
    fn changes(&self) -> Vec<String> {
        if self.differs { vec![format!("wrote {}", self.path.display())] } else { Vec::new() }
    }

    fn managed_file(&self) -> Option<ManagedFile> {
        Some(ManagedFile { path: self.path.clone(), sha256: Sha256::of(&self.text), mode: None })
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        if self.differs {
            halite_fs::write_atomic(&self.path, &self.text, 0o644)?;
        }
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree knows `example.file` as file-like through its `FileLike`
    /// alone: `watch: true` is accepted and its `text` is rendered as a
    /// template (and not checked for stray Jinja as a plain value).
    #[test]
    fn the_tree_treats_a_new_file_like_kind_as_file_like() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("e.yaml"),
            "hello:\n  example.file:\n    path: /etc/hello\n    text: \"host {{ id }}\\n\"\n    template: jinja\n    watch: true\n",
        )
        .unwrap();
        let (tree, diagnostics) = crate::StateTree::load(dir.path());
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert!(tree.files["e"].states[0].watch);
        let calls = tree.calls_for(&["e".into()], &crate::RenderContext::new("web1", &Value::Null)).unwrap();
        let view = (crate::kinds::file_like("example.file").unwrap().view)(&calls[0].args).unwrap();
        assert_eq!((view.path, view.contents), ("/etc/hello", &b"host web1\n"[..]));
    }
}
