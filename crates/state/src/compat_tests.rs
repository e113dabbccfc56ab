//! The Salt-form tree and its native twin (tests/fixtures/states/) load,
//! check and apply with the same results: every kind, requisites in both
//! forms, a template with facts and vars. Applied into a temporary root,
//! with stand-in `systemctl`, `dpkg-query` and `apt-get`.

use std::fs;
use std::path::{Path, PathBuf};

use halite_proto::{Outcome, StateCall, StateResult, Value};

use crate::kinds::service_running::stand_in::StandIns;
use crate::{RenderContext, StateTree, run_states};

fn fixture(form: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/states").join(form)
}

/// Paths moved under `root`, as the agent does with its `root` setting.
fn rooted(calls: Vec<StateCall>, root: &Path) -> Vec<StateCall> {
    calls
        .into_iter()
        .map(|mut call| {
            if let Value::Map(args) = &mut call.args {
                for key in ["path", "target", "cwd"] {
                    if let Some(Value::String(path)) = args.get_mut(key) {
                        *path = root.join(path.trim_start_matches('/')).display().to_string();
                    }
                }
            }
            call
        })
        .collect()
}

/// Kind, outcome and changes, with the root taken out; sorted, since the
/// two forms declare states in a different order.
fn summary(results: &[StateResult], root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut lines: Vec<String> = results
        .iter()
        .map(|r| {
            let detail = match &r.outcome {
                Outcome::Changed { changes } | Outcome::WouldChange { changes } => changes.join("; "),
                Outcome::Failed { error } => error.clone(),
                Outcome::Unchanged => String::new(),
            };
            format!("{} {}: {}", r.kind, r.outcome.label(), detail.replace(&root, ""))
        })
        .collect();
    lines.sort();
    lines
}

struct Run {
    test_mode: Vec<String>,
    first: Vec<String>,
    second: Vec<String>,
    calls: Vec<String>,
}

fn apply(form: &str) -> Run {
    let (tree, diagnostics) = StateTree::load(&fixture(form));
    assert!(diagnostics.is_empty(), "{form}: {diagnostics:#?}");
    assert_eq!(tree.files.values().map(|f| f.states.len()).sum::<usize>(), 9, "{form}");
    let facts = Value::map().with("os", "debian");
    assert!(tree.states_for("web1", &Value::map().with("os", "ubuntu")).is_empty());
    let names = tree.states_for("web1", &facts);
    let calls = tree.calls_for(&names, &RenderContext::new("web1", &facts)).unwrap();

    let root = tempfile::tempdir().unwrap();
    let calls = rooted(calls, root.path());
    let fake = StandIns::new();
    fake.set("pkgs/nginx", "1.0");
    fake.set("active/telnetd", "");
    fake.set("enabled/telnetd", "");
    let default_site = root.path().join("etc/nginx/sites-enabled/default");
    fs::create_dir_all(default_site.parent().unwrap()).unwrap();
    fs::write(&default_site, "old").unwrap();
    let env = fake.env();

    let test_mode = run_states(&calls, true, &env);
    assert!(
        default_site.exists() && !root.path().join("etc/nginx/site.conf").exists(),
        "{form}: test mode changed files"
    );
    assert!(fake.state("active/telnetd").exists());
    assert!(
        fake.take_calls().iter().all(|c| c.contains(" is-") || c.starts_with("dpkg-query")),
        "{form}: test mode ran more than probes"
    );

    let first = run_states(&calls, false, &env);
    assert!(first.iter().all(|r| !r.outcome.is_failed()), "{form}: {first:#?}");
    assert_eq!(
        fs::read_to_string(root.path().join("etc/nginx/site.conf")).unwrap(),
        "server web1 on debian port 8080\n"
    );
    assert_eq!(
        fs::read_link(root.path().join("etc/nginx/sites-enabled/site.conf")).unwrap(),
        root.path().join("etc/nginx/site.conf")
    );
    assert!(!default_site.exists());
    assert!(root.path().join("var/lib/site/reloaded").exists(), "{form}: onchanges did not run");
    assert_eq!(fs::read_to_string(fake.state("pkgs/nginx")).unwrap(), "1.2");
    assert!(fake.state("active/nginx").exists() && fake.state("enabled/nginx").exists());
    assert!(!fake.state("active/telnetd").exists() && !fake.state("enabled/telnetd").exists());
    let calls_made = fake.take_calls();

    let second = run_states(&calls, false, &env);
    Run {
        test_mode: summary(&test_mode, root.path()),
        first: summary(&first, root.path()),
        second: summary(&second, root.path()),
        calls: calls_made,
    }
}

#[test]
fn salt_form_and_native_form_apply_the_same() {
    let native = apply("native");
    let mut salt = apply("salt");
    // The one documented difference: a `.sls` command line runs through
    // `/bin/sh -c`, as in Salt (sls::dialect).
    for line in salt.test_mode.iter_mut().chain(salt.first.iter_mut()) {
        *line = line.replace("`/bin/sh -c 'touch reloaded'`", "`touch reloaded`");
    }
    assert_eq!(salt.test_mode, native.test_mode);
    assert_eq!(salt.first, native.first);
    assert_eq!(salt.second, native.second);
    assert_eq!(salt.calls, native.calls);
    // Converged: the second run changes nothing (and so triggers nothing).
    assert!(native.second.iter().all(|line| line.contains(" unchanged: ")), "{:#?}", native.second);
    assert!(native.first.iter().any(|l| l.starts_with("service.running changed: ") && l.contains("start nginx")));
    assert!(
        native.calls.contains(&"apt-get install -y --no-install-recommends nginx=1.2".to_owned()),
        "{:#?}",
        native.calls
    );
}
