//! `halite-master check` on trees in tests/fixtures/check, its output
//! compared with the expected-output files beside them: the warnings about
//! reactors that load but cannot fire as written, `--strict`, and the
//! what-if's reactors whose `when` was false, with why.

use std::path::{Path, PathBuf};

use halite_e2e::{CommandOutput, binaries, process};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/check")
}

/// Runs `halite-master check ARGS` in the fixtures folder (so the paths it
/// prints are the same everywhere).
async fn check(args: &[&str]) -> anyhow::Result<CommandOutput> {
    let mut command = process(binaries().master);
    command.arg("check").args(args).current_dir(fixtures());
    CommandOutput::of(command).await
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_reactor_typos_and_strict_refuses_them() {
    let out = check(&["--states", "typos"]).await.unwrap();
    assert_eq!(out.code, 0, "warnings alone pass: {out:?}");
    assert_eq!(out.stdout, expected("typos.expected"));
    let out = check(&["--states", "typos", "--strict"]).await.unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, expected("typos.strict.expected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_what_if_says_which_reactors_matched_the_tag_but_not_when_and_why() {
    let data = r#"{"kind": "create", "path": "/etc/nginx/nginx.conf"}"#;
    let out = check(&["--states", "typos", "--event", "halite/beacon/web01/nginx-conf", "--data", data]).await.unwrap();
    assert_eq!(out.stdout, expected("typos.what-if.expected"));
}

/// The example tree `init` writes has no warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_tree_is_clean_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    halite_master::example::write(dir.path()).unwrap();
    let out = check(&["--states", &dir.path().display().to_string(), "--strict"]).await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("warning"), "{out:?}");
}

/// Templates render for each sample agent of facts.yaml: a failure names
/// the agent, the expression or filter, and the template line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_renders_templates_for_the_sample_agents() {
    let out = check(&["--states", "templates"]).await.unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, expected("templates.expected"));
    // Fixed, the same tree renders for both.
    let dir = tempfile::tempdir().unwrap();
    for name in ["top.yaml", "vars.yaml", "facts.yaml", "app.yaml"] {
        let text = std::fs::read_to_string(fixtures().join("templates").join(name)).unwrap();
        let text = text
            .replace("{{ id | upcase }}", "{{ id | upper }}")
            .replace("facts.os_release.version_codename", "facts.os_release.version_codename | default('none')");
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = check(&["--states", &dir.path().display().to_string()]).await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("templates: rendered for 2 sample agents (facts.yaml)\nok: "), "{out:?}");
}

/// With the master's data dir, `check` renders templates for every agent
/// the master has seen, with the facts it last sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_renders_templates_for_the_agents_the_master_knows() {
    let fleet = halite_e2e::Fleet::start(&["web01", "db01"]).await.unwrap();
    let result = async {
        let tree = tempfile::tempdir()?;
        let app = "app-conf:\n  file.managed:\n    path: /etc/app.conf\n    template: jinja\n    contents: |\n      # {{ facts.os }}\n      listen {{ vars.port }}\n";
        for (name, text) in [("top.yaml", "'*': [app]\n"), ("vars.yaml", "'web*': {port: 80}\n"), ("app.yaml", app)] {
            std::fs::write(tree.path().join(name), text)?;
        }
        let (states, data_dir) = (tree.path().display().to_string(), fleet.master_data_dir().display().to_string());
        let mut out = None;
        // The store's writer commits the facts with its next batch.
        halite_e2e::wait_until("both agents' facts in the store", || {
            let output = halite_e2e::blocking_process(&fleet.binaries.master)
                .args(["check", "--states", &states, "--data-dir", &data_dir])
                .output()
                .expect("check runs");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let done = text.contains("rendered for 2 known agents");
            out = Some((output.status.code(), text));
            done
        })
        .await?;
        let (code, text) = out.unwrap_or_default();
        assert_eq!(code, Some(1), "{text}");
        let expected = format!(
            "{states}/app.yaml:2:3: error: file.managed `app-conf`: the template does not render for agent `db01` (template line 2): undefined value: `vars.port` is not defined for this agent\n  help: check the names it uses: id, facts, vars, event (agent `db01`: facts from the master's store)\n"
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(!text.contains("for agent `web01`"), "web01 has vars.port: {text}");
        assert!(
            text.contains("\ntemplates: rendered for 2 known agents (the master's store) and 0 sample agents (facts.yaml)\nerror: "),
            "{text}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A Salt tree renders per sample agent: every Jinja state file and the
/// pillar, each error naming the template (the state file or its
/// map.jinja), its line, the agent and the undefined expression or the
/// `salt[...]` function halite does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_renders_a_salt_tree_for_every_sample_agent() {
    let out = check(&["--states", "salt-render"]).await.unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, expected("salt-render.expected"));
}
