//! `halite-master apply`, `halite-master jobs` and `halite-agent apply
//! --local` on real processes: results printed, a second apply changes
//! nothing, `--test` changes nothing, an agent that does not answer is
//! reported (exit 2), and the job history survives a master crash.

use halite_e2e::{CommandOutput, Fleet, mode_of};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const APP: &str = "\
app-conf:
  file.managed:
    path: /etc/app/app.conf
    contents: |
      listen 8080
      workers 4
    mode: \"0640\"
";

const DESIRED: &str = "listen 8080\nworkers 4\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reports_results_is_idempotent_and_is_recorded() {
    let mut fleet = Fleet::start_custom(&["web01", "web02"], &["*"], &[("app.yaml", APP)]).await.unwrap();
    if let Err(error) = scenario(&mut fleet).await {
        fleet.fail(&error);
    }
}

fn jids(json: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    Ok(json["agents"].as_array().into_iter().flatten().filter_map(|a| a["jid"].as_str().map(str::to_owned)).collect())
}

async fn scenario(fleet: &mut Fleet) -> anyhow::Result<()> {
    let mut operator_jobs: Vec<String> = Vec::new();

    // First apply: both agents change, the text names every state.
    let first = fleet.master_command(&["apply", "web*", "app"]).await?;
    anyhow::ensure!(first.code == 0, "first apply: {first:?}");
    assert!(!first.stdout.contains('\x1b'), "piped output has no colour: {first:?}");
    for agent in ["web01", "web02"] {
        let path = fleet.agent(agent).path("/etc/app/app.conf");
        assert_eq!(std::fs::read_to_string(&path)?, DESIRED, "{agent}: written");
        assert_eq!(mode_of(&path), 0o640, "{agent}: mode");
        assert!(first.stdout.contains(&format!("{agent}: 1 changed")), "{first:?}");
    }
    assert!(first.stdout.contains("changed  app-conf  file.managed"), "{first:?}");
    assert!(first.stdout.contains("created "), "the change is described: {first:?}");
    assert!(first.stdout.contains("2 agents: 2 ok; states: 2 changed"), "{first:?}");
    for line in first.stdout.lines().filter(|l| l.contains("  job ")) {
        operator_jobs.push(line.rsplit(' ').next().unwrap_or_default().to_owned());
    }
    assert_eq!(operator_jobs.len(), 2, "one job per agent: {first:?}");

    // Again: nothing to do, nothing done.
    let again = fleet.master_command(&["apply", "web*", "app", "--json"]).await?;
    anyhow::ensure!(again.code == 0, "second apply: {again:?}");
    let json = again.json()?;
    assert_eq!(json["summary"]["unchanged"], 2, "{json}");
    assert_eq!(json["summary"]["changed"], 0, "{json}");
    assert_eq!(json["exit_code"], 0);
    operator_jobs.extend(jids(&again.json()?)?);

    // A hand edit, then --test: the change is reported and not made.
    let web01_conf = fleet.agent("web01").path("/etc/app/app.conf");
    std::fs::write(&web01_conf, "listen 9090\n")?;
    let test = fleet.master_command(&["apply", "web01", "app", "--test", "--json"]).await?;
    anyhow::ensure!(test.code == 0, "--test: {test:?}");
    let json = test.json()?;
    assert_eq!(json["test"], true);
    let state = &json["agents"][0]["states"][0];
    assert_eq!(state["outcome"], "would_change", "{json}");
    assert!(state["changes"][0].as_str().unwrap_or_default().contains("content of"), "{json}");
    assert_eq!(std::fs::read_to_string(&web01_conf)?, "listen 9090\n", "--test changed nothing");
    operator_jobs.extend(jids(&test.json()?)?);

    // No STATE: each agent's top.yaml states (a highstate); the hand edit
    // of a file outside top.yaml stays.
    let high = fleet.master_command(&["apply", "web01", "--json"]).await?;
    anyhow::ensure!(high.code == 0, "highstate: {high:?}");
    let high = high.json()?;
    let ids: Vec<&str> =
        high["agents"][0]["states"].as_array().into_iter().flatten().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, ["motd", "nginx-conf"]);
    operator_jobs.extend(jids(&high)?);

    // A target that matches nothing is an error, with exit code 2.
    let none = fleet.master_command(&["apply", "db*", "app"]).await?;
    assert_eq!(none.code, 2, "{none:?}");
    assert!(none.stderr.contains("target `db*` matches no connected agent (connected: web01, web02)"), "{none:?}");
    let unknown = fleet.master_command(&["apply", "web*", "nope"]).await?;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("state file `nope` does not exist"), "{unknown:?}");

    // An agent that does not answer: web02 is stopped (its session stays).
    let web02 = Pid::from_raw(i32::try_from(fleet.agent("web02").pid().unwrap_or(0))?);
    kill(web02, Signal::SIGSTOP)?;
    let late = fleet.master_command(&["apply", "web*", "app", "--timeout", "2s", "--json"]).await;
    kill(web02, Signal::SIGCONT)?;
    let late = late?;
    assert_eq!(late.code, 2, "{late:?}");
    let json = late.json()?;
    assert_eq!(json["summary"]["no_answer"], 1, "{json}");
    assert_eq!(json["agents"][1]["agent"], "web02");
    assert!(json["agents"][1]["error"].as_str().unwrap_or_default().contains("did not answer within 2s"), "{json}");
    let late_jids = jids(&json)?;
    operator_jobs.extend(late_jids.clone());
    // Once continued, web02 answers late; the store records that answer.
    let web02_jid = late_jids[1].clone();
    fleet.wait_for("web02's late answer", |e| e.tag == format!("halite/job/{web02_jid}/ret/web02")).await?;

    // The history, with the master running.
    let listed = fleet.master_command(&["jobs", "--json", "--limit", "100"]).await?;
    anyhow::ensure!(listed.code == 0, "jobs: {listed:?}");
    let listed_jids: Vec<String> =
        listed.json()?.as_array().into_iter().flatten().filter_map(|j| j["jid"].as_str().map(str::to_owned)).collect();
    for jid in &operator_jobs {
        assert!(listed_jids.contains(jid), "job {jid} is listed: {listed_jids:?}");
    }

    // A crash, then the history read with the master stopped, and again
    // after it is back.
    let listen = fleet.master().listen.clone();
    fleet.kill_master().await;
    let stopped = fleet.master_command(&["jobs", "--limit", "100"]).await?;
    anyhow::ensure!(stopped.code == 0, "jobs with the master stopped: {stopped:?}");
    for jid in &operator_jobs {
        assert!(stopped.stdout.contains(jid.as_str()), "job {jid} listed after the crash: {stopped:?}");
    }
    assert!(stopped.stdout.contains("operator:"), "the cause is the operator's command: {stopped:?}");
    assert!(stopped.stdout.contains("connected"), "start-up applies are jobs too: {stopped:?}");
    fleet.restart_master(&listen).await?;
    let restarted = fleet.master_command(&["jobs", "--json", "--limit", "100"]).await?;
    let restarted_jids: Vec<String> = restarted
        .json()?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["jid"].as_str().map(str::to_owned))
        .collect();
    for jid in &operator_jobs {
        assert!(restarted_jids.contains(jid), "job {jid} listed after the restart");
    }

    // One job in detail, printed as apply prints it.
    let shown = fleet.master_command(&["jobs", &operator_jobs[0]]).await?;
    anyhow::ensure!(shown.code == 0, "jobs JID: {shown:?}");
    assert!(shown.stdout.contains("cause:  operator:"), "{shown:?}");
    assert!(
        shown.stdout.contains("operator:halite-master apply 'web*' app"),
        "the command line is the cause: {shown:?}"
    );
    assert!(shown.stdout.contains("changed  app-conf  file.managed"), "{shown:?}");
    let detail = fleet.master_command(&["jobs", &web02_jid, "--json"]).await?.json()?;
    assert_eq!(detail["report"]["agents"][0]["status"], "answered", "the late answer is recorded: {detail}");
    let missing = fleet.master_command(&["jobs", "0000"]).await?;
    assert_eq!(missing.code, 1, "{missing:?}");
    Ok(())
}

/// Masterless: the same report, test mode changes nothing, a second run
/// finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_local_applies_a_tree_without_a_master() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("states");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("top.yaml"), "'web*': [app]\n").unwrap();
    std::fs::write(tree.join("app.yaml"), APP).unwrap();
    let binaries = halite_e2e::binaries();
    let run = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(&binaries.agent);
        command
            .args(["apply", "--local"])
            .arg(&tree)
            .args(["--id", "web01", "--root"])
            .arg(&root)
            .args(["--config", "/nonexistent/agent.yaml"])
            .args(extra);
        CommandOutput::of(command)
    };
    let conf = root.join("etc/app/app.conf");

    let test = run(&["--test"]).await.unwrap();
    assert_eq!(test.code, 0, "{test:?}");
    assert!(test.stdout.contains("web01: 1 would change"), "{test:?}");
    assert!(test.stdout.contains("(test: nothing was changed)"), "{test:?}");
    assert!(!conf.exists(), "--test changed nothing");

    let first = run(&[]).await.unwrap();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("changed  app-conf  file.managed"), "{first:?}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), DESIRED);

    let again = run(&["--json"]).await.unwrap();
    assert_eq!(again.code, 0, "{again:?}");
    let json = again.json().unwrap();
    assert_eq!(json["summary"]["unchanged"], 1, "{json}");
    assert_eq!(json["agents"][0]["agent"], "web01");

    std::fs::write(tree.join("app.yaml"), "app-conf:\n  file.manged: {}\n").unwrap();
    let broken = run(&[]).await.unwrap();
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stderr.contains("app.yaml:2:3: error: unknown state kind `file.manged`"), "{broken:?}");
}
