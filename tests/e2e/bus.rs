//! The bus in view: `halite-master events` tails it, `halite-master agents`
//! lists who is on it.

use std::process::Stdio;

use halite_e2e::{Fleet, WAIT};
use halite_master::protocol::{AgentRow, Compliance};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// Starts `halite-master events ARGS` and returns once it is tailing.
async fn tail(fleet: &Fleet, args: &[&str]) -> anyhow::Result<(Child, Lines<BufReader<ChildStdout>>)> {
    let mut child = halite_e2e::process(&fleet.binaries.master)
        .arg("events")
        .args(args)
        .arg("--data-dir")
        .arg(fleet.master_data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let notice = tokio::time::timeout(WAIT, stderr.next_line()).await??.unwrap_or_default();
    anyhow::ensure!(notice.starts_with("Tailing the events"), "events said: {notice}");
    let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    Ok((child, stdout))
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<String> {
    tokio::time::timeout(WAIT, lines.next_line()).await??.ok_or_else(|| anyhow::anyhow!("events exited"))
}

/// A tail filtered by tag sees the beacon event and nothing else; an
/// unfiltered human tail shows it as time, tag, agent and data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_tail_sees_a_beacon_event() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let (_json_child, mut json) = tail(&fleet, &["--json", "--tag", "halite/beacon/*"]).await?;
        let (_human_child, mut human) = tail(&fleet, &[]).await?;
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&drift).await?;
        // The filter let nothing else through: the first line is the drift.
        let line: serde_json::Value = serde_json::from_str(&next_line(&mut json).await?)?;
        assert_eq!(line, drift.json);
        let shown = loop {
            let line = next_line(&mut human).await?;
            if line.contains("halite/beacon/web01/motd") {
                break line;
            }
        };
        let fields: Vec<&str> = shown.split("  ").collect();
        assert_eq!(fields.len(), 4, "{shown}");
        assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "{shown}");
        assert_eq!(&fields[1..3], ["halite/beacon/web01/motd", "web01"], "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(fields[3])?, *drift.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Two accepted agents with their facts, addresses and compliance, and a
/// pending one; a drift shows as the last event and the restore that
/// followed as compliance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_lists_agents_with_facts_and_compliance() {
    let mut fleet = Fleet::start_with(&["web01", "db01"], &["web*", "db*"]).await.unwrap();
    let result = async {
        fleet.add_agent_unconverged("new01").await?;
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let restored = fleet.wait_for_restore_of(&drift).await?;
        let rows: Vec<AgentRow> = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["db01", "new01", "web01"]);
        for row in rows.iter().filter(|r| r.id != "new01") {
            assert_eq!((row.key.as_str(), row.connected), ("accepted", true), "{row:?}");
            assert!(row.address.as_deref().is_some_and(|a| a.starts_with("127.0.0.1:")), "{row:?}");
            assert_eq!(row.version.as_deref(), Some(env!("CARGO_PKG_VERSION")), "{row:?}");
            assert_eq!(row.facts["id"], row.id.as_str(), "{row:?}");
            assert!(row.facts["os"].as_str().is_some_and(|os| !os.is_empty()), "{row:?}");
            assert!(row.connected_since_us.is_some(), "{row:?}");
            assert!(matches!(row.compliance, Compliance::Compliant { .. }), "{row:?}");
        }
        let web01 = &rows[2];
        let drift_us = drift.json["time_us"].as_i64();
        assert_eq!(web01.last_event_us, drift_us);
        let Compliance::Compliant { since_us } = web01.compliance else { unreachable!() };
        assert_eq!(Some(since_us), restored.json["time_us"].as_i64(), "compliant since the restore");
        assert_eq!(rows[0].last_event_us, None, "db01 raised nothing");
        let pending = &rows[1];
        assert_eq!((pending.key.as_str(), pending.connected), ("pending", true), "{pending:?}");
        assert_eq!(pending.compliance, Compliance::Unknown);
        let table = fleet.cli(&["agents"])?;
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID ") && lines[0].contains("COMPLIANCE"), "{table}");
        assert!(
            lines[3].starts_with("web01 ") && lines[3].contains("accepted") && lines[3].contains("compliant"),
            "{table}"
        );
        assert!(lines[2].starts_with("new01 ") && lines[2].contains("pending"), "{table}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
