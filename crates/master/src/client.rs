//! A subscriber to the master's outside event publisher, for the demo, the
//! tests and any Rust tool. Any ZeroMQ SUB client works the same way: two
//! frames, `[tag, json]`, filtered by tag prefix.

use std::time::Duration;

use anyhow::Context;
use zeromq::{Socket, SocketRecv, SubSocket};

/// One event as the publisher sends it.
#[derive(Debug, Clone)]
pub struct BusEvent {
    pub tag: String,
    pub json: serde_json::Value,
}

impl BusEvent {
    pub fn id(&self) -> &str {
        self.json["id"].as_str().unwrap_or_default()
    }
    pub fn agent(&self) -> &str {
        self.json["agent"].as_str().unwrap_or_default()
    }
    pub fn data(&self) -> &serde_json::Value {
        &self.json["data"]
    }
    /// For job events, the job id in the tag (`halite/job/<jid>/...`).
    pub fn job(&self) -> Option<&str> {
        self.tag.strip_prefix("halite/job/").and_then(|rest| rest.split('/').next())
    }
}

pub struct Subscriber {
    socket: SubSocket,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscriber")
    }
}

impl Subscriber {
    pub async fn connect(endpoint: &str, prefix: &str) -> anyhow::Result<Subscriber> {
        let mut socket = SubSocket::new();
        socket
            .connect(endpoint)
            .await
            .with_context(|| format!("cannot connect to the event publisher at {endpoint}"))?;
        socket.subscribe(prefix).await.context("cannot subscribe")?;
        Ok(Subscriber { socket })
    }

    pub async fn next(&mut self) -> anyhow::Result<BusEvent> {
        let message = self.socket.recv().await.context("the event publisher went away")?;
        let tag = message.get(0).map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
        let json = message
            .get(1)
            .and_then(|j| serde_json::from_slice(j).ok())
            .with_context(|| format!("event `{tag}` has no JSON body"))?;
        Ok(BusEvent { tag, json })
    }

    /// The next event that satisfies `wanted`, skipping others, or an error
    /// after `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut wanted: impl FnMut(&BusEvent) -> bool,
    ) -> anyhow::Result<BusEvent> {
        tokio::time::timeout(timeout, async {
            loop {
                let event = self.next().await?;
                if wanted(&event) {
                    return Ok(event);
                }
            }
        })
        .await
        .with_context(|| format!("no {what} within {timeout:?}"))?
    }
}
