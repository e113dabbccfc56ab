//! The dashboard overview's last hour comes from the store: a drift
//! restored before a restart is still counted, with its latency, after it;
//! with the store on PostgreSQL, the reaction is read from there.

use anyhow::Context as _;
use halite_e2e::postgres::Postgres;
use halite_e2e::{Fleet, WAIT};

const API_YAML: &str = "api:\n  listen: 127.0.0.1:0\n";

/// The text of the `<dd id="ID">` on the overview page.
fn figure(html: &str, id: &str) -> anyhow::Result<String> {
    let start = html.find(&format!("<dd id=\"{id}\"")).with_context(|| format!("no #{id} in the overview"))?;
    let rest = &html[start..];
    let open = rest.find('>').context("a tag")? + 1;
    let close = rest.find("</dd>").context("its end")?;
    Ok(rest[open..close].trim().to_owned())
}

/// The overview as a token holder sees it (no browser: the page reads
/// without JavaScript).
async fn overview(fleet: &Fleet, token: &str) -> anyhow::Result<String> {
    let url = fleet.master().api.clone().context("the ready line has no api=")?;
    let pem = std::fs::read(fleet.master_data_dir().join("api.crt"))?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?;
    let response = client.get(format!("{url}/")).bearer_auth(token).send().await?;
    anyhow::ensure!(response.status() == 200, "the overview answered {}", response.status());
    Ok(response.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_hour_survives_a_restart() {
    let mut fleet = Fleet::start_with_master_config(&["web01"], API_YAML).await.unwrap();
    if let Err(error) = last_hour(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn last_hour(fleet: &mut Fleet) -> anyhow::Result<()> {
    let token = fleet.cli(&["tokens", "create", "root", "--role", "admin"])?.trim().to_owned();
    let before = overview(fleet, &token).await?;
    assert_eq!(figure(&before, "restores")?, "0", "nothing restored yet");
    assert_eq!(figure(&before, "p50")?, "–");

    let motd = fleet.agent("web01").path("/etc/motd");
    std::fs::write(&motd, "drifted\n")?;
    let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    let ret = fleet.wait_for_restore_of(&drift).await?;
    assert_eq!(ret.data()["failed"], false, "{}", ret.data());

    let listen = fleet.master().listen.clone();
    fleet.stop_master().await;
    fleet.restart_master_with(&listen, API_YAML).await?;
    let after = overview(fleet, &token).await?;
    assert_eq!(figure(&after, "restores")?, "1", "the restore before the restart");
    assert_eq!(figure(&after, "drifts")?, "1");
    assert_eq!(figure(&after, "fired")?, "1", "the reactor's restore job");
    assert_eq!(figure(&after, "failed")?, "0");
    let p50 = figure(&after, "p50")?;
    let ms: f64 = p50.strip_suffix(" ms").with_context(|| format!("p50 `{p50}`"))?.parse()?;
    assert!(ms > 0.0, "p50 {p50}");
    assert_eq!(figure(&after, "p99")?, p50, "one restore: p99 is p50");
    // The same figure as the restore's receipt, which the API lists.
    let url = fleet.master().api.clone().context("the ready line has no api=")?;
    let pem = std::fs::read(fleet.master_data_dir().join("api.crt"))?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?;
    let text = client.get(format!("{url}/api/v1/agents/web01")).bearer_auth(&token).send().await?.text().await?;
    let agent: serde_json::Value = serde_json::from_str(&text)?;
    let receipts = agent["receipts"].as_array().context("receipts")?;
    let latency_us = receipts
        .iter()
        .find(|r| r["cause_event"] == drift.id())
        .and_then(|r| r["latency_us"].as_i64())
        .with_context(|| format!("no receipt of the drift with a latency: {agent:#}"))?;
    #[allow(clippy::cast_precision_loss)]
    let receipt_ms = latency_us as f64 / 1000.0;
    assert!((receipt_ms - ms).abs() < 0.051, "receipt {receipt_ms} ms, overview {p50}");
    Ok(())
}

/// With `store: postgres://…` the jobs are in PostgreSQL and the receipts
/// in halite.db: the overview counts the restore's reaction and its receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_hour_reads_reactions_from_postgres() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = cluster.password_file(dir.path()).unwrap();
    let yaml =
        format!("{API_YAML}store:\n  url: {}\n  password_file: {}\n", cluster.url(&database), password.display());
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    if let Err(error) = on_postgres(&mut fleet).await {
        eprintln!("===== postgres =====\n{}", cluster.log());
        fleet.fail(&error);
    }
}

async fn on_postgres(fleet: &mut Fleet) -> anyhow::Result<()> {
    let token = fleet.cli(&["tokens", "create", "root", "--role", "admin"])?.trim().to_owned();
    let motd = fleet.agent("web01").path("/etc/motd");
    std::fs::write(&motd, "drifted\n")?;
    let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    fleet.wait_for_restore_of(&drift).await?;
    // PostgreSQL's writer commits a moment later, and one reading serves
    // the overview for a few seconds: look until both show.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        every.tick().await;
        let html = overview(fleet, &token).await?;
        let shown = (figure(&html, "fired")?, figure(&html, "restores")?);
        if shown == ("1".to_owned(), "1".to_owned()) {
            assert_eq!(figure(&html, "failed")?, "0");
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the overview shows {shown:?} (fired, restores), not one of each"
        );
    }
}
