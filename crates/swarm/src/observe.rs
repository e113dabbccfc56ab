//! The benchmarks' "observed" mode (`--observed`, issue #17): the master
//! runs with the HTTPS API and dashboard and the `/metrics` listener on
//! ([`OBSERVED_MASTER`]), and while the benchmark measures, an
//! [`Observer`] follows `/api/v1/events` as one SSE client and scrapes
//! `/metrics` every [`SCRAPE_EVERY`], as a dashboard and a Prometheus
//! would. The same run without the flag is the "off" side, so on and off
//! are one command each.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use halite_master::fleet::{Binaries, MasterProcess};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// master.yaml keys that turn the API (and so the dashboard) and
/// `/metrics` on, both on free loopback ports.
pub const OBSERVED_MASTER: &str = "api:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\n";

/// How often the scraper reads `/metrics` (Prometheus's usual interval is
/// longer: this is the pessimistic side).
pub const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// How long `tokens create` may take (it bounds a hang).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the observers did during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Events the SSE client received.
    pub events: u64,
    /// Successful scrapes of `/metrics`.
    pub scrapes: u64,
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "observed: one SSE client followed {} events, /metrics scraped {} times (every {:?})",
            self.events, self.scrapes, SCRAPE_EVERY
        )
    }
}

/// One SSE client and one scraper on a master started with
/// [`OBSERVED_MASTER`]; [`Observer::stop`] ends both.
#[derive(Debug)]
pub struct Observer {
    cancel: CancellationToken,
    events: JoinHandle<anyhow::Result<u64>>,
    scrapes: JoinHandle<anyhow::Result<u64>>,
}

impl Observer {
    /// Makes an admin token with the master's CLI, opens the event stream
    /// (returns once the master answered it) and starts scraping.
    pub async fn start(master: &MasterProcess, binaries: &Binaries) -> anyhow::Result<Observer> {
        let data = master.dir.join("data");
        let api = master.api.clone().context("the master runs without `api:` (no api= on its ready line)")?;
        let token = token(&binaries.master, &data).await?;
        let endpoints = tokio::fs::read_to_string(data.join("endpoints")).await.context("the master's endpoints")?;
        let metrics = endpoints
            .split_whitespace()
            .find_map(|field| field.strip_prefix("metrics="))
            .context("the master runs without `metrics:` (no metrics= in its endpoints)")?
            .to_owned();
        let pem = tokio::fs::read(data.join(halite_master::config::API_CERT)).await.context("the API's certificate")?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let stream = client.get(format!("{api}/api/v1/events")).bearer_auth(&token).send().await?;
        anyhow::ensure!(stream.status().is_success(), "the event stream answered {}", stream.status());
        let cancel = CancellationToken::new();
        let events = tokio::spawn(follow(stream, cancel.clone()));
        let scrapes = tokio::spawn(scrape(client, format!("http://{metrics}/metrics"), cancel.clone()));
        Ok(Observer { cancel, events, scrapes })
    }

    /// Stops both; what they did, or the first error either met.
    pub async fn stop(self) -> anyhow::Result<Observed> {
        self.cancel.cancel();
        let events = self.events.await.context("the SSE client")??;
        let scrapes = self.scrapes.await.context("the scraper")??;
        Ok(Observed { events, scrapes })
    }
}

/// `halite-master tokens create` with an admin role, through the control
/// socket of the master whose data dir is `data`.
async fn token(master: &Path, data: &Path) -> anyhow::Result<String> {
    let name = format!("bench-{}", std::process::id());
    let mut argv = vec![master.display().to_string()];
    argv.extend(["tokens", "create", &name, "--role", "admin", "--data-dir"].map(str::to_owned));
    argv.push(data.display().to_string());
    let spec = halite_state::command::Spec { timeout: Some(TOKEN_TIMEOUT), ..halite_state::command::Spec::new(argv) };
    let output = halite_state::command::run_async(&spec, None).await?;
    anyhow::ensure!(output.success(), "{}", output.failure("halite-master tokens create"));
    Ok(output.stdout.trim().to_owned())
}

/// Reads the event stream until cancelled, counting events (`data:` lines).
async fn follow(mut stream: reqwest::Response, cancel: CancellationToken) -> anyhow::Result<u64> {
    let (mut events, mut partial) = (0_u64, Vec::new());
    loop {
        let chunk = tokio::select! {
            () = cancel.cancelled() => return Ok(events),
            chunk = stream.chunk() => chunk.context("the event stream")?,
        };
        let Some(chunk) = chunk else { anyhow::bail!("the master ended the event stream") };
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            if partial.starts_with(b"data:") {
                events += 1;
            }
            partial.drain(..=end);
        }
    }
}

/// Reads `/metrics` every [`SCRAPE_EVERY`] until cancelled.
async fn scrape(client: reqwest::Client, url: String, cancel: CancellationToken) -> anyhow::Result<u64> {
    let mut every = tokio::time::interval(SCRAPE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrapes = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(scrapes),
            _ = every.tick() => {}
        }
        let response = client.get(&url).send().await.context("scraping /metrics")?;
        anyhow::ensure!(response.status().is_success(), "/metrics answered {}", response.status());
        response.bytes().await?;
        scrapes += 1;
    }
}
