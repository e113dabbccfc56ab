//! What two real masters on one PostgreSQL share beyond keys (issue #20,
//! items 1 and 5; `server/cluster/access.rs`, the store's receipts): a
//! restore made by one master's agent shows in the other's `receipts` and
//! API agent detail, a token made on one master authenticates on the
//! other's API, and the audit rows of both form one chain that
//! `audit --verify` (and the API) accept, and whose tampering they name.

use std::path::Path;

use anyhow::Context as _;
use halite_e2e::postgres::Postgres;
use halite_e2e::{Fleet, WAIT};
use halite_master::fleet::MasterProcess;
use halite_master::server::store::postgres::PgTarget;

/// An API on each master, and a role that reads and applies on web*.
const API_YAML: &str =
    "api:\n  listen: 127.0.0.1:0\nroles:\n  web-ops:\n    verbs: [read, apply]\n    target: 'web*'\n";

/// `store:` for a master on `database`, its password in a file, and the API.
fn master_yaml(cluster: &Postgres, database: &str, dir: &Path) -> String {
    let password = cluster.password_file(dir).unwrap();
    format!("store:\n  url: {}\n  password_file: {}\n{API_YAML}", cluster.url(database), password.display())
}

/// Runs `halite-master ARGS --config` of the master in `dir`: its exit code
/// and stdout.
pub(crate) async fn command(fleet: &Fleet, dir: &Path, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let mut command = halite_e2e::process(&fleet.binaries.master);
    command.args(args).arg("--config").arg(dir.join("master.yaml"));
    let output = halite_e2e::CommandOutput::of(command).await?;
    anyhow::ensure!(matches!(output.code, 0 | 1), "{args:?}: {}", output.stderr);
    Ok((output.code, output.stdout))
}

/// A client of the API of the master whose data dir is `data_dir`.
fn client(data_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(data_dir.join("api.crt")).context("the master's API certificate")?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?)
}

/// `GET url` with `token`: status and JSON.
async fn get(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = client.get(url).bearer_auth(token).send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}

/// Until `done` holds, asking again every 50 ms, for at most [`WAIT`].
pub(crate) async fn until<T>(what: &str, mut ask: impl AsyncFnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        if let Some(value) = ask().await? {
            return Ok(value);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tick.tick().await;
    }
}

/// Fails the test with master A's and PostgreSQL's logs beside the
/// fleet's.
pub(crate) fn fail_with_logs(
    fleet: &Fleet,
    a: Option<&MasterProcess>,
    postgres: &Postgres,
    error: &anyhow::Error,
) -> ! {
    if let Some(a) = a {
        eprintln!("===== master A =====\n{}", std::fs::read_to_string(&a.log).unwrap_or_default());
    }
    eprintln!("===== postgres =====\n{}", postgres.log());
    fleet.fail(error)
}

/// Master A beside the fleet's master B, both on one database, web01 on
/// B: A sees B's restore, B takes A's token, and both audit into one
/// chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_tokens_and_the_audit_log_are_shared_by_two_masters() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = master_yaml(&cluster, &database, dir.path());
    let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
    // B: the fleet's master, web01 on it.
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let mut a: Option<MasterProcess> = None;
    let result = async {
        let master_a = fleet.start_peer_master("master-a", &yaml).await?;
        let master_a = a.insert(master_a);
        let (dir_a, dir_b) = (master_a.dir.clone(), fleet.dir.path().join("master"));

        // A drift on web01, restored by B.
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drifted\n")?;
        let event = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let ret = fleet.wait_for_restore_of(&event).await?;
        let jid = ret.job().unwrap_or_default().to_owned();
        let event_id = event.id().to_owned();
        // `receipts` on A lists it (read from PostgreSQL).
        let receipt = until("B's restore in A's `receipts`", async || {
            let (_, out) = command(&fleet, &dir_a, &["receipts", "web01", "--json"]).await?;
            let listed: serde_json::Value = serde_json::from_str(&out)?;
            Ok(listed["receipts"].as_array().and_then(|r| r.iter().find(|r| r["jid"] == jid.as_str())).cloned())
        })
        .await?;
        assert_eq!(receipt["kind"], "corrective", "{receipt}");
        assert_eq!(receipt["cause_event"], event_id.as_str(), "{receipt}");
        assert_eq!(receipt["path"], "/etc/motd", "{receipt}");

        // A token made on A authenticates on B's API, and on A's.
        let (code, token) = command(&fleet, &dir_a, &["tokens", "create", "ci", "--role", "web-ops"]).await?;
        anyhow::ensure!(code == 0, "tokens create on A: {token}");
        let token = token.trim().to_owned();
        let api_b = fleet.master().api.clone().context("B's api=")?;
        let api_a = master_a.api.clone().context("A's api=")?;
        let (client_a, client_b) = (client(&dir_a.join("data"))?, client(&fleet.master_data_dir())?);
        let (status, detail) = get(&client_b, &format!("{api_b}/api/v1/agents/web01"), &token).await?;
        assert_eq!(status, 200, "A's token on B's API: {detail}");
        // A's API agent detail shows B's restore: the receipts are
        // PostgreSQL's. A knows web01 once B's first sight of its key
        // reached it.
        let detail = until("web01's detail on A's API, with B's restore", async || {
            let (status, detail) = get(&client_a, &format!("{api_a}/api/v1/agents/web01"), &token).await?;
            let has = detail["receipts"].as_array().is_some_and(|r| r.iter().any(|r| r["jid"] == jid.as_str()));
            Ok((status == 200 && has).then_some(detail))
        })
        .await?;
        assert!(
            detail["drift_counts"].as_array().is_some_and(|c| c.iter().any(|c| c["path"] == "/etc/motd")),
            "{detail}"
        );

        // Audit rows from both masters: one chain, verified on either.
        let (code, out) = command(&fleet, &dir_b, &["tokens", "create", "ops", "--role", "admin"]).await?;
        anyhow::ensure!(code == 0, "tokens create on B: {out}");
        let admin = out.trim().to_owned();
        let (code, out) = command(&fleet, &dir_a, &["tokens", "revoke", "ci"]).await?;
        anyhow::ensure!(code == 0, "tokens revoke on A: {out}");
        let (_, json) = command(&fleet, &dir_a, &["audit", "--json"]).await?;
        let rows: Vec<serde_json::Value> =
            json.lines().map(serde_json::from_str).collect::<Result<_, _>>().context("audit --json")?;
        let what: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r["what"].as_str().unwrap_or_default(), r["target"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(
            what,
            [("tokens create --role web-ops", "ci"), ("tokens create --role admin", "ops"), ("tokens revoke", "ci")],
            "A's, B's and A's entries, in order, in one log"
        );
        for dir in [&dir_a, &dir_b] {
            let (code, out) = command(&fleet, dir, &["audit", "--verify"]).await?;
            assert_eq!(code, 0, "{out}");
            assert!(out.starts_with("ok: 3 audit rows, the chain holds"), "{out}");
        }
        // The revocation reached B: A's token no longer opens B's API.
        until("A's revocation on B", async || {
            let (status, _) = get(&client_b, &format!("{api_b}/api/v1/agents"), &token).await?;
            Ok((status == 401).then_some(()))
        })
        .await?;

        // Tampering: the append-only trigger dropped, row 2 edited.
        let client = target.connect().await?;
        let refused = client.execute("UPDATE audit SET result = 'ok' WHERE seq = 2", &[]).await;
        anyhow::ensure!(refused.is_err(), "the trigger refuses an UPDATE");
        client.batch_execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only").await?;
        let edited = client.execute("UPDATE audit SET who = 'local:uid:4242' WHERE seq = 2", &[]).await?;
        assert_eq!(edited, 1);
        let (code, out) = command(&fleet, &dir_a, &["audit", "--verify"]).await?;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("audit row 2: its hash does not match its content"), "{out}");
        let (status, verdict) = get(&client_b, &format!("{api_b}/api/v1/audit/verify"), &admin).await?;
        assert_eq!(status, 200, "{verdict}");
        assert_eq!(verdict["ok"], false, "{verdict}");
        assert!(verdict["broken"].as_str().is_some_and(|b| b.contains("audit row 2")), "{verdict}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail_with_logs(&fleet, a.as_ref(), &cluster, &error);
    }
}
