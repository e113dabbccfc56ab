//! What the outside publisher may carry (issue #14, items 12 and 13): no
//! command output, no webhook response bodies, no webhook URL query (a
//! token), in the bus nor in the master's log. Each test performs the leak
//! the issue found on a real master and looks for the secret everywhere it
//! went before the fix.

use anyhow::{Context as _, ensure};
use halite_e2e::Fleet;

const RESTORE_MOTD: &str = "- name: restore-motd\n  on: halite/beacon/*/motd\n  apply: [motd]\n";

/// Every event the bus carried, as text.
fn bus_text(fleet: &Fleet) -> String {
    fleet.seen.iter().map(|e| format!("{} {}\n", e.tag, e.json)).collect()
}

/// A webhook that is refused and one that is black-holed (a listener that
/// never answers), both with `?token=SECRET` in their URL, a `run` command
/// and an `exec` hook that fail printing a secret on stderr: each reaction
/// fails, and neither the bus nor the master's log holds a secret (the
/// commands print it in two pieces, so that their command lines, which
/// events do name, do not hold it); the
/// hook's and the command's stderr are in the job store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_webhook_urls_and_command_output_reach_neither_the_bus_nor_the_log() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    // Bound, never accepted: the connection completes in the backlog and
    // the request is never answered.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = black_hole.local_addr().unwrap().port();
    let reactors = format!(
        "{RESTORE_MOTD}\
         - name: refused\n  on: halite/beacon/*/motd\n  webhook:\n    url: http://127.0.0.1:{refused_port}/hook?token=SECRET-refused\n    insecure_http: true\n    retries: 1\n    timeout: 1s\n\
         - name: hole\n  on: halite/beacon/*/motd\n  webhook:\n    url: http://127.0.0.1:{hole_port}/hook?token=SECRET-hole\n    insecure_http: true\n    retries: 1\n    timeout: 500ms\n\
         - name: loud-run\n  on: halite/beacon/*/motd\n  run: sh -c 'printf \"%s%s\\n\" SEC RET-run-stderr >&2; printf \"%s%s\\n\" SEC RET-run-stdout; exit 3'\n\
         - name: quiet-run\n  on: halite/beacon/*/motd\n  run: sh -c 'printf \"%s%s\\n\" SEC RET-ok-stdout'\n\
         - name: loud-exec\n  on: halite/beacon/*/motd\n  exec: hooks/leak.sh\n"
    );
    let files = [
        ("reactors.yaml", reactors.as_str()),
        ("hooks/leak.sh", "#!/bin/sh\necho SECRET-exec-stdout\necho SECRET-exec-stderr >&2\nexit 2\n"),
    ];
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &files).await.unwrap();
    let result = async {
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        // An agent's reactions run in the reactors' order.
        let mut errors = Vec::new();
        for (reactor, end) in [
            ("refused", "failed"),
            ("hole", "failed"),
            ("loud-run", "failed"),
            ("quiet-run", "fired"),
            ("loud-exec", "failed"),
        ] {
            let tag = format!("halite/reactor/{reactor}/{end}");
            let ended = fleet.wait_for(&tag, |e| e.tag == tag).await?;
            if end == "failed" {
                errors.push(ended.data()["error"].as_str().unwrap_or_default().to_owned());
            }
        }
        // The failures still say what failed.
        ensure!(errors[0].contains("127.0.0.1") && errors[0].contains("after 2 attempts"), "{}", errors[0]);
        ensure!(errors[2].contains("failed on web01"), "{}", errors[2]);
        ensure!(errors[3].contains("exit status: 2"), "{}", errors[3]);
        let bus = bus_text(&fleet);
        ensure!(!bus.contains("SECRET"), "a secret on the bus:\n{bus}");
        let log = std::fs::read_to_string(&fleet.master().log)?;
        ensure!(!log.contains("SECRET"), "a secret in the master's log:\n{log}");
        // What the bus left out is in the store, for the master's owner.
        let exec_job = errors[3].split("output in job ").nth(1).and_then(|t| t.split(':').next()).context("job")?;
        let kept = fleet.cli(&["jobs", exec_job])?;
        ensure!(kept.contains("SECRET-exec-stderr"), "{kept}");
        let run_job = errors[2].strip_prefix("job ").and_then(|t| t.split(':').next()).context("run's job")?;
        let kept = fleet.cli(&["jobs", run_job])?;
        ensure!(kept.contains("SECRET-run-stderr"), "{kept}");
        drop(black_hole);
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
