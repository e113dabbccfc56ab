//! The benchmarks' "observed" mode (`--observed`, issue #17): the master
//! runs with the HTTPS API and dashboard and the `/metrics` listener on
//! ([`OBSERVED_MASTER`]), and while the benchmark measures, an
//! [`Observer`] follows `/api/v1/events` as one SSE client and scrapes
//! `/metrics` every [`SCRAPE_EVERY`], as a dashboard and a Prometheus
//! would. The same run without the flag is the "off" side, so on and off
//! are one command each.
//!
//! `--observed=WHAT` ([`Observe`]) turns on only a part, to find where a
//! cost is: `idle` (the listeners on, nobody connected), `sse` (the SSE
//! client only), `scrape` (the scraper only); `all` is `--observed`.

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

/// What an observed run turns on besides the listeners (`--observed=WHAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// One SSE client and the scraper (`--observed`).
    All,
    /// Nobody: the listeners on, idle.
    Idle,
    /// The SSE client only.
    Sse,
    /// The scraper only.
    Scrape,
}

impl Observe {
    /// Every value, as written on the command line.
    pub const NAMES: [&str; 4] = ["all", "idle", "sse", "scrape"];

    fn follows(self) -> bool {
        matches!(self, Observe::All | Observe::Sse)
    }

    fn scrapes(self) -> bool {
        matches!(self, Observe::All | Observe::Scrape)
    }

    /// The flag's value from the arguments: `--observed` is `all`,
    /// `--observed=WHAT` names one; absent is `None`.
    pub fn from_args(args: &[String]) -> anyhow::Result<Option<Observe>> {
        match args.iter().find(|a| *a == "--observed" || a.starts_with("--observed=")) {
            None => Ok(None),
            Some(arg) => arg.strip_prefix("--observed=").unwrap_or("all").parse().map(Some),
        }
    }
}

impl std::str::FromStr for Observe {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Observe> {
        match text {
            "all" => Ok(Observe::All),
            "idle" => Ok(Observe::Idle),
            "sse" => Ok(Observe::Sse),
            "scrape" => Ok(Observe::Scrape),
            other => anyhow::bail!("--observed={other}: expected one of {}", Observe::NAMES.join(", ")),
        }
    }
}

impl std::fmt::Display for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Observe::All => "all",
            Observe::Idle => "idle",
            Observe::Sse => "sse",
            Observe::Scrape => "scrape",
        })
    }
}

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

/// One SSE client and one scraper (or what [`Observe`] says of them) on
/// a master started with [`OBSERVED_MASTER`]; [`Observer::stop`] ends both.
#[derive(Debug)]
pub struct Observer {
    cancel: CancellationToken,
    events: Option<JoinHandle<anyhow::Result<u64>>>,
    scrapes: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl Observer {
    /// Makes an admin token with the master's CLI, opens the event stream
    /// (returns once the master answered it) and starts scraping; `what`
    /// leaves either out.
    pub async fn start(master: &MasterProcess, binaries: &Binaries, what: Observe) -> anyhow::Result<Observer> {
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
        let cancel = CancellationToken::new();
        let events = match what.follows() {
            true => {
                let stream = client.get(format!("{api}/api/v1/events")).bearer_auth(&token).send().await?;
                anyhow::ensure!(stream.status().is_success(), "the event stream answered {}", stream.status());
                Some(tokio::spawn(follow(stream, cancel.clone())))
            }
            false => None,
        };
        let scrapes =
            what.scrapes().then(|| tokio::spawn(scrape(client, format!("http://{metrics}/metrics"), cancel.clone())));
        Ok(Observer { cancel, events, scrapes })
    }

    /// Stops both; what they did, or the first error either met.
    pub async fn stop(self) -> anyhow::Result<Observed> {
        self.cancel.cancel();
        let events = match self.events {
            Some(events) => events.await.context("the SSE client")??,
            None => 0,
        };
        let scrapes = match self.scrapes {
            Some(scrapes) => scrapes.await.context("the scraper")??,
            None => 0,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_names_what_is_observed() {
        let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        for (given, expected) in [
            (&[][..], None),
            (&["--hops"][..], None),
            (&["--observed"][..], Some(Observe::All)),
            (&["--observed=idle"][..], Some(Observe::Idle)),
            (&["--observed=sse"][..], Some(Observe::Sse)),
            (&["--observed=scrape"][..], Some(Observe::Scrape)),
        ] {
            assert_eq!(Observe::from_args(&args(given)).unwrap(), expected, "{given:?}");
        }
        assert!(Observe::from_args(&args(&["--observed=sometimes"])).is_err());
        for name in Observe::NAMES {
            assert_eq!(name.parse::<Observe>().unwrap().to_string(), name);
        }
    }
}
