//! Salt-shaped trees loaded whole through `StateTree::load`: layout, top
//! forms, rendering per agent, pillar.

use halite_proto::Value;

use crate::{RenderContext, StateTree};

pub(crate) fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, StateTree, Vec<crate::Diagnostic>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let (tree, diagnostics) = StateTree::load(dir.path());
    (dir, tree, diagnostics)
}

fn debian(id: &str) -> Value {
    Value::map().with("id", id).with("hostname", id).with("os", "debian").with("os_version", "12").with("cpus", 2i64)
}

fn rocky(id: &str) -> Value {
    Value::map().with("id", id).with("hostname", id).with("os", "rocky").with("os_version", "9.3").with("cpus", 8i64)
}

#[test]
fn top_match_forms_and_subdirectories() {
    let (_dir, tree, diagnostics) = tree(&[
        (
            "top.sls",
            "base:\n  '*':\n    - common\n  'os_family:Debian':\n    - match: grain\n    - nginx\n  'web[0-9]+':\n    - match: pcre\n    - nginx.config\n  'db1,db2':\n    - match: list\n    - db\n",
        ),
        ("common.sls", "motd:\n  file.managed:\n    - name: /etc/motd\n    - contents: hi\n"),
        ("nginx/init.sls", "nginx:\n  pkg.installed: []\n"),
        ("nginx/config.sls", "/etc/nginx/nginx.conf:\n  file.managed:\n    - source: salt://nginx/files/nginx.conf\n"),
        ("nginx/files/nginx.conf", "server {}\n"),
        ("db/init.sls", "postgresql:\n  pkg.installed: []\n"),
    ]);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(tree.states_for("web1", &debian("web1")), ["common", "nginx", "nginx.config"]);
    assert_eq!(tree.states_for("web1", &rocky("web1")), ["common", "nginx.config"]);
    assert_eq!(tree.states_for("db2", &rocky("db2")), ["common", "db"]);
    let calls = tree.calls_for(&["nginx.config".into()], &RenderContext::new("web1", &debian("web1"))).unwrap();
    assert_eq!(calls[0].args.get("contents"), Some(&Value::Bytes(b"server {}\n".to_vec())));
}

#[test]
fn other_environments_and_match_forms_are_named_errors() {
    let (_dir, tree, diagnostics) = tree(&[
        (
            "top.sls",
            "base:\n  '*':\n    - common\n  'role:web':\n    - match: pillar\n    - common\ndev:\n  '*':\n    - common\n",
        ),
        ("common.sls", "{}\n"),
    ]);
    let messages: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("top.sls:7:1") && m.contains("environment `dev`")), "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("`match: pillar` is not supported")), "{messages:#?}");
    assert_eq!(tree.states_for("x", &Value::Null), ["common"]);
}

/// A formula in a subdirectory with a map.jinja, a pillar with a grain
/// match, a plain YAML file requiring a rendered state.
fn formula_tree() -> (tempfile::TempDir, StateTree, Vec<crate::Diagnostic>) {
    tree(&[
        ("top.sls", "base:\n  '*':\n    - motd\n    - web\n"),
        (
            "motd.yaml",
            "motd:\n  file.managed:\n    path: /etc/motd\n    contents: hi\n    require:\n      - pkg: webserver\n",
        ),
        (
            "web/map.jinja",
            "{% set web = salt['grains.filter_by']({'Debian': {'pkg': 'apache2', 'conf': '/etc/apache2/ports.conf'}, 'RedHat': {'pkg': 'httpd', 'conf': '/etc/httpd/ports.conf'}}, merge=salt['pillar.get']('web:lookup')) %}\n",
        ),
        (
            "web/init.sls",
            "{% from \"web/map.jinja\" import web with context %}\nwebserver:\n  pkg.installed:\n    - name: {{ web.pkg }}\n{{ web.conf }}:\n  file.managed:\n    - source: salt://{{ tpldir }}/files/ports.conf\n    - template: jinja\n    - require:\n      - pkg: webserver\n",
        ),
        ("web/files/ports.conf", "Listen {{ pillar.web.port }} # {{ grains.os }}\n"),
        ("pillar/top.sls", "base:\n  '*':\n    - web\n  'os_family:RedHat':\n    - match: grain\n    - redhat\n"),
        ("pillar/web.sls", "web:\n  port: 80\n"),
        ("pillar/redhat.sls", "web:\n  port: 8080\n  lookup:\n    pkg: httpd24\n"),
    ])
}

#[test]
fn each_agent_gets_its_own_rendered_states() {
    let (_dir, tree, diagnostics) = formula_tree();
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(tree.renders_per_agent() && tree.templates.contains_key("web"));
    let describe = |agent: &str, facts: &Value| {
        let names = tree.states_for(agent, facts);
        let calls = tree.calls_for(&names, &RenderContext::new(agent, facts)).unwrap();
        calls
            .iter()
            .map(|c| {
                let arg = |k: &str| c.args.get(k).map(|v| v.to_json().to_string()).unwrap_or_default();
                format!("{} {} {}{}", c.kind, c.id, arg("pkgs"), arg("contents"))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        describe("web1", &debian("web1")),
        [
            "pkg.installed webserver [\"apache2\"]",
            "file.managed motd \"hi\"",
            "file.managed /etc/apache2/ports.conf \"Listen 80 # Debian\\n\"",
        ]
    );
    assert_eq!(
        describe("web2", &rocky("web2")),
        [
            "pkg.installed webserver [\"httpd24\"]",
            "file.managed motd \"hi\"",
            "file.managed /etc/httpd/ports.conf \"Listen 8080 # Rocky\\n\"",
        ]
    );
}

#[test]
fn rendered_trees_are_cached_per_agent_and_facts() {
    let (_dir, tree, _) = formula_tree();
    let first = tree.for_agent("web1", &debian("web1")).unwrap();
    let again = tree.for_agent("web1", &debian("web1")).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "same facts: not rendered again");
    assert!(first.problems.is_empty(), "{:#?}", first.problems);
    let moved = tree.for_agent("web1", &rocky("web1")).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &moved), "new facts: rendered again");
}

#[test]
fn render_errors_name_the_file_line_agent_and_name() {
    let (_dir, tree, diagnostics) = tree(&[
        ("top.sls", "base:\n  '*':\n    - app\n"),
        (
            "app/init.sls",
            "x:\n  pkg.installed:\n    - name: {{ pillar.app.pkg }}\ny:\n  cmd.run:\n    - name: {{ salt['cmd.run']('id') }}\n",
        ),
        ("ok.sls", "z:\n  cmd.run:\n    - name: echo {{ grains.id }}\n"),
    ]);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let errors = tree.calls_for(&["app".into()], &RenderContext::new("web1", &debian("web1"))).unwrap_err();
    // A file that does not render stops only the jobs that apply it.
    assert!(tree.calls_for(&["ok".into()], &RenderContext::new("web1", &debian("web1"))).is_ok());
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(shown[0].contains("app/init.sls:3:1"), "{shown:#?}");
    assert!(shown[0].contains("agent `web1`") && shown[0].contains("`pillar.app.pkg`"), "{shown:#?}");
}

/// Jinja in `top.sls` and `pillar/top.sls`, rendered per agent as Salt
/// does: the pillar's top with the agent's grains, the state top with its
/// grains and pillar (and `saltenv`).
#[test]
fn jinja_top_files_are_rendered_per_agent() {
    let state = |name: &str| format!("{name}:\n  cmd.run:\n    - name: 'true'\n");
    let (_dir, loaded, diagnostics) = tree(&[
        (
            "top.sls",
            "{{ saltenv }}:\n  '*':\n    - common\n{% if grains['os_family'] == 'Debian' %}\n    - debian\n{% endif %}\n{% for role in pillar.get('roles', []) %}\n    - {{ role }}\n{% endfor %}\n",
        ),
        ("common.sls", &state("common")),
        ("debian.sls", &state("debian")),
        ("web.sls", &state("web")),
        ("db.sls", &state("db")),
        (
            "pillar/top.sls",
            "base:\n  '*':\n    - common\n{% if grains['id'].startswith('web') %}\n  '{{ grains['id'] }}':\n    - web\n{% endif %}\n",
        ),
        ("pillar/common.sls", "roles: [db]\n"),
        ("pillar/web.sls", "roles: [web]\n"),
    ]);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(loaded.top.is_empty() && loaded.top_template.is_some(), "rendered per agent, not at load");
    assert_eq!(loaded.states_for("web1", &debian("web1")), ["common", "debian", "web"]);
    assert_eq!(loaded.states_for("db1", &rocky("db1")), ["common", "db"]);
    let names = loaded.states_for("web1", &debian("web1"));
    let calls = loaded.calls_for(&names, &RenderContext::new("web1", &debian("web1"))).unwrap();
    let ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["common", "debian", "web"]);

    // A top file that does not render names no states for that agent, and
    // says why at its own line.
    let (_dir, broken, diagnostics) =
        tree(&[("top.sls", "base:\n  '*':\n    - {{ grains.nope.deeper }}\n"), ("common.sls", &state("common"))]);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(broken.states_for("web1", &debian("web1")).is_empty());
    let errors = broken.for_agent("web1", &debian("web1")).unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(shown[0].contains("top.sls:3:1") && shown[0].contains("`grains.nope.deeper`"), "{shown:#?}");
    assert!(shown[0].contains("does not render for agent `web1`"), "{shown:#?}");

    // A syntax error is found at load, whichever agents there are.
    let (_dir, _, diagnostics) = tree(&[("top.sls", "base:\n  '*':\n{% if grains.id %}\n    - common\n")]);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert!(diagnostics[0].to_string().contains("the top file does not compile"), "{diagnostics:#?}");
}

/// The first render for an agent reads no file: what the templates read
/// (state files, `map.jinja`, the pillar and its top) was read when the
/// tree loaded (salt/preread.rs), so the master may render on its async
/// runtime. Removed from the disk after the load, they still render.
#[test]
fn a_render_reads_the_texts_kept_at_load_not_the_disk() {
    let (dir, loaded, diagnostics) = formula_tree();
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    for gone in ["web/map.jinja", "web/init.sls", "pillar/top.sls", "pillar/web.sls", "pillar/redhat.sls", "top.sls"] {
        std::fs::remove_file(dir.path().join(gone)).unwrap();
    }
    let names = loaded.states_for("web1", &debian("web1"));
    assert_eq!(names, ["motd", "web"]);
    let calls = loaded.calls_for(&names, &RenderContext::new("web1", &debian("web1"))).unwrap();
    let ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["webserver", "motd", "/etc/apache2/ports.conf"]);
}
