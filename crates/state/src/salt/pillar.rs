//! The pillar tree: `pillar/top.sls` and the pillar files beside it, in
//! the state tree's `pillar/` directory. Each file is rendered per agent
//! (Jinja with its grains, as a state file is, salt/render.rs), read as a
//! YAML map, and the files `pillar/top.sls` assigns to the agent are
//! merged in the top file's order, maps key by key and the rest replaced
//! by the later file (Salt's default `smart` merging). A tree with a
//! pillar reads no `vars.yaml`: the pillar is what templates see as
//! `pillar` (and `vars`).
//!
//! Pillar values go only to the agents they target: the master renders,
//! and an agent's job holds only what its own states use.
//!
//! **Secrets.** Every string of a pillar file whose sls name has a part
//! `secret` or `secrets` (`secrets.db`, `db/secrets.sls`, `secret.sls`) is
//! a secret: usable in states like any value, and shown as `<secret>` in
//! whatever the master publishes, stores or logs of a job's results
//! (salt/secret.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use halite_proto::Value;

use crate::diag::{Diagnostic, Location};
use crate::salt::functions::{self, Data};
use crate::salt::layout::{self, SlsFile};
use crate::salt::render;
use crate::target::Target;

/// A loaded pillar tree.
#[derive(Debug, Clone)]
pub struct PillarTree {
    /// `<tree>/pillar`.
    pub root: PathBuf,
    /// `pillar/top.sls`, in file order.
    pub top: Vec<(Target, Vec<String>)>,
    /// Pillar files by sls name.
    pub files: Vec<SlsFile>,
}

/// One agent's pillar.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pillar {
    pub values: serde_json::Value,
    /// The strings of secret pillar files, longest first.
    pub secrets: Vec<String>,
}

/// The pillar file is a secret one (module doc).
pub fn is_secret_file(sls: &str) -> bool {
    sls.split('.').any(|part| part == "secret" || part == "secrets")
}

impl PillarTree {
    /// The pillar tree of the state tree at `tree_root`, `None` when it has
    /// no `pillar/top.sls`.
    pub fn load(tree_root: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<PillarTree> {
        let root = tree_root.join(layout::PILLAR_DIR);
        let top_path = root.join("top.sls");
        if !top_path.is_file() {
            return None;
        }
        let files = layout::discover(&root, &["top.sls"]).files;
        let mut top = Vec::new();
        for (target, target_text, names) in crate::salt::top::load_targeted(&top_path, diagnostics).unwrap_or_default()
        {
            let names: Vec<String> = match &names.value {
                serde_json::Value::String(one) => vec![one.clone()],
                serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            };
            for name in &names {
                if !files.iter().any(|f| &f.name == name) {
                    diagnostics.push(
                        Diagnostic::error(
                            &top_path,
                            crate::yaml::location(&target_text),
                            format!("target `{}` names pillar file `{name}`, which does not exist", target_text.value),
                        )
                        .help(format!(
                            "create {} or fix the name",
                            root.join(format!("{}.sls", name.replace('.', "/"))).display()
                        )),
                    );
                }
            }
            if (target_text.value.contains("G@") || target_text.value.contains("P@"))
                && let Some(secret) = names.iter().find(|n| is_secret_file(n))
            {
                diagnostics.push(
                        Diagnostic::warning(
                            &top_path,
                            crate::yaml::location(&target_text),
                            format!(
                                "target `{}` gives the secret pillar `{secret}` by a grain; an agent's grains are what it claimed when its key was accepted",
                                target_text.value
                            ),
                        )
                        .help("give secrets by agent id (`db*`, `match: list`), which its key proves; see README, \"Security model\""),
                    );
            }
            top.push((target, names));
        }
        Some(PillarTree { root, top, files })
    }

    /// Renders and merges the pillar of one agent (module doc). Errors: a
    /// file that does not render or is not a YAML map, each named.
    pub fn render_for(
        &self,
        agent: &str,
        facts: &Value,
        grains: &serde_json::Value,
    ) -> Result<Pillar, Vec<Diagnostic>> {
        let mut names: Vec<&str> = Vec::new();
        for (target, files) in &self.top {
            if target.matches(agent, facts) {
                for name in files {
                    if !names.contains(&name.as_str()) {
                        names.push(name);
                    }
                }
            }
        }
        let data = Arc::new(Data { grains: grains.clone(), pillar: serde_json::json!({}) });
        let mut pillar = Pillar { values: serde_json::json!({}), secrets: Vec::new() };
        let mut diagnostics = Vec::new();
        for name in names {
            let Some(file) = self.files.iter().find(|f| f.name == name) else { continue };
            let text = match render::render_sls(&self.root, &file.name, &file.path, &data) {
                Ok(text) => text,
                Err(error) => {
                    let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
                    diagnostics.push(
                        Diagnostic::error(
                            &error.file,
                            at,
                            format!("pillar `{name}` does not render for agent `{agent}`: {}", error.message),
                        )
                        .help("check the names it uses: grains, salt['grains.get'](…)"),
                    );
                    continue;
                }
            };
            let values: serde_json::Value = match crate::yaml::parse(&file.path, &text) {
                Ok(serde_json::Value::Null) => serde_json::json!({}),
                Ok(values) => values,
                Err(mut diagnostic) => {
                    diagnostic.message =
                        format!("pillar `{name}` rendered for agent `{agent}`: {}", diagnostic.message);
                    diagnostics.push(diagnostic);
                    continue;
                }
            };
            if !values.is_object() {
                diagnostics.push(
                    Diagnostic::error(
                        &file.path,
                        Location::FILE,
                        format!("pillar `{name}` is not a mapping for agent `{agent}`"),
                    )
                    .help("a pillar file is a YAML map: `nginx: {port: 80}`"),
                );
                continue;
            }
            if values.get("include").is_some() {
                diagnostics.push(
                    Diagnostic::error(
                        &file.path,
                        Location::FILE,
                        format!("pillar `{name}`: `include:` in a pillar file is not supported by halite"),
                    )
                    .help("list the included pillar files in pillar/top.sls instead"),
                );
                continue;
            }
            if is_secret_file(name) {
                collect_strings(&values, &mut pillar.secrets);
            }
            functions::update(&mut pillar.values, &values, false);
        }
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        pillar.secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        pillar.secrets.dedup();
        Ok(pillar)
    }
}

fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pillar_merges_in_top_order_per_agent_and_marks_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "pillar/top.sls",
                "base:\n  '*':\n    - common\n  'os:Debian':\n    - match: grain\n    - debian\n  'db*':\n    - secrets.db\n",
            ),
            ("pillar/common.sls", "nginx:\n  port: 80\n  user: www\nusers: [ann]\n"),
            (
                "pillar/debian.sls",
                "{% if grains['os_family'] == 'Debian' %}\nnginx:\n  port: 8080\nusers: [bob]\n{% endif %}\n",
            ),
            ("pillar/secrets/db.sls", "db:\n  password: hunter2-long\n  port: 5432\n"),
        ];
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let mut diagnostics = Vec::new();
        let pillar = PillarTree::load(dir.path(), &mut diagnostics).unwrap();
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        std::fs::write(
            dir.path().join("pillar/top.sls"),
            "base:\n  'role:db':\n    - match: grain\n    - secrets.db\n",
        )
        .unwrap();
        PillarTree::load(dir.path(), &mut diagnostics).unwrap();
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert!(!diagnostics[0].is_error() && diagnostics[0].message.contains("secret pillar `secrets.db` by a grain"));
        let debian = Value::map().with("os", "debian");
        let grains = crate::salt::grains::all(&debian);
        let web = pillar.render_for("web1", &debian, &grains).unwrap();
        assert_eq!(web.values, json!({"nginx": {"port": 8080, "user": "www"}, "users": ["bob"]}));
        assert!(web.secrets.is_empty());
        let db = pillar.render_for("db1", &Value::Null, &json!({})).unwrap();
        assert_eq!(db.values["db"]["password"], "hunter2-long");
        assert_eq!(db.values["nginx"]["port"], 80, "the Debian file is not the db's");
        assert_eq!(db.secrets, ["hunter2-long", "5432"]);
        assert!(is_secret_file("secrets.db") && is_secret_file("secret") && !is_secret_file("secretary"));
    }
}
