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
