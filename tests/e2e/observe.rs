//! Observing the fleet (issue #17, items 3, 5, 6): remediation receipts,
//! `/metrics` read by a Prometheus text-format parser (the Python
//! `prometheus_client`'s OpenMetrics parser, installed by `.ci/run`),
//! inventory and adopt.

use halite_e2e::{Fleet, wait_until};
use halite_proto::Sha256;

/// The motd the example tree manages.
const MOTD: &str = "This host is managed by halite. Local edits are restored.\n";

/// Parses the text a scrape of `address` returns with the Python
/// `prometheus_client` OpenMetrics parser; returns its families as JSON:
/// `{name: {type, samples: [{name, labels, value}]}}`.
async fn scrape(address: &str) -> anyhow::Result<serde_json::Value> {
    const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
response = urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=10)
kind = response.headers.get("Content-Type", "")
assert kind.startswith("application/openmetrics-text"), kind
families = {}
for family in text_string_to_metric_families(response.read().decode()):
    families[family.name] = {
        "type": family.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
    }
print(json.dumps(families))
"#;
    let output = halite_e2e::process("python3").arg("-c").arg(PARSE).arg(address).output().await?;
    anyhow::ensure!(
        output.status.success(),
        "the parser refused the scrape: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The value of the sample `name` with `labels` among `families`.
fn sample(families: &serde_json::Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"].as_array()?.iter().find_map(|s| {
        let matches = s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v);
        if matches { s["value"].as_f64() } else { None }
    })
}

/// The metrics listener's address, from the master's `endpoints` file.
fn metrics_address(fleet: &Fleet) -> anyhow::Result<String> {
    let endpoints = std::fs::read_to_string(fleet.master_data_dir().join("endpoints"))?;
    endpoints
        .split_whitespace()
        .find_map(|f| f.strip_prefix("metrics="))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no metrics= in {endpoints}"))
}

/// The newest receipts of `agent`, as `halite-master receipts --json` prints them.
fn receipts(fleet: &Fleet, agent: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&fleet.cli(&["receipts", agent, "--json"])?)?)
}

/// A drift's restore has a corrective receipt with both hashes and its
/// latency, the latency histogram counts it, `agents` shows it; after the
/// tree changes, an operator's apply is intentional.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_has_a_corrective_receipt_and_an_operator_apply_after_a_tree_change_is_intentional() {
    let config = "enforce_on_reload: false\nmetrics:\n  listen: 127.0.0.1:0\n";
    let mut fleet = Fleet::start_with_master_config(&["web01"], config).await.unwrap();
    if let Err(error) = receipts_and_metrics(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn receipts_and_metrics(fleet: &mut Fleet) -> anyhow::Result<()> {
    let address = metrics_address(fleet)?;
    let latency = "halite_drift_restore_latency_seconds";
    let count = format!("{latency}_count");
    let before = scrape(&address).await?;
    assert_eq!(before[latency]["type"], "histogram", "{before}");
    let count_before = sample(&before, latency, &count, &[]).expect("a latency count");
    assert!(sample(&before, "halite_sessions", "halite_sessions", &[]) >= Some(1.0), "{before}");

    let motd = fleet.agent("web01").path("/etc/motd");
    std::fs::write(&motd, "drifted\n")?;
    let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    let ret = fleet.wait_for_restore_of(&drift).await?;
    let jid = ret.job().unwrap_or_default().to_owned();

    // Announced before the return: `agents` has it in memory now.
    let agents: serde_json::Value = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
    let last = &agents[0]["last_receipt"];
    assert_eq!(last["cause_event"], drift.id(), "{agents}");
    assert_eq!(last["kind"], "corrective");
    let table = fleet.cli(&["agents"])?;
    assert!(table.contains("LAST RESTORE") && table.contains("corrective in "), "{table}");

    // The store commits it with the job's result.
    let mut found = serde_json::Value::Null;
    wait_until("the receipt in the store", || {
        found = receipts(fleet, "web01")
            .ok()
            .and_then(|r| r["receipts"].as_array()?.iter().find(|r| r["jid"] == jid.as_str()).cloned())
            .unwrap_or_default();
        !found.is_null()
    })
    .await?;
    assert_eq!(found["kind"], "corrective", "{found}");
    assert_eq!(found["path"], "/etc/motd");
    assert_eq!(found["cause"], format!("event:{}", drift.id()));
    assert_eq!(found["hash_before"], Sha256::of(b"drifted\n").to_hex(), "the drifted content's hash");
    assert_eq!(found["hash_after"], Sha256::of(MOTD.as_bytes()).to_hex(), "the desired content's hash");
    assert!(found["latency_us"].as_i64().is_some_and(|l| l >= 0), "{found}");
    let flaps = receipts(fleet, "web01")?;
    assert_eq!(flaps["drift_counts"][0]["path"], "/etc/motd", "{flaps}");
    assert_eq!(flaps["drift_counts"][0]["drifts"], 1);

    let after = scrape(&address).await?;
    assert_eq!(sample(&after, latency, &count, &[]), Some(count_before + 1.0), "the histogram counted the restore");
    assert!(sample(&after, "halite_receipts", "halite_receipts_total", &[("kind", "corrective")]) >= Some(1.0));
    assert!(
        sample(
            &after,
            "halite_reactions",
            "halite_reactions_total",
            &[("reactor", "restore-motd"), ("result", "fired")]
        ) >= Some(1.0),
        "{after}"
    );
    assert!(sample(&after, "halite_events_in", "halite_events_in_total", &[("prefix", "beacon")]) >= Some(1.0));
    assert!(
        sample(&after, "halite_jobs", "halite_jobs_total", &[("cause", "event"), ("outcome", "changed")]) >= Some(1.0)
    );
    assert!(sample(&after, "halite_handshakes", "halite_handshakes_total", &[("result", "done")]) >= Some(1.0));
    assert!(sample(&after, "halite_store_size_bytes", "halite_store_size_bytes", &[]) > Some(0.0), "{after}");

    // The tree changes (not enforced on reload); an operator applies it.
    let new_motd = "Managed by halite, second edition.\n";
    fleet.edit_tree(
        "motd.yaml",
        &format!(
            "motd:\n  file.managed:\n    path: /etc/motd\n    contents: |\n      {}    mode: \"0644\"\n",
            new_motd
        ),
    )?;
    fleet.wait_for("the reload", |e| e.tag == "halite/master/tree/reloaded").await?;
    fleet.cli(&["apply", "web01", "motd"])?;
    assert_eq!(std::fs::read_to_string(&motd)?, new_motd);
    let mut newest = serde_json::Value::Null;
    wait_until("the operator's receipt in the store", || {
        newest = receipts(fleet, "web01").map(|r| r["receipts"][0].clone()).unwrap_or_default();
        newest["cause"].as_str().is_some_and(|c| c.starts_with("operator:"))
    })
    .await?;
    assert_eq!(newest["kind"], "intentional", "{newest}");
    assert_eq!(newest["hash_after"], Sha256::of(new_motd.as_bytes()).to_hex());
    let old = Sha256::of(MOTD.as_bytes()).to_hex();
    assert_eq!(newest["hash_before"], old[..12], "the agent's change line carries a prefix");
    assert_eq!(newest["latency_us"], serde_json::Value::Null, "no event caused it");
    Ok(())
}
