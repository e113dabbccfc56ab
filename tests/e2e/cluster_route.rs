//! Operators' `apply` and `cmd` on one master reach agents homed on
//! another (issue #20 item 5, `server/cluster/route.rs`): the job goes to
//! the agent's master through PostgreSQL, runs there as a local job, and
//! its answer joins the stream of the master asked. Authorization and the
//! audit row stay where the operator asked; a master that does not answer
//! gives its agents a bounded "no answer" result, not a hang; a master
//! whose agent has gone answers "not connected".
//!
//! Each test runs two real masters (A: the fleet's, with web01; B beside
//! it) on one real PostgreSQL database; B's agents list B only, so where
//! each agent is stays fixed.

use std::path::Path;
use std::time::Instant;

use halite_e2e::postgres::Postgres;
use halite_e2e::{CommandOutput, Fleet, WAIT};
use halite_master::fleet::{self, MasterProcess};
use halite_master::server::store::postgres::PgTarget;

/// A templated file: rendered by the master that sends the job.
const APP: &str = "\
app-conf:
  file.managed:
    path: /srv/app/app.conf
    source: files/app.conf.j2
    template: jinja
    makedirs: true
";

const TEMPLATE: &str = "server {{ id }}\n";

/// `web-ops` reaches `web*` only, with `apply` and `cmd`.
const ROLES: &str = "roles:\n  web-ops:\n    verbs: [read, apply, cmd]\n    target: 'web*'\n";

/// PostgreSQL, and A (the fleet's master, with web01 and the API) on it
/// with `ROLES`.
async fn start() -> (Postgres, String, Fleet, String) {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let password = cluster.password_file(&std::env::temp_dir()).unwrap();
    let yaml = format!("store:\n  url: {}\n  password_file: {}\n", cluster.url(&database), password.display());
    let files = [("app.yaml", APP), ("files/app.conf.j2", TEMPLATE)];
    let a_yaml = format!("{yaml}{ROLES}api:\n  listen: 127.0.0.1:0\n");
    let fleet = Fleet::start_custom_with_master_config(&["web01"], &files, &a_yaml).await.unwrap();
    (cluster, database, fleet, yaml)
}

/// Master B on the fleet's tree and database, and `agents` connected to it
/// only.
async fn master_b(fleet: &mut Fleet, yaml: &str, agents: &[&str]) -> anyhow::Result<MasterProcess> {
    let b = fleet.start_peer_master("master-b", &format!("{yaml}{ROLES}")).await?;
    for id in agents {
        let agent =
            fleet::start_agent_with(&fleet.binaries, &fleet.dir.path().join(id), id, &b.listen, &b.key, "").await?;
        fleet.agents.push(agent);
    }
    Ok(b)
}

/// Until A's `agents` shows each of `agents` on master `b` (one heartbeat).
async fn until_placed(fleet: &Fleet, b: &str, agents: &[&str]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        let rows: serde_json::Value = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
        let on_b = |id: &str| {
            rows.as_array().is_some_and(|r| r.iter().any(|row| row["id"] == id && row["master"] == b))
                && fleet
                    .cli(&["keys", "list"])
                    .is_ok_and(|keys| keys.lines().any(|l| l.contains(id) && l.contains("accepted")))
        };
        if agents.iter().all(|id| on_b(id)) {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "A never saw {agents:?} on B: {rows}");
        tick.tick().await;
    }
}

/// `halite-master ARGS` against A.
async fn on_a(fleet: &Fleet, args: &[&str]) -> anyhow::Result<CommandOutput> {
    fleet.master_command(args).await
}

/// `halite-master [TOKEN] cmd OPTIONS --data-dir A's TARGET -- ARGV`: the
/// data dir before the `--`.
async fn cmd_on_a(
    fleet: &Fleet,
    token: Option<&str>,
    options: &[&str],
    argv: &[&str],
) -> anyhow::Result<CommandOutput> {
    let mut command = halite_e2e::process(&fleet.binaries.master);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.arg("cmd").args(options).arg("--data-dir").arg(fleet.master_data_dir()).arg("--").args(argv);
    CommandOutput::of(command).await
}

/// The cause PostgreSQL recorded for job `jid` (written by the master that
/// ran it).
async fn cause_of(target: &PgTarget, jid: &str) -> anyhow::Result<Option<String>> {
    let client = target.connect().await?;
    let row = client.query_opt("SELECT cause FROM jobs WHERE jid = $1", &[&jid]).await?;
    Ok(row.map(|r| r.get(0)))
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn fail(fleet: &Fleet, b_log: Option<&Path>, cluster: &Postgres, error: &anyhow::Error) -> ! {
    if let Some(log) = b_log {
        eprintln!("===== master B =====\n{}", log_of(log));
    }
    eprintln!("===== postgres =====\n{}", cluster.log());
    fleet.fail(error)
}

/// On A: `apply` for web02 (on B) writes web02's file on B's agent, `cmd`
/// returns web02's output, a target over both masters answers for every
/// agent (the CLI, and the API's stream with `batch: 1`), the job runs on
/// B under the id A showed with a cause naming A and the operator; a
/// `web-ops` token asking A for db01 (on B) is
/// refused, sends nothing, and the refusal is in A's audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_cmd_on_one_master_reach_agents_homed_on_another() {
    let (cluster, database, mut fleet, yaml) = start().await;
    let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
    let mut b_log = None;
    let result = async {
        let b = master_b(&mut fleet, &yaml, &["web02", "db01"]).await?;
        b_log = Some(b.log.clone());
        let b_name = b.listen.clone();
        let a_name = fleet.master().listen.clone();
        until_placed(&fleet, &b_name, &["web02", "db01"]).await?;

        // apply on A for web02 on B: B renders and sends it; the file is
        // written on web02.
        let conf = fleet.agent("web02").path("/srv/app/app.conf");
        assert!(!conf.exists(), "app.conf exists before the apply");
        let applied = on_a(&fleet, &["apply", "--json", "web02", "app"]).await?;
        assert_eq!(applied.code, 0, "{applied:?}");
        assert_eq!(std::fs::read_to_string(&conf)?, "server web02\n", "{applied:?}");
        let report = applied.json()?;
        let jid = report["agents"][0]["jid"].as_str().unwrap_or_default().to_owned();
        assert_eq!(report["agents"][0]["agent"], "web02", "{report}");
        let cause = cause_of(&target, &jid).await?.unwrap_or_default();
        assert!(cause.contains(&format!("asked on master {a_name} by local:uid:")), "job {jid}: {cause}");
        assert!(cause.contains("apply"), "job {jid}: {cause}");

        // cmd on A returns web02's output, from B.
        let ran = cmd_on_a(&fleet, None, &["--json", "web02"], &["echo", "routed hello"]).await?;
        assert_eq!(ran.code, 0, "{ran:?}");
        let line: serde_json::Value = serde_json::from_str(ran.stdout.lines().next().unwrap_or_default())?;
        assert_eq!((line["agent"].as_str(), line["stdout"].as_str()), (Some("web02"), Some("routed hello\n")));

        // A target over both masters answers for each agent.
        let ran = cmd_on_a(&fleet, None, &["--json", "*"], &["echo", "hi"]).await?;
        assert_eq!(ran.code, 0, "{ran:?}");
        let mut agents: Vec<String> = ran
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["stdout"] == "hi\n")
            .filter_map(|l| l["agent"].as_str().map(str::to_owned))
            .collect();
        agents.sort();
        assert_eq!(agents, ["db01", "web01", "web02"], "{ran:?}");
        let applied = on_a(&fleet, &["apply", "--json", "web*", "app"]).await?;
        assert_eq!(applied.code, 0, "{applied:?}");
        let report = applied.json()?;
        let mut answered: Vec<&str> = report["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["status"] == "answered")
            .filter_map(|a| a["agent"].as_str())
            .collect();
        answered.sort_unstable();
        assert_eq!(answered, ["web01", "web02"], "{applied:?}");
        assert_eq!(std::fs::read_to_string(fleet.agent("web01").path("/srv/app/app.conf"))?, "server web01\n");

        // The API on A streams both masters' agents, one at a time
        // (`batch: 1`: the rollout runs across masters).
        let admin = fleet.cli(&["tokens", "create", "root", "--role", "admin"])?.trim().to_owned();
        let pem = std::fs::read(fleet.master_data_dir().join("api.crt"))?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let url = fleet.master().api.clone().unwrap_or_default();
        let body = serde_json::json!({ "target": "web*", "states": ["app"], "test": true, "batch": 1 });
        let response = client
            .post(format!("{url}/api/v1/apply"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await?;
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let kinds: Vec<&str> = lines.iter().filter_map(|l| l["line"].as_str()).collect();
        assert_eq!(kinds, ["started", "agent", "agent", "done"], "{text}");
        let mut streamed: Vec<(&str, &str)> = lines
            .iter()
            .filter(|l| l["line"] == "agent")
            .map(|l| (l["result"]["agent"].as_str().unwrap_or("?"), l["result"]["status"].as_str().unwrap_or("?")))
            .collect();
        streamed.sort_unstable();
        assert_eq!(streamed, [("web01", "answered"), ("web02", "answered")], "{text}");

        // web-ops asks A for db01, on B: refused on A, nothing sent, audited on A.
        let ops = fleet.cli(&["tokens", "create", "ops", "--role", "web-ops"])?.trim().to_owned();
        let jobs_before = cluster_jobs(&target).await?;
        let refused = cmd_on_a(&fleet, Some(&ops), &["db01"], &["true"]).await?;
        assert!(refused.code != 0 && refused.stderr.contains("web*"), "cmd: {refused:?}");
        let refused = on_a(&fleet, &["--token", &ops, "apply", "db01", "app"]).await?;
        assert!(refused.code != 0 && refused.stderr.contains("web*"), "apply: {refused:?}");
        assert_eq!(cluster_jobs(&target).await?, jobs_before, "a refused request sent a job");
        // The audit log is PostgreSQL's: read through A's master.yaml.
        let a_config = fleet.master_data_dir().parent().expect("the master dir").join("master.yaml");
        let audit = fleet.cli(&["audit", "--json", "--config", &a_config.to_string_lossy()])?;
        let refusals = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["who"] == "token:ops" && r["target"] == "db01")
            .filter(|r| r["result"].as_str().is_some_and(|s| s.starts_with("refused") && s.contains("db01")))
            .count();
        assert_eq!(refusals, 2, "A's audit log: {audit}");
        // The same token reaches web02 on B.
        let ran = cmd_on_a(&fleet, Some(&ops), &["--json", "web02"], &["true"]).await?;
        assert_eq!(ran.code, 0, "{ran:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail(&fleet, b_log.as_deref(), &cluster, &error);
    }
}

/// How many jobs PostgreSQL holds (every master's).
async fn cluster_jobs(target: &PgTarget) -> anyhow::Result<i64> {
    let client = target.connect().await?;
    Ok(client.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0))
}

/// A routed job's master gone: with app03's agent stopped, B answers "not
/// connected" for it (and, as the canary, that failure stops the rollout
/// before web01 on A); with B killed, A answers "no answer from master B
/// within T" once the job's timeout and the routing grace are over, and the
/// request row is gone (a B started again would not run it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_job_whose_agent_or_master_is_gone_is_answered_in_bounded_time() {
    let (cluster, database, mut fleet, yaml) = start().await;
    let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
    let mut b_log = None;
    let result = async {
        let b = master_b(&mut fleet, &yaml, &["web02", "app03"]).await?;
        b_log = Some(b.log.clone());
        let b_name = b.listen.clone();
        until_placed(&fleet, &b_name, &["web02", "app03"]).await?;

        // app03's agent stops; agent_sessions still names B: B answers.
        let app03 = fleet.agents.iter().position(|a| a.id == "app03").unwrap_or_default();
        fleet.agents.remove(app03).kill().await;
        let ran = cmd_on_a(&fleet, None, &["--json", "--timeout", "2s", "app03"], &["true"]).await?;
        assert_eq!(ran.code, 3, "{ran:?}");
        assert!(ran.stdout.contains(&format!("not connected to master {b_name}")), "{ran:?}");
        // A routed agent's failure counts in the rollout like a local
        // one's: app03 (on B, first by id) is the canary; web01 (on A) is
        // never sent its job.
        let applied = on_a(&fleet, &["apply", "--json", "--canary", "1", "L@app03,web01", "app"]).await?;
        assert_ne!(applied.code, 0, "{applied:?}");
        assert!(applied.stderr.contains("stopped: canary app03 failed; not sent to web01"), "{applied:?}");
        assert!(!fleet.agent("web01").path("/srv/app/app.conf").exists(), "web01 was sent the job");

        b.kill().await;
        let started = Instant::now();
        let applied =
            tokio::time::timeout(WAIT * 3, on_a(&fleet, &["apply", "--json", "--timeout", "2s", "web02", "app"]))
                .await??;
        let took = started.elapsed();
        eprintln!("a job routed to a killed master was answered after {took:?} (timeout 2s plus the routing grace)");
        assert_eq!(applied.code, 3, "{applied:?}");
        let agent = &applied.json()?["agents"][0];
        assert_eq!(agent["status"], "no_answer", "{agent}");
        let error = agent["error"].as_str().unwrap_or_default();
        assert!(error.contains(&format!("no answer from master {b_name} within 7s")), "{error}");
        let client = target.connect().await?;
        let left: i64 = client.query_one("SELECT count(*) FROM routed_jobs", &[]).await?.get(0);
        assert_eq!(left, 0, "the request rows are gone");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail(&fleet, b_log.as_deref(), &cluster, &error);
    }
}
