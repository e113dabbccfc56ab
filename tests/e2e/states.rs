//! The state engine end to end: a job built by the master (template
//! rendered with the agent's facts and vars.yaml, requisites across kinds,
//! fact targeting in top.yaml) applied by a real agent.

use halite_e2e::{Fleet, wait_until};

const TOP: &str = "'L@web01 and G@os:*': [app]\n'db*': [app]\n";
const VARS: &str = "'*': {greeting: hi}\n'web*': {greeting: hello}\n";
const APP: &str = r#"app-dir:
  file.directory:
    path: /srv/app
    makedirs: true
app-conf:
  file.managed:
    path: /srv/app/app.conf
    template: jinja
    contents: |
      {{ vars.greeting }} {{ id }} on {{ facts.os }}
    require: [app-dir]
app-link:
  file.symlink:
    path: /srv/app/current
    target: app.conf
    require:
      - file: app-conf
announce:
  cmd.run:
    name: [echo, conf changed]
    onchanges: [app-conf]
broken:
  cmd.run:
    name: ["false"]
skipped:
  cmd.run:
    name: [echo, never]
    require: [broken]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_renders_templates_and_follows_requisites() {
    let files = [("top.yaml", TOP), ("vars.yaml", VARS), ("app.yaml", APP)];
    let fleet = Fleet::start_custom(&["web01"], &["*"], &files).await.unwrap();
    // The answer is published when it arrives and committed to the store
    // just after (its ack waits for the commit, the bus does not): `jobs`
    // shows it once the store has it.
    let jid = fleet.seen.iter().rev().find(|e| e.tag.ends_with("/ret/web01")).and_then(|e| e.job()).map(str::to_owned);
    let stored = wait_until("the start-up job's answer in the store", || {
        jid.as_deref()
            .is_some_and(|jid| fleet.cli(&["jobs", jid]).is_ok_and(|kept| kept.contains("stdout: conf changed")))
    })
    .await;
    if let Err(error) = stored {
        fleet.fail(&error);
    }
    let result = (|| {
        let ret =
            fleet.seen.iter().rev().find(|e| e.tag.ends_with("/ret/web01")).ok_or(anyhow::anyhow!("no job result"))?;
        let results = ret.data()["results"].as_array().cloned().unwrap_or_default();
        let outcomes: Vec<(String, String)> = results
            .iter()
            .map(|r| (r["id"].as_str().unwrap_or("").to_owned(), r["outcome"].as_str().unwrap_or("").to_owned()))
            .collect();
        let expected = [
            ("app-dir", "changed"),
            ("app-conf", "changed"),
            ("app-link", "changed"),
            ("announce", "changed"),
            ("broken", "failed"),
            ("skipped", "failed"),
        ];
        let expected: Vec<(String, String)> =
            expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        anyhow::ensure!(outcomes == expected, "outcomes: {outcomes:?}");
        anyhow::ensure!(results[5]["error"] == "requisite `broken` failed", "{}", results[5]);
        // A command's output is kept in the store, not published.
        anyhow::ensure!(results[3]["changes"].as_array().map(Vec::len) == Some(1), "{}", results[3]);
        let kept = fleet.cli(&["jobs", ret.job().unwrap_or_default()])?;
        anyhow::ensure!(kept.contains("stdout: conf changed"), "{kept}");

        let agent = fleet.agent("web01");
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("ID=").map(|v| v.trim_matches('"').to_owned())))
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        let conf = std::fs::read_to_string(agent.path("/srv/app/app.conf"))?;
        anyhow::ensure!(conf == format!("hello web01 on {os}\n"), "rendered: {conf:?}");
        let link = std::fs::read_link(agent.path("/srv/app/current"))?;
        anyhow::ensure!(link == std::path::Path::new("app.conf"), "link: {link:?}");
        anyhow::Ok(())
    })();
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
