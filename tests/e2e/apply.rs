//! `halite-master apply`, `halite-master jobs` and `halite-agent apply
//! --local` on real processes: results printed, a second apply changes
//! nothing, `--test` changes nothing, an agent that does not answer is
//! reported (exit 2), and the job history survives a master crash.

use halite_e2e::{CommandOutput, Fleet, mode_of};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A templated file in a directory, and a command run only when the file
/// changed: it appends to `reloads.log` in the agent's directory (its
/// working directory), so the test can count the runs.
const APP: &str = "\
app-dir:
  file.directory:
    path: /srv/app
    mode: \"0755\"
    makedirs: true
app-conf:
  file.managed:
    path: /srv/app/app.conf
    source: files/app.conf.j2
    template: jinja
    mode: \"0640\"
    require: [app-dir]
app-reload:
  cmd.run:
    name: echo reloaded >> reloads.log
    shell: true
    onchanges: [app-conf]
";

const TEMPLATE: &str = "server {{ id }}\nlisten 8080\n";

fn desired(agent: &str) -> String {
    format!("server {agent}\nlisten 8080\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reports_results_is_idempotent_and_is_recorded() {
    let files = [("app.yaml", APP), ("files/app.conf.j2", TEMPLATE)];
    let mut fleet = Fleet::start_custom(&["web01", "web02"], &["*"], &files).await.unwrap();
    if let Err(error) = scenario(&mut fleet).await {
        fleet.fail(&error);
    }
}

fn jids(json: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    Ok(json["agents"].as_array().into_iter().flatten().filter_map(|a| a["jid"].as_str().map(str::to_owned)).collect())
}

/// Whether some line of `text` holds every one of `words`, in order.
fn has_line(text: &str, words: &[&str]) -> bool {
    text.lines().any(|line| {
        let mut rest = line;
        words.iter().all(|w| match rest.find(w) {
            Some(at) => {
                rest = &rest[at + w.len()..];
                true
            }
            None => false,
        })
    })
}

/// How many times `app-reload` ran on `agent`.
fn reloads(fleet: &Fleet, agent: &str) -> usize {
    std::fs::read_to_string(fleet.agent(agent).dir.join("reloads.log")).map(|t| t.lines().count()).unwrap_or(0)
}

async fn scenario(fleet: &mut Fleet) -> anyhow::Result<()> {
    let mut operator_jobs: Vec<String> = Vec::new();

    // First apply: on both agents the directory, the file rendered for
    // that agent, and the command; the text shows each state and the diff.
    let first = fleet.master_command(&["apply", "web*", "app"]).await?;
    anyhow::ensure!(first.code == 0, "first apply: {first:?}");
    assert!(!first.stdout.contains('\x1b'), "piped output has no colour: {first:?}");
    for agent in ["web01", "web02"] {
        let dir = fleet.agent(agent).path("/srv/app");
        assert!(dir.is_dir(), "{agent}: the directory");
        assert_eq!(mode_of(&dir), 0o755, "{agent}: its mode");
        let conf = fleet.agent(agent).path("/srv/app/app.conf");
        assert_eq!(std::fs::read_to_string(&conf)?, desired(agent), "{agent}: rendered for it");
        assert_eq!(mode_of(&conf), 0o640, "{agent}: mode");
        assert_eq!(reloads(fleet, agent), 1, "{agent}: the command ran once");
        assert!(first.stdout.contains(&format!("{agent}: 3 changed")), "{first:?}");
        assert!(first.stdout.contains(&format!("+server {agent}")), "{agent}'s diff: {first:?}");
    }
    for (id, kind) in [("app-dir", "file.directory"), ("app-conf", "file.managed"), ("app-reload", "cmd.run")] {
        assert!(has_line(&first.stdout, &["changed", id, kind]), "{id}: {first:?}");
    }
    assert!(first.stdout.contains("2 agents: 2 ok; states: 6 changed"), "{first:?}");
    for line in first.stdout.lines().filter(|l| l.contains("  job ")) {
        operator_jobs.push(line.rsplit(' ').next().unwrap_or_default().to_owned());
    }
    assert_eq!(operator_jobs.len(), 2, "one job per agent: {first:?}");

    // Again: nothing to do, nothing done, no command run.
    let again = fleet.master_command(&["apply", "web*", "app", "--json"]).await?;
    anyhow::ensure!(again.code == 0, "second apply: {again:?}");
    let json = again.json()?;
    assert_eq!(json["summary"]["unchanged"], 6, "{json}");
    assert_eq!(json["summary"]["changed"], 0, "{json}");
    assert_eq!(json["exit_code"], 0);
    assert_eq!((reloads(fleet, "web01"), reloads(fleet, "web02")), (1, 1), "no command ran");
    operator_jobs.extend(jids(&json)?);

    // A hand edit, then --test: the diff is shown, nothing is changed and
    // the command does not run.
    let web01_conf = fleet.agent("web01").path("/srv/app/app.conf");
    std::fs::write(&web01_conf, "server web01\nlisten 9090\n")?;
    let test = fleet.master_command(&["apply", "web01", "app", "--test"]).await?;
    anyhow::ensure!(test.code == 0, "--test: {test:?}");
    assert!(has_line(&test.stdout, &["would change", "app-conf", "file.managed"]), "{test:?}");
    assert!(test.stdout.contains("-listen 9090") && test.stdout.contains("+listen 8080"), "the diff: {test:?}");
    assert!(test.stdout.contains("(test: nothing was changed)"), "{test:?}");
    assert_eq!(std::fs::read_to_string(&web01_conf)?, "server web01\nlisten 9090\n", "--test changed nothing");
    assert_eq!(reloads(fleet, "web01"), 1, "--test ran no command");
    let test_jid = test.stdout.lines().find(|l| l.contains("  job ")).and_then(|l| l.rsplit(' ').next());
    operator_jobs.push(test_jid.unwrap_or_default().to_owned());

    // No STATE: each agent's top.yaml states (a highstate); the hand edit
    // of a file outside top.yaml stays.
    let high = fleet.master_command(&["apply", "web01", "--json"]).await?;
    anyhow::ensure!(high.code == 0, "highstate: {high:?}");
    let high = high.json()?;
    let ids: Vec<&str> =
        high["agents"][0]["states"].as_array().into_iter().flatten().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, ["motd", "nginx-conf"]);
    operator_jobs.extend(jids(&high)?);

    // A target that matches nothing is an error, with exit code 4.
    let none = fleet.master_command(&["apply", "db*", "app"]).await?;
    assert_eq!(none.code, 4, "{none:?}");
    assert!(none.stderr.contains("target `db*` matches no connected agent (connected: web01, web02)"), "{none:?}");
    // A compound target, matched with the agents' facts.
    let listed = fleet.master_command(&["apply", "L@web02,db01 and G@id:web02", "app", "--test", "--json"]).await?;
    anyhow::ensure!(listed.code == 0, "compound target: {listed:?}");
    let listed = listed.json()?;
    let agents: Vec<&str> =
        listed["agents"].as_array().into_iter().flatten().filter_map(|a| a["agent"].as_str()).collect();
    assert_eq!(agents, ["web02"], "{listed}");
    operator_jobs.extend(jids(&listed)?);
    let unknown = fleet.master_command(&["apply", "web*", "nope"]).await?;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("state file `nope` does not exist"), "{unknown:?}");

    // An agent that does not answer: web02 is stopped (its session stays).
    let web02 = Pid::from_raw(i32::try_from(fleet.agent("web02").pid().unwrap_or(0))?);
    kill(web02, Signal::SIGSTOP)?;
    let late = fleet.master_command(&["apply", "web*", "app", "--timeout", "2s", "--json"]).await;
    kill(web02, Signal::SIGCONT)?;
    let late = late?;
    assert_eq!(late.code, 3, "no answer has its own exit code: {late:?}");
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
    assert!(has_line(&shown.stdout, &["changed", "app-conf", "file.managed"]), "{shown:?}");
    assert!(shown.stdout.contains("+server web"), "the diff is kept: {shown:?}");
    let detail = fleet.master_command(&["jobs", &web02_jid, "--json"]).await?.json()?;
    assert_eq!(detail["report"]["agents"][0]["status"], "answered", "the late answer is recorded: {detail}");
    let missing = fleet.master_command(&["jobs", "0000"]).await?;
    assert_eq!(missing.code, 4, "no such job: {missing:?}");
    Ok(())
}

/// Masterless: the same report, test mode changes nothing, a second run
/// finds nothing to do and runs no command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_local_applies_a_tree_without_a_master() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("states");
    let root = dir.path().join("root");
    std::fs::create_dir_all(tree.join("files")).unwrap();
    std::fs::write(tree.join("top.yaml"), "'web*': [app]\n").unwrap();
    std::fs::write(tree.join("app.yaml"), APP).unwrap();
    std::fs::write(tree.join("files/app.conf.j2"), TEMPLATE).unwrap();
    let binaries = halite_e2e::binaries();
    let run = |extra: &[&str]| {
        let mut command = halite_e2e::process(&binaries.agent);
        command
            .current_dir(dir.path())
            .args(["apply", "--local"])
            .arg(&tree)
            .args(["--id", "web01", "--root"])
            .arg(&root)
            .args(["--config", "/nonexistent/agent.yaml"])
            .args(extra);
        CommandOutput::of(command)
    };
    let conf = root.join("srv/app/app.conf");
    let reloads = || std::fs::read_to_string(dir.path().join("reloads.log")).map(|t| t.lines().count()).unwrap_or(0);

    let test = run(&["--test"]).await.unwrap();
    assert_eq!(test.code, 0, "{test:?}");
    assert!(test.stdout.contains("web01: 3 would change"), "{test:?}");
    assert!(test.stdout.contains("+server web01"), "the diff: {test:?}");
    assert!(test.stdout.contains("(test: nothing was changed)"), "{test:?}");
    assert!(!root.join("srv/app").exists(), "--test changed nothing");
    assert_eq!(reloads(), 0, "--test ran no command");

    let first = run(&[]).await.unwrap();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(has_line(&first.stdout, &["changed", "app-conf", "file.managed"]), "{first:?}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), desired("web01"));
    assert_eq!(reloads(), 1);

    let again = run(&["--json"]).await.unwrap();
    assert_eq!(again.code, 0, "{again:?}");
    let json = again.json().unwrap();
    assert_eq!(json["summary"]["unchanged"], 3, "{json}");
    assert_eq!(json["agents"][0]["agent"], "web01");
    assert_eq!(reloads(), 1, "nothing changed, so the command did not run");

    std::fs::write(tree.join("app.yaml"), "app-conf:\n  file.manged: {}\n").unwrap();
    let broken = run(&[]).await.unwrap();
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stderr.contains("app.yaml:2:3: error: unknown state kind `file.manged`"), "{broken:?}");
}
