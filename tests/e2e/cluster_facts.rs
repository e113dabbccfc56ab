//! Frozen facts across two real masters on one PostgreSQL (issue #20;
//! `server/cluster/facts.rs`): an agent accepted and frozen on A as
//! `hostname: web07` that connects to B claiming `hostname: db-x` is
//! targeted on B by its frozen facts (no db-tier secret), the claim is held
//! there as on A, a grain target asked on A reaches it on B by its frozen
//! facts, and an operator's acceptance on B is A's too. And the
//! API's job list on A shows the job B ran for it (read from PostgreSQL).

use std::path::Path;

use anyhow::{Context as _, ensure};
use halite_e2e::Fleet;
use halite_e2e::postgres::Postgres;
use halite_e2e::raw::RawAgent;
use halite_link::Keypair;
use halite_master::fleet::MasterProcess;
use halite_proto::{AgentMessage, JobResult};

use crate::cluster_shared::{command, fail_with_logs, until};
use crate::trust::{DB_SECRET, FACTS_TREE, contents, facts};

/// An API on each master, and a role that reads web*.
const API_YAML: &str = "api:\n  listen: 127.0.0.1:0\nroles:\n  web-read:\n    verbs: [read]\n    target: 'web*'\n";

/// `keys facts ID --json` on the master in `dir`: the first row.
async fn facts_row(fleet: &Fleet, dir: &Path, id: &str) -> anyhow::Result<serde_json::Value> {
    let (_, out) = command(fleet, dir, &["keys", "facts", id, "--json"]).await?;
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    Ok(rows[0].clone())
}

/// A throwaway PostgreSQL, and B on it: the fleet's master on the facts
/// tree, accepting every id. `yaml` is B's master.yaml keys, for A too.
struct FactsCluster {
    postgres: Postgres,
    url: String,
    yaml: String,
    fleet: Fleet,
    /// Holds the password file.
    password_dir: tempfile::TempDir,
}

async fn facts_cluster(extra: &str) -> FactsCluster {
    let postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let url = postgres.url(&postgres.database().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let password = postgres.password_file(dir.path()).unwrap();
    let yaml = format!("store:\n  url: {url}\n  password_file: {}\n{extra}", password.display());
    let fleet = Fleet::start_custom_with_master_config(&[], FACTS_TREE, &yaml).await.unwrap();
    FactsCluster { postgres, url, yaml, fleet, password_dir: dir }
}

/// B is the fleet's master, A one beside it, both on one database and
/// accepting every id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_frozen_on_one_master_decide_targeting_on_another() {
    let FactsCluster { postgres: cluster, yaml, mut fleet, password_dir: _password_dir, .. } =
        facts_cluster(API_YAML).await;
    let mut a: Option<MasterProcess> = None;
    let result = async {
        let master_a = fleet.start_peer_master("master-a", &yaml).await?;
        let master_a = a.insert(master_a);
        let (dir_a, dir_b) = (master_a.dir.clone(), fleet.dir.path().join("master"));
        let (listen_a, listen_b) = (master_a.listen.clone(), fleet.master().listen.clone());

        // The control: a host of the db tier gets the secret on B.
        let mut db = RawAgent::connect(&listen_b, "db01", facts("db01")).await?;
        let job = db.next_job().await?;
        ensure!(contents(&job).contains(DB_SECRET), "the db host's job lacks the secret: {}", contents(&job));
        drop(db);

        // web07 is accepted on A and its facts frozen there.
        let keypair = Keypair::generate()?;
        let mut web = RawAgent::connect_with_key(&listen_a, "web07", facts("web07"), &keypair).await?;
        let job = web.next_job().await?;
        ensure!(contents(&job).contains("pw=none"), "{}", contents(&job));
        web.send(&AgentMessage::JobResult(JobResult { job: job.id, results: Vec::new() })).await?;
        web.barrier().await?;
        drop(web);
        // B holds them once A's write and its notification reached it.
        until("web07's facts frozen on A, held by B", async || {
            let row = facts_row(&fleet, &dir_b, "web07").await?;
            Ok((row["frozen"]["hostname"] == "web07").then_some(()))
        })
        .await?;

        // The same key, on B, lies about its host name.
        let mut liar = RawAgent::connect_with_key(&listen_b, "web07", facts("db-x"), &keypair).await?;
        let job = liar.next_job().await?;
        ensure!(!contents(&job).contains(DB_SECRET), "B believed the lie: {}", contents(&job));
        ensure!(contents(&job).contains("pw=none"), "{}", contents(&job));
        liar.send(&AgentMessage::JobResult(JobResult { job: job.id, results: Vec::new() })).await?;
        liar.barrier().await?;
        let jid = job.id.to_string();
        // Reported as on A: the event, and the claim held for an operator.
        fleet.wait_for("the held facts on B", |e| e.tag == "halite/key/web07/facts-held").await?;
        let row = facts_row(&fleet, &dir_b, "web07").await?;
        ensure!(row["frozen"]["hostname"] == "web07" && row["held"]["hostname"] == "db-x", "{row}");
        let (_, shown) = command(&fleet, &dir_b, &["keys", "facts", "web07"]).await?;
        ensure!(shown.contains("db-x") && shown.contains("--accept"), "{shown}");

        // A grain target asked on A reaches web07 on B by its frozen facts
        // (read from PostgreSQL), never by its claim.
        let apply_on_a = async |target: &str| {
            let mut command = halite_e2e::process(&fleet.binaries.master);
            command.args(["apply", "--json", target, "secret", "--config"]).arg(dir_a.join("master.yaml"));
            halite_e2e::CommandOutput::of(command).await
        };
        let (routed, job) = tokio::join!(
            until("A routing G@hostname:web07 to web07 on B", async || {
                let out = apply_on_a("G@hostname:web07").await?;
                Ok((out.code == 0 && out.stdout.contains("\"web07\"")).then_some(out))
            }),
            async {
                // Answered here: the command waits for the answer.
                let job = liar.next_job().await?;
                liar.send(&AgentMessage::JobResult(JobResult { job: job.id, results: Vec::new() })).await?;
                anyhow::Ok(job)
            }
        );
        let (routed, job) = (routed?, job?);
        ensure!(!contents(&job).contains(DB_SECRET), "routed with the claim: {}", contents(&job));
        ensure!(routed.stdout.contains("\"web07\""), "{routed:?}");
        let claimed = apply_on_a("G@hostname:db*").await?;
        ensure!(
            !claimed.stdout.contains("web07") && !claimed.stderr.contains("web07"),
            "the claim was matched: {claimed:?}"
        );

        // The API on A lists the job B ran for web07 (PostgreSQL's jobs).
        let (code, token) = command(&fleet, &dir_a, &["tokens", "create", "reader", "--role", "web-read"]).await?;
        ensure!(code == 0, "tokens create on A: {token}");
        let token = token.trim().to_owned();
        let api_a = master_a.api.clone().context("A's api=")?;
        let pem = std::fs::read(dir_a.join("data").join("api.crt")).context("A's API certificate")?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let url = format!("{api_a}/api/v1/jobs?agent=web07");
        until("B's job for web07 in A's /api/v1/jobs", async || {
            let response = client.get(&url).bearer_auth(&token).send().await?;
            ensure!(response.status() == 200, "{}: {}", response.status(), response.text().await?);
            let jobs: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
            let listed = jobs.as_array().is_some_and(|jobs| jobs.iter().any(|j| j["jid"] == jid.as_str()));
            Ok(listed.then_some(()))
        })
        .await?;

        // An operator's acceptance on B replaces the shared facts: A has
        // them too.
        let (code, out) = command(&fleet, &dir_b, &["keys", "facts", "web07", "--accept"]).await?;
        ensure!(code == 0, "keys facts --accept on B: {out}");
        until("the facts accepted on B, on A", async || {
            let row = facts_row(&fleet, &dir_a, "web07").await?;
            Ok((row["frozen"]["hostname"] == "db-x").then_some(()))
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail_with_logs(&fleet, a.as_ref(), &cluster, &error);
    }
}

/// While PostgreSQL is down each master freezes what it is shown, as a
/// lone master does; once it answers, those rows are shared, and where two
/// masters froze different facts for one key meanwhile, the first row
/// written wins on both (`server/cluster/facts.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_frozen_while_postgresql_is_down_are_shared_once_it_answers() {
    let FactsCluster { postgres, url, yaml, fleet, password_dir: _password_dir } = facts_cluster("").await;
    let cluster = std::sync::Arc::new(postgres);
    let mut a: Option<MasterProcess> = None;
    let result = async {
        let master_a = fleet.start_peer_master("master-a", &yaml).await?;
        let master_a = a.insert(master_a);
        let (dir_a, dir_b) = (master_a.dir.clone(), fleet.dir.path().join("master"));
        let (listen_a, listen_b) = (master_a.listen.clone(), fleet.master().listen.clone());
        let postgres = cluster.clone();
        tokio::task::spawn_blocking(move || postgres.stop_immediate()).await??;

        // Each master accepts and freezes on its own: web09 on A; web10's
        // one key on A as web10, then on B as db-y (B has not heard of A's).
        let first_job = async |listen: &str, id: &str, hostname: &str, keypair: &Keypair| {
            let mut agent = RawAgent::connect_with_key(listen, id, facts(hostname), keypair).await?;
            let job = agent.next_job().await?;
            agent.send(&AgentMessage::JobResult(JobResult { job: job.id, results: Vec::new() })).await?;
            agent.barrier().await?;
            anyhow::Ok(job)
        };
        let job = first_job(&listen_a, "web09", "web09", &Keypair::generate()?).await?;
        ensure!(contents(&job).contains("pw=none"), "{}", contents(&job));
        let web10 = Keypair::generate()?;
        first_job(&listen_a, "web10", "web10", &web10).await?;
        let on_b = first_job(&listen_b, "web10", "db-y", &web10).await?;
        ensure!(contents(&on_b).contains(DB_SECRET), "B should have frozen db-y alone: {}", contents(&on_b));
        for (dir, hostname) in [(&dir_a, "web10"), (&dir_b, "db-y")] {
            let row = facts_row(&fleet, dir, "web10").await?;
            ensure!(row["frozen"]["hostname"] == hostname, "frozen while PostgreSQL is down: {row}");
        }

        let postgres = cluster.clone();
        tokio::task::spawn_blocking(move || postgres.start_again()).await??;
        until("web09's facts, frozen on A while PostgreSQL was down, on B", async || {
            let row = facts_row(&fleet, &dir_b, "web09").await?;
            Ok((row["frozen"]["hostname"] == "web09").then_some(()))
        })
        .await?;
        let agreed = until("one frozen row for web10 on both masters", async || {
            let (on_a, on_b) = (facts_row(&fleet, &dir_a, "web10").await?, facts_row(&fleet, &dir_b, "web10").await?);
            let same = on_a["frozen"]["hostname"] == on_b["frozen"]["hostname"];
            Ok(same.then(|| on_a["frozen"]["hostname"].clone()))
        })
        .await?;
        ensure!(agreed == "web10" || agreed == "db-y", "neither master's facts: {agreed}");
        // And what is in force is PostgreSQL's one row.
        let target = halite_master::server::store::postgres::PgTarget::new(
            &url,
            Some(halite_e2e::postgres::PASSWORD.into()),
            None,
        )?;
        let rows = target.connect().await?.query("SELECT frozen FROM key_facts WHERE id = 'web10'", &[]).await?;
        ensure!(rows.len() == 1, "{} rows for web10 in key_facts", rows.len());
        let stored: serde_json::Value = serde_json::from_str(rows[0].get::<_, &str>(0))?;
        ensure!(stored["hostname"] == agreed, "PostgreSQL holds {stored}, the masters {agreed}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail_with_logs(&fleet, a.as_ref(), &cluster, &error);
    }
}
