//! A Salt state file rendered for one agent: Jinja (minijinja) with Salt's
//! context, then YAML.
//!
//! The context: `grains` (salt/grains.rs), `pillar` (salt/pillar.rs),
//! `salt` (`salt['pillar.get'](…)`, salt/functions.rs), `sls`
//! (`nginx.config`), `slspath` and `tpldir` (`nginx`), `tplpath`
//! (`nginx/config.sls`), `tplfile`, `sls_path` (`nginx_config`) and
//! `saltenv` (`base`). `grains`, `pillar` and `salt` are globals, so a
//! template imported without `with context` sees them too, as in Salt.
//!
//! Salt's tags minijinja does not have are rewritten before minijinja
//! reads a template ([`preprocess`]), so the line numbers stay the same:
//! `{% import_yaml "x.yaml" as x %}` (and `import_json`, `import_text`)
//! becomes a `set` from a function that reads the file from the tree;
//! `{% load_yaml as x %}…{% endload %}` (and `load_json`, `load_text`) a
//! `set` block and a filter; and every `{% set x = EXPR %}` binds
//! `__halite_dict(EXPR)`, which makes a map one that can change in place
//! (salt/context.rs, `Dict`), so `{% do x.update(y) %}` and `{% do
//! salt['defaults.merge'](x, y) %}` change `x` as Python would, in a
//! `for` loop or a macro too (a `set` there would not reach outside).
//! `.update` on a map that cannot change (`pillar`, `grains`) is an error
//! that names the rewrite.
//!
//! A value that is undefined is an error when printed or iterated (a typo
//! fails loudly), and false in an `if` (minijinja's semi-strict mode), as
//! most formulas expect. `.get`, `.items()`, `.split()` and Python's other
//! methods come from minijinja-contrib's `pycompat`; a map's `.get` also
//! takes a `a:b:c` path, as `salt['pillar.get']` does.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::kinds;
use crate::salt::context::{add_salt, parse_data};
use crate::salt::functions::Data;
use crate::salt::preread::TreeTexts;
use crate::template::TemplateError;

/// Why a state file did not render; names the template that failed (the
/// state file, or a `map.jinja` it imports) and its line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RenderError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// True when a state file must be rendered before it is YAML: it has Jinja
/// anywhere but in the content of a `file.managed` with `template: jinja`
/// (halite's own file templates, rendered later with `facts` and `vars`).
pub fn needs_rendering(text: &str) -> bool {
    if !has_jinja(text) {
        return false;
    }
    let Ok(decls) = serde_saphyr::from_str::<serde_json::Value>(text) else { return true };
    let Some(states) = decls.as_object() else { return true };
    for (id, kinds_map) in states {
        if has_jinja(id) {
            return true;
        }
        let Some(kinds_map) = kinds_map.as_object() else {
            if has_jinja(&kinds_map.to_string()) {
                return true;
            }
            continue;
        };
        for (kind, fields) in kinds_map {
            if has_jinja(kind) {
                return true;
            }
            // Both forms: a map of fields, or Salt's list of one-key maps.
            let pairs: Vec<(&String, &serde_json::Value)> = match fields {
                serde_json::Value::Object(map) => map.iter().collect(),
                serde_json::Value::Array(items) => {
                    items.iter().filter_map(|i| i.as_object()).flat_map(|m| m.iter()).collect()
                }
                other => {
                    if has_jinja(&other.to_string()) {
                        return true;
                    }
                    continue;
                }
            };
            let template = pairs.iter().any(|(k, _)| k.as_str() == "template");
            let contents_key = kinds::file_like(kind).map(|f| f.contents_key);
            for (key, value) in pairs {
                let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                if has_jinja(&text) && !(template && contents_key == Some(key.as_str())) {
                    return true;
                }
            }
        }
    }
    false
}

/// Compiles a state file's template (Salt's tags rewritten) without
/// rendering it: a syntax error with its line, found when the tree loads,
/// whichever agents there are.
pub fn syntax(text: &str) -> Result<(), TemplateError> {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    env.template_from_str(&preprocess(text)).map(|_| ()).map_err(TemplateError::from)
}

fn has_jinja(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

static IMPORT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"\{%(-?)\s*import_(yaml|json|text)\s+(.+?)\s+as\s+([A-Za-z_][A-Za-z0-9_]*)\s*(-?)%\}")
        .unwrap_or_else(|e| unreachable!("a constant regex: {e}"))
});
static LOAD: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?s)\{%(-?)\s*load_(yaml|json|text)\s+as\s+([A-Za-z_][A-Za-z0-9_]*)\s*(-?)%\}(.*?)\{%(-?)\s*endload\s*(-?)%\}")
        .unwrap_or_else(|e| unreachable!("a constant regex: {e}"))
});
/// `{% set NAME = EXPR %}` (one name; not `ns.attr`, not a block set).
static SET: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?s)\{%(-?)(\s*)set\s+([A-Za-z_][A-Za-z0-9_]*)\s*=(.*?)(-?)%\}")
        .unwrap_or_else(|e| unreachable!("a constant regex: {e}"))
});

/// Salt's tags rewritten as minijinja's, line for line (module doc).
pub fn preprocess(source: &str) -> Cow<'_, str> {
    if !source.contains("{%") {
        return Cow::Borrowed(source);
    }
    let text = IMPORT.replace_all(source, r#"{%${1} set ${4} = __halite_import("${2}", ${3}) ${5}%}"#);
    let text =
        LOAD.replace_all(&text, r"{%${1} set ${3} ${4}%}${5}{%${6} endset ${7}%}{% set ${3} = ${3} | load_${2} %}");
    let text = SET.replace_all(&text, r"{%${1}${2}set ${3} = __halite_dict(${4}) ${5}%}");
    Cow::Owned(text.into_owned())
}

/// Joins a relative template name (`./map.jinja`, `../defaults.yaml`) to
/// the template that names it; other names are tree-relative, as Salt's.
fn join(name: &str, parent: &str) -> String {
    if !(name.starts_with("./") || name.starts_with("../")) {
        return name.to_owned();
    }
    let mut parts: Vec<&str> = parent.split('/').collect();
    parts.pop();
    for part in name.split('/') {
        match part {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Reads a tree-relative file for a template: inside the tree, a regular
/// file (paths.rs).
fn read_tree_text(root: &Path, name: &str) -> Result<String, Error> {
    let path = crate::paths::in_tree(root, name).map_err(|e| Error::new(ErrorKind::TemplateNotFound, e.to_string()))?;
    let bytes = crate::paths::read_tree_file(&path)
        .map_err(|e| Error::new(ErrorKind::TemplateNotFound, format!("`{name}`: {e}")))?;
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("`{name}` is not UTF-8")))
}

/// A tree-relative file for a template: from the texts read at load when
/// there are some (preread.rs: no file is read), else from the disk
/// (`apply --local` and tests, which are sync code).
fn tree_text(root: &Path, name: &str, texts: Option<&TreeTexts>) -> Result<String, Error> {
    match texts {
        Some(texts) => {
            texts.get(root, name).map(str::to_owned).map_err(|e| Error::new(ErrorKind::TemplateNotFound, e.to_string()))
        }
        None => read_tree_text(root, name),
    }
}

/// One environment per agent: its grains, pillar and `salt` as globals.
fn environment(root: &Path, data: &Arc<Data>, texts: Option<Arc<TreeTexts>>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_keep_trailing_newline(true);
    let (loader_root, loader_texts) = (root.to_path_buf(), texts.clone());
    env.set_loader(move |name| {
        tree_text(&loader_root, name, loader_texts.as_deref()).map(|text| Some(preprocess(&text).into_owned()))
    });
    env.set_path_join_callback(|name, parent| Cow::Owned(join(name, parent)));
    let import_root = root.to_path_buf();
    env.add_function("__halite_import", move |state: &State<'_, '_>, kind: String, name: String| {
        let name = join(&name, state.name());
        let text = tree_text(&import_root, &name, texts.as_deref())?;
        parse_data(&kind, &text, &format!("`{name}`"))
    });
    add_salt(&mut env, data);
    env
}

/// Renders the state file `path` (sls `sls`) of the tree at `root` for the
/// agent whose grains and pillar are `data`: the YAML text.
pub fn render_sls(root: &Path, sls: &str, path: &Path, data: &Arc<Data>) -> Result<String, RenderError> {
    render_in(root, sls, path, data, None)
}

/// [`render_sls`] from the texts read when the tree loaded (`texts`,
/// preread.rs), reading no file; from the disk without them.
pub fn render_in(
    root: &Path,
    sls: &str,
    path: &Path,
    data: &Arc<Data>,
    texts: Option<Arc<TreeTexts>>,
) -> Result<String, RenderError> {
    let env = environment(root, data, texts);
    let name = path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned();
    let tpldir = crate::salt::layout::tpldir(root, path);
    let error = |outer: &Error| {
        // An error in an imported template is wrapped by the import's:
        // report the innermost, where the template failed.
        let mut e = outer;
        while let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>()) {
            e = inner;
        }
        let failed = e.name().unwrap_or(&name).to_owned();
        let source = env.get_template(&failed).map(|t| t.source().to_owned()).unwrap_or_default();
        let TemplateError { line, message } = TemplateError::rendering(e, &source);
        // A failure inside a function keeps its own words after the kind.
        RenderError { file: root.join(&failed), line, message }
    };
    let template = env.get_template(&name).map_err(|e| error(&e))?;
    let context = minijinja::context! {
        sls => sls,
        slspath => tpldir.clone(),
        tpldir => tpldir,
        tplpath => name.clone(),
        tplfile => name.clone(),
        sls_path => sls.replace('.', "_"),
    };
    template.render(context).map_err(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_yaml_and_file_templates_are_not_rendered() {
        let cases = [
            ("a:\n  file.managed:\n    - name: /x\n    - contents: hi\n", false),
            ("a:\n  file.managed:\n    path: /x\n    template: jinja\n    contents: 'port {{ vars.port }}'\n", false),
            ("a:\n  file.managed:\n    - name: /x\n    - template: jinja\n    - contents: '{{ x }}'\n", false),
            ("a:\n  file.managed:\n    - name: /x\n    - contents: '{{ x }}'\n", true),
            ("a:\n  cmd.run:\n    - name: echo {{ grains.id }}\n", true),
            ("{% set x = 1 %}\na:\n  pkg.installed: []\n", true),
            ("'{{ id }}':\n  pkg.installed: []\n", true),
            ("{# c #}\na: {}\n", true),
        ];
        for (text, expected) in cases {
            assert_eq!(needs_rendering(text), expected, "{text}");
        }
    }

    #[test]
    fn salts_tags_are_rewritten_line_for_line() {
        let cases = [
            (
                r#"{% import_yaml "x/defaults.yaml" as defaults %}"#,
                r#"{% set defaults = __halite_dict( __halite_import("yaml", "x/defaults.yaml") ) %}"#,
            ),
            (
                r#"{%- import_json tpldir ~ '/a.json' as a -%}"#,
                r#"{%- set a = __halite_dict( __halite_import("json", tpldir ~ '/a.json') ) -%}"#,
            ),
            (
                "{% load_yaml as d %}\na: 1\n{% endload %}",
                "{% set d %}\na: 1\n{% endset %}{% set d = __halite_dict( d | load_yaml ) %}",
            ),
            ("{%- set cfg = {'a': 1} -%}", "{%- set cfg = __halite_dict( {'a': 1} ) -%}"),
            ("{% set m = {\n  'a': 1} %}", "{% set m = __halite_dict( {\n  'a': 1} ) %}"),
            ("{% do cfg.update({'a': 1}) %}", "{% do cfg.update({'a': 1}) %}"),
            ("{% set ns.x = 1 %}{% set b %}x{% endset %}", "{% set ns.x = 1 %}{% set b %}x{% endset %}"),
            ("plain {{ x }}", "plain {{ x }}"),
        ];
        for (source, expected) in cases {
            assert_eq!(preprocess(source), expected);
            assert_eq!(preprocess(source).lines().count(), source.lines().count());
        }
        assert_eq!(join("./map.jinja", "nginx/init.sls"), "nginx/map.jinja");
        assert_eq!(join("../common/x.yaml", "nginx/init.sls"), "common/x.yaml");
        assert_eq!(join("nginx/map.jinja", "a/b.sls"), "nginx/map.jinja");
        let error = syntax("a: 1\n{% if x %}\nb: 2\n").unwrap_err();
        assert!(error.message.contains("syntax error") && error.line.is_some(), "{error:?}");
        assert!(syntax("{% import_yaml 'a.yaml' as a %}{{ a }}").is_ok());
    }

    fn files(list: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in list {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn data() -> Arc<Data> {
        Arc::new(Data {
            grains: json!({"id": "web1", "os": "Debian", "os_family": "Debian", "num_cpus": 4}),
            pillar: json!({"nginx": {"port": 8080}, "users": ["ann", "bob"]}),
        })
    }

    #[test]
    fn a_formula_renders_with_map_jinja_and_imports() {
        let dir = files(&[
            (
                "nginx/map.jinja",
                "{% import_yaml 'nginx/defaults.yaml' as defaults %}\n{% set nginx = salt['grains.filter_by']({'Debian': {'pkg': 'nginx-full'}, 'RedHat': {'pkg': 'nginx'}}, merge=salt['pillar.get']('nginx:lookup'), base='default') %}\n{% do nginx.update(defaults) %}\n",
            ),
            ("nginx/defaults.yaml", "user: www-data\n"),
            ("nginx/settings.json", "{\"workers\": 2}\n"),
            (
                "nginx/init.sls",
                "{% from \"nginx/map.jinja\" import nginx with context %}\n{% import_json './settings.json' as settings %}\n{% macro pkg(name) %}{{ name }}:\n  pkg.installed: []\n{% endmacro %}\n{{ pkg(nginx.pkg) }}\n/etc/nginx/port:\n  file.managed:\n    - contents: \"{{ pillar.get('nginx:port', 80) }} {{ salt['pillar.get']('nginx:missing', 'dflt') }} {{ grains['os_family'] }} {{ grains.get('num_cpus') }} {{ nginx.user }} {{ settings.workers }} {{ sls }} {{ tpldir }} {{ slspath }}\"\n{% for user in pillar.users %}\n{{ user }}:\n  user.present: []\n{% endfor %}\n{{ salt['file.join'](tpldir, 'files') }}:\n  file.directory: []\n",
            ),
        ]);
        let path = dir.path().join("nginx/init.sls");
        let text = render_sls(dir.path(), "nginx", &path, &data()).unwrap();
        assert!(text.contains("nginx-full:\n  pkg.installed: []"), "{text}");
        assert!(text.contains("\"8080 dflt Debian 4 www-data 2 nginx nginx nginx\""), "{text}");
        assert!(text.contains("ann:\n  user.present") && text.contains("bob:\n"), "{text}");
        assert!(text.contains("nginx/files:\n  file.directory"), "{text}");
    }

    #[test]
    fn errors_name_the_template_the_line_and_the_name() {
        let dir = files(&[
            ("a/map.jinja", "{% set m = {} %}\n{% set x = grains.nope.deeper %}\n{{ undefined_thing }}\n"),
            ("a/init.sls", "{% from 'a/map.jinja' import m %}\nok: {}\n"),
            ("b.sls", "x:\n  cmd.run:\n    - name: {{ salt['cmd.run']('id') }}\n"),
            ("c.sls", "one: {}\n{{ pillar.nope }}\n"),
        ]);
        let root = dir.path();
        let error = render_sls(root, "a", &root.join("a/init.sls"), &data()).unwrap_err();
        assert!(error.file.ends_with("a/map.jinja"), "{error:?}");
        assert_eq!(error.line, Some(2), "{error:?}");
        assert!(error.message.contains("`grains.nope.deeper`"), "{error:?}");
        let error = render_sls(root, "b", &root.join("b.sls"), &data()).unwrap_err();
        assert_eq!((error.line, error.file.ends_with("b.sls")), (Some(3), true), "{error:?}");
        assert!(error.message.contains("salt['cmd.run'] is not supported by halite"), "{error:?}");
        let error = render_sls(root, "c", &root.join("c.sls"), &data()).unwrap_err();
        assert_eq!(error.line, Some(2), "{error:?}");
        assert!(error.message.contains("`pillar.nope`"), "{error:?}");
    }

    /// A pattern of real formulas (users-formula's and openssh-formula's
    /// map.jinja): a map filled by `do x.update(…)` inside a `for` loop
    /// and an `if`, then merged with `do salt['defaults.merge'](…)`. The
    /// changes last after the loop, as in Salt.
    #[test]
    fn do_update_in_a_loop_changes_the_map_itself() {
        let dir = files(&[
            (
                "users/map.jinja",
                "{% set users = {} %}\n{% for name, user in pillar.get('users', {}).items() %}\n{%   if user.get('absent') is not sameas true %}\n{%     do users.update({name: user}) %}\n{%   endif %}\n{% endfor %}\n{% do salt['defaults.merge'](users, {'root': {'uid': 0}}) %}\n{% macro add(map, key) %}{% do map.update({key: {'uid': 9}}) %}{% endmacro %}\n{{ add(users, 'svc') }}\n",
            ),
            (
                "users/init.sls",
                "{% from 'users/map.jinja' import users with context %}\n{% do users.ann.update(shell='/bin/zsh') %}\n{% for name, user in users | dictsort %}\n{{ name }}:\n  user.present:\n    - uid: {{ user.uid }}\n    - shell: {{ user.get('shell', '/bin/sh') }}\n{% endfor %}\n",
            ),
            ("bad.sls", "{% do pillar.update({'x': 1}) %}\n"),
        ]);
        let data = Arc::new(Data {
            grains: json!({"id": "web1"}),
            pillar: json!({"users": {"ann": {"uid": 1000}, "bob": {"uid": 1001, "absent": true}}}),
        });
        let root = dir.path();
        let text = render_sls(root, "users", &root.join("users/init.sls"), &data).unwrap();
        let states: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            states,
            json!({
                "ann": {"user.present": [{"uid": 1000}, {"shell": "/bin/zsh"}]},
                "root": {"user.present": [{"uid": 0}, {"shell": "/bin/sh"}]},
                "svc": {"user.present": [{"uid": 9}, {"shell": "/bin/sh"}]},
            }),
            "{text}"
        );
        let error = render_sls(root, "bad", &root.join("bad.sls"), &data).unwrap_err();
        assert_eq!(error.line, Some(1), "{error:?}");
        assert!(error.message.contains("`{% set x = salt['defaults.merge'](x, {…}) %}`"), "{error:?}");
    }
}
