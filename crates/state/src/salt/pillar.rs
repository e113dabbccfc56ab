//! The pillar tree: `pillar/top.sls` and the pillar files beside it, in
//! the state tree's `pillar/` directory. Each file is rendered per agent
//! (Jinja with its grains, as a state file is, salt/render.rs), read as a
//! YAML map, and the files `pillar/top.sls` assigns to the agent are
//! merged in the top file's order, maps key by key and the rest replaced
//! by the later file (Salt's default `smart` merging). A tree with a
//! pillar reads no `vars.yaml`: the pillar is what templates see as
//! `pillar` (and `vars`).
//!
//! `pillar/top.sls` may be Jinja, rendered per agent with its grains (the
//! pillar is not there yet), as Salt renders it. A pillar file's
//! `include:` merges the files it names (dotted, or `.relative`; `- name:
//! {key: a:b}` puts them under a key) before its own values, which win,
//! as Salt's default (`pillar_includes_override_sls: false`) does; each
//! file once per agent, so an include cycle ends, as state includes do.
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
use crate::salt::{render, top};
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
    /// `pillar/top.sls` when it has Jinja: rendered per agent with its
    /// grains, then read; `top` is then empty.
    pub top_template: Option<PathBuf>,
    /// The tree's text files read at load (preread.rs), set by
    /// `StateTree::load`: rendering reads no file.
    pub texts: Option<Arc<crate::salt::preread::TreeTexts>>,
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
        // A top file with Jinja is rendered per agent, with its grains.
        if let Ok(text) = std::fs::read_to_string(&top_path)
            && top::is_template(&top_path, &text, diagnostics)
        {
            return Some(PillarTree { root, top: Vec::new(), files, top_template: Some(top_path), texts: None });
        }
        let targeted = top::load_targeted(&top_path, diagnostics).unwrap_or_default();
        let top = entries(&root, &top_path, &files, targeted, diagnostics);
        Some(PillarTree { root, top, files, top_template: None, texts: None })
    }

    /// Renders and merges the pillar of one agent (module doc). Errors: a
    /// file that does not render or is not a YAML map, an include that
    /// names no file, a Jinja top file that does not render; each named.
    pub fn render_for(
        &self,
        agent: &str,
        facts: &Value,
        grains: &serde_json::Value,
    ) -> Result<Pillar, Vec<Diagnostic>> {
        let data = Arc::new(Data { grains: grains.clone(), pillar: serde_json::json!({}) });
        let rendered_top;
        let top = match &self.top_template {
            None => &self.top,
            Some(path) => {
                rendered_top = self.render_top(path, agent, &data)?;
                &rendered_top
            }
        };
        let mut names: Vec<&str> = Vec::new();
        for (target, files) in top {
            if target.matches(agent, facts) {
                for name in files {
                    if !names.contains(&name.as_str()) {
                        names.push(name);
                    }
                }
            }
        }
        let mut merging = Merging { agent, data, done: Vec::new(), secrets: Vec::new(), diagnostics: Vec::new() };
        let mut values = serde_json::json!({});
        for name in names {
            if let Some(file) = self.files.iter().find(|f| f.name == name)
                && let Some(file_values) = self.file_values(file, &mut merging)
            {
                functions::update(&mut values, &file_values, false);
            }
        }
        if !merging.diagnostics.is_empty() {
            crate::diag::sort(&mut merging.diagnostics);
            return Err(merging.diagnostics);
        }
        let mut secrets = merging.secrets;
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Ok(Pillar { values, secrets })
    }

    /// The Jinja `pillar/top.sls` rendered for `agent` and read.
    fn render_top(
        &self,
        path: &Path,
        agent: &str,
        data: &Arc<Data>,
    ) -> Result<Vec<(Target, Vec<String>)>, Vec<Diagnostic>> {
        let text = render::render_in(&self.root, "top", path, data, self.texts.clone()).map_err(|error| {
            let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
            let message = format!("the pillar top file does not render for agent `{agent}`: {}", error.message);
            vec![
                Diagnostic::error(&error.file, at, message)
                    .help("check the names it uses: grains, salt['grains.get'](…), saltenv"),
            ]
        })?;
        let mut diagnostics = Vec::new();
        let targeted = top::parse_targeted(path, &text, &mut diagnostics).unwrap_or_default();
        let entries = entries(&self.root, path, &self.files, targeted, &mut diagnostics);
        let errors: Vec<Diagnostic> = diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .map(|mut d| {
                d.message = format!("{} (the pillar top file rendered for agent `{agent}`)", d.message);
                d
            })
            .collect();
        if errors.is_empty() { Ok(entries) } else { Err(errors) }
    }

    /// One pillar file rendered for the agent, with the files it includes
    /// merged under it (Salt's order: the included files first, the file's
    /// own values last, so they win); `None` when it failed (reported in
    /// `merging`) or was merged already. Each file is merged once per
    /// agent, which also ends an include cycle, as Salt's pillar and
    /// halite's state includes do.
    fn file_values(&self, file: &SlsFile, merging: &mut Merging<'_>) -> Option<serde_json::Value> {
        let name = file.name.as_str();
        if merging.done.iter().any(|d| d == name) {
            return None;
        }
        merging.done.push(name.to_owned());
        let agent = merging.agent;
        let text = match render::render_in(&self.root, &file.name, &file.path, &merging.data, self.texts.clone()) {
            Ok(text) => text,
            Err(error) => {
                let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
                merging.diagnostics.push(
                    Diagnostic::error(
                        &error.file,
                        at,
                        format!("pillar `{name}` does not render for agent `{agent}`: {}", error.message),
                    )
                    .help("check the names it uses: grains, salt['grains.get'](…)"),
                );
                return None;
            }
        };
        let mut values: serde_json::Value = match crate::yaml::parse(&file.path, &text) {
            Ok(serde_json::Value::Null) => serde_json::json!({}),
            Ok(values) => values,
            Err(mut diagnostic) => {
                diagnostic.message = format!("pillar `{name}` rendered for agent `{agent}`: {}", diagnostic.message);
                merging.diagnostics.push(diagnostic);
                return None;
            }
        };
        let Some(map) = values.as_object_mut() else {
            merging.diagnostics.push(
                Diagnostic::error(
                    &file.path,
                    Location::FILE,
                    format!("pillar `{name}` is not a mapping for agent `{agent}`"),
                )
                .help("a pillar file is a YAML map: `nginx: {port: 80}`"),
            );
            return None;
        };
        let includes = map.remove("include");
        if is_secret_file(name) {
            collect_strings(&values, &mut merging.secrets);
        }
        let Some(includes) = includes else { return Some(values) };
        let mut merged = serde_json::json!({});
        for (include, key, at) in self.includes(file, &text, &includes, merging) {
            let Some(included) = self.files.iter().find(|f| f.name == include) else {
                merging.diagnostics.push(
                    Diagnostic::error(
                        &file.path,
                        at,
                        format!("pillar `{name}`: `include` names pillar file `{include}`, which does not exist"),
                    )
                    .help(format!(
                        "create {} or fix the name",
                        self.root.join(format!("{}.sls", include.replace('.', "/"))).display()
                    )),
                );
                continue;
            };
            let Some(mut included) = self.file_values(included, merging) else { continue };
            // `key: a:b` puts the included values under `a: {b: …}`.
            if let Some(key) = key {
                for part in key.rsplit(':') {
                    included = serde_json::json!({ part: included });
                }
            }
            functions::update(&mut merged, &included, false);
        }
        functions::update(&mut merged, &values, false);
        Some(merged)
    }

    /// The names a pillar file's `include:` lists, made absolute, each with
    /// its `key:` and the line it is on; what cannot be included is
    /// reported in `merging`.
    fn includes(
        &self,
        file: &SlsFile,
        text: &str,
        list: &serde_json::Value,
        merging: &mut Merging<'_>,
    ) -> Vec<(String, Option<String>, Location)> {
        let name = file.name.as_str();
        let line_of = |needle: &str| {
            let from = text.lines().position(|l| l.starts_with("include:")).unwrap_or(0);
            let found = text.lines().enumerate().skip(from).find_map(|(n, l)| l.find(needle).map(|c| (n, c)));
            let (line, column) = found.unwrap_or((from, 0));
            Location::new(line as u64 + 1, column as u64 + 1)
        };
        let items = match list {
            serde_json::Value::Array(items) => items.clone(),
            serde_json::Value::String(one) => vec![serde_json::Value::String(one.clone())],
            _ => {
                merging.diagnostics.push(
                    Diagnostic::error(
                        &file.path,
                        line_of("include:"),
                        format!("pillar `{name}`: `include` is not a list of pillar file names"),
                    )
                    .help("write `include:` then one `- name` per line (`- common`, `- .users`)"),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            let (include, key) = match &item {
                serde_json::Value::String(include) => (include.clone(), None),
                // `- users: {key: people}`; `defaults:` would pass values
                // to the included file's rendering, which halite does not do.
                serde_json::Value::Object(map) if map.len() == 1 => {
                    let (include, options) = map.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default();
                    let options = options.as_object().cloned().unwrap_or_default();
                    if let Some(other) = options.keys().find(|k| k.as_str() != "key") {
                        merging.diagnostics.push(
                            Diagnostic::error(
                                &file.path,
                                line_of(&include),
                                format!("pillar `{name}`: `include` of `{include}` with `{other}` is not supported by halite"),
                            )
                            .help(format!("include `{include}` by name (with `key:` if its values go under a key)")),
                        );
                        continue;
                    }
                    (include, options.get("key").and_then(|k| k.as_str()).map(str::to_owned))
                }
                other => {
                    merging.diagnostics.push(
                        Diagnostic::error(
                            &file.path,
                            line_of("include:"),
                            format!("pillar `{name}`: `include` item `{other}` is not a pillar file name"),
                        )
                        .help("write a name such as `common`, `users.admins` or `.admins`"),
                    );
                    continue;
                }
            };
            let at = line_of(&include);
            match crate::sls::include::absolute(name, file.init, &include) {
                Some(absolute) => out.push((absolute, key, at)),
                None => merging.diagnostics.push(
                    Diagnostic::error(
                        &file.path,
                        at,
                        format!("pillar `{name}`: `include` of `{include}` goes above the pillar's root"),
                    )
                    .help("use fewer leading dots, or the name from the pillar's root"),
                ),
            }
        }
        out
    }
}

/// One agent's pillar being merged: the files done, the secrets found and
/// the problems met.
struct Merging<'a> {
    agent: &'a str,
    data: Arc<Data>,
    done: Vec<String>,
    secrets: Vec<String>,
    diagnostics: Vec<Diagnostic>,
}

/// A pillar top file's entries: each target with the files it names,
/// every name checked against the pillar's files.
fn entries(
    root: &Path,
    top_path: &Path,
    files: &[SlsFile],
    targeted: top::Targeted,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(Target, Vec<String>)> {
    let mut top = Vec::new();
    for (target, target_text, names) in targeted {
        let names: Vec<String> = match &names.value {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        for name in &names {
            if !files.iter().any(|f| &f.name == name) {
                diagnostics.push(
                    Diagnostic::error(
                        top_path,
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
                    top_path,
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
    top
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
        write_files(dir.path(), &files);
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

    /// Writes each (path under `root`, text) of a fixture tree.
    fn write_files(root: &std::path::Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn pillar_includes_merge_under_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("pillar/top.sls", "base:\n  '*':\n    - web\n{% if grains['id'] == 'web1' %}\n    - extra\n{% endif %}\n"),
            // `common` includes `web` back: the cycle ends, each file once.
            ("pillar/web.sls", "include:\n  - common\n  - users: {key: 'people:all'}\nnginx:\n  port: 8080\n"),
            ("pillar/common.sls", "include:\n  - web\nnginx:\n  port: 80\n  user: www\n"),
            ("pillar/users.sls", "ann: {uid: 1000}\n"),
            ("pillar/extra/init.sls", "include:\n  - .more\n"),
            ("pillar/extra/more.sls", "more: true\n"),
        ];
        write_files(dir.path(), &files);
        let mut diagnostics = Vec::new();
        let pillar = PillarTree::load(dir.path(), &mut diagnostics).unwrap();
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert!(pillar.top_template.is_some());
        let grains = json!({"id": "web2"});
        let web2 = pillar.render_for("web2", &Value::Null, &grains).unwrap();
        assert_eq!(
            web2.values,
            json!({"nginx": {"port": 8080, "user": "www"}, "people": {"all": {"ann": {"uid": 1000}}}})
        );
        let web1 = pillar.render_for("web1", &Value::Null, &json!({"id": "web1"})).unwrap();
        assert_eq!(web1.values["more"], true, "a relative include in an init.sls: {}", web1.values);
    }
}
