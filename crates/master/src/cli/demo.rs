//! `halite-master demo`: a master and two agents (real processes) on
//! loopback in a temporary directory, a managed file drifted several ways,
//! each restore shown with its latency.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::Subscriber;
use crate::example;
use crate::fleet::{self, AgentProcess, Binaries};

const WAIT: Duration = Duration::from_secs(30);

/// What the demo drifts: every kind of drift on web01's nginx.conf, then
/// db01's motd.
fn plan() -> Vec<(usize, &'static str, &'static str, fleet::Drift)> {
    let mut plan: Vec<_> = fleet::DRIFTS.iter().map(|d| (0, "/etc/nginx/nginx.conf", "nginx-conf", *d)).collect();
    plan.push((1, "/etc/motd", "motd", fleet::DRIFTS[1]));
    plan
}

fn desired(authored: &str) -> &'static str {
    let name = if authored.ends_with("motd") { "motd.yaml" } else { "files/nginx.conf" };
    let text = example::FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).unwrap_or_default();
    if name == "motd.yaml" { "This host is managed by halite. Local edits are restored.\n" } else { text }
}

pub async fn run(keep: bool) -> anyhow::Result<()> {
    let binaries = Binaries::beside_current_exe()?;
    let temp =
        tempfile::Builder::new().prefix("halite-demo-").tempdir().context("cannot create a temporary directory")?;
    let dir = temp.path().to_path_buf();
    let states = dir.join("states");
    example::write(&states).context("cannot write the example state tree")?;
    println!("halite demo in {}", dir.display());
    println!("  state tree: {} (top.yaml, beacons.yaml, reactors.yaml, motd.yaml, nginx.yaml)", states.display());

    // The demo's agents are its own: accept them without an operator.
    // `/metrics` and the API on: the demo shows every part of the master.
    let extra = "metrics:\n  listen: 127.0.0.1:0\napi:\n  listen: 127.0.0.1:0\n";
    let master =
        fleet::start_master_with(&binaries, &dir.join("master"), &states, "tcp://127.0.0.1:0", &["*"], extra).await?;
    println!("  master: agents on {}, events published on {}", master.listen, master.publish);
    let endpoints = tokio::fs::read_to_string(master.dir.join("data").join("endpoints")).await.unwrap_or_default();
    if let Some(address) = endpoints.split_whitespace().find_map(|f| f.strip_prefix("metrics=")) {
        println!("  metrics: http://{address}/metrics");
    }
    let data_dir = master.dir.join("data");
    let request = crate::protocol::Request::TokensCreate { name: "demo".into(), role: "admin".into() };
    let made = super::request(&data_dir, &request).await?;
    if let (Some(url), Some(token)) = (&master.api, made.token) {
        println!("  API and dashboard: {url} (self-signed: {})", data_dir.join(crate::config::API_CERT).display());
        println!("    token (admin): {token}");
        println!(
            "    curl --cacert {} -H 'Authorization: Bearer {token}' {url}/api/v1/agents",
            data_dir.join(crate::config::API_CERT).display()
        );
    }
    let mut bus = Subscriber::connect(&master.publish, "halite/").await?;
    let mut agents: Vec<AgentProcess> = Vec::new();
    for id in ["web01", "db01"] {
        let agent = fleet::start_agent(&binaries, &dir.join(id), id, &master.listen, &master.key).await?;
        println!("  agent {id}: files under {}", agent.root.display());
        agents.push(agent);
    }
    let mut converging: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    while !converging.is_empty() {
        let ret = bus
            .wait_for(WAIT, "start-up apply", |e| e.tag.starts_with("halite/job/") && e.tag.contains("/ret/"))
            .await?;
        converging.retain(|id| id != ret.agent());
    }
    println!("  both agents connected and converged (top.yaml applied at connect)\n");

    let mut latencies = Vec::new();
    let plan = plan();
    for (n, (agent, file, beacon, drift)) in plan.iter().enumerate() {
        let agent = &agents[*agent];
        let path = agent.path(file);
        let tag = format!("halite/beacon/{}/{beacon}", agent.id);
        let started = Instant::now();
        (drift.act)(&path).with_context(|| format!("cannot drift {}", path.display()))?;
        let event = bus.wait_for(WAIT, "drift event", |e| e.tag == tag).await?;
        let seen = started.elapsed();
        let event_id = event.id().to_owned();
        let job = bus
            .wait_for(WAIT, "restore job", |e| e.tag.ends_with("/new") && e.data()["cause"] == event_id.as_str())
            .await?;
        let jid = job.job().unwrap_or_default().to_owned();
        let ret =
            bus.wait_for(WAIT, "job result", |e| e.job() == Some(jid.as_str()) && e.tag.contains("/ret/")).await?;
        let restored = started.elapsed();
        let bytes = tokio::fs::read(&path).await.with_context(|| format!("{} was not restored", path.display()))?;
        let mode = tokio::fs::metadata(&path).await?.permissions().mode() & 0o7777;
        if bytes != desired(file).as_bytes() || mode != 0o644 || ret.data()["failed"] == true {
            bail!("{} was not restored as desired (mode {mode:o}); see {}", path.display(), agent.log.display());
        }
        println!(
            "  {}. {:<50} {} {:<7} event after {:>7.2} ms, restored after {:>7.2} ms (job {jid})",
            n + 1,
            format!("{}: {}", agent.id, drift.name),
            file,
            event.data()["kind"].as_str().unwrap_or("?"),
            seen.as_secs_f64() * 1e3,
            restored.as_secs_f64() * 1e3,
        );
        latencies.push(restored);
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "\n  {} drifts, {} restores, each byte for byte with mode 0644; slowest {:.2} ms.",
        plan.len(),
        latencies.len(),
        worst.as_secs_f64() * 1e3
    );

    if keep {
        let temp_path = temp.keep();
        println!("\nStill running. Edit {} and watch it heal:", agents[0].path("/etc/nginx/nginx.conf").display());
        println!("  logs: {} and {}/*/agent.log", master.log.display(), temp_path.display());
        println!("  events: any ZeroMQ SUB socket on {}", master.publish);
        println!("Look around (the master and the agents run already):");
        print!("{}", super::init::look_commands(&master.dir.join("master.yaml")));
        println!("Press Ctrl-C to stop (the directory stays: {}).", temp_path.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    for agent in agents {
        agent.stop().await;
    }
    master.stop().await;
    Ok(())
}
