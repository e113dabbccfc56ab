//! `halite-master events [--tag GLOB] [--json]`: a live tail of the bus
//! through the control socket.
//!
//! The master side ([`stream`]) subscribes to the bus's tail (a bounded
//! broadcast, [`crate::bus::TAIL_QUEUE`]) and writes one JSON line per
//! matching event; a tail that falls behind gets a `lagged` line with the
//! number of events it missed, and the bus never waits for it. The command
//! side ([`tail`]) prints them, for people or, with `--json`, one event per
//! line as the outside publisher has them.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use globset::{Glob, GlobMatcher};
use halite_proto::Event;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::control::{Request, Response};
use crate::daemon::Master;

/// One line of the stream after the first (which is a [`Response`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TailLine {
    /// An event, as JSON (as the outside publisher sends it).
    Event(serde_json::Value),
    /// This many events were skipped because the reader was slow.
    Lagged(u64),
}

/// Serves one `events` request until the reader goes away.
pub async fn stream(master: &Master, tag: Option<String>, mut write: OwnedWriteHalf) {
    let matcher = match tag.as_deref().map(Glob::new).transpose() {
        Ok(glob) => glob.map(|g| g.compile_matcher()),
        Err(error) => {
            let response =
                Response { ok: false, error: Some(format!("bad --tag glob: {}", error.kind())), ..Response::default() };
            let _ = send(&mut write, &response).await;
            return;
        }
    };
    let events = master.bus.subscribe();
    if send(&mut write, &Response { ok: true, ..Response::default() }).await.is_err() {
        return;
    }
    pump(events, matcher.as_ref(), &mut write).await;
}

/// Writes the tail's events to `write` until it fails or the bus closes.
async fn pump(
    mut events: broadcast::Receiver<Arc<Event>>,
    matcher: Option<&GlobMatcher>,
    write: &mut (impl AsyncWrite + Unpin),
) {
    loop {
        let line = match events.recv().await {
            Ok(event) if matcher.is_none_or(|m| m.is_match(&event.tag)) => TailLine::Event(event.to_json()),
            Ok(_) => continue,
            Err(RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, "An events tail fell behind.");
                TailLine::Lagged(skipped)
            }
            Err(RecvError::Closed) => return,
        };
        if send(write, &line).await.is_err() {
            return;
        }
    }
}

async fn send(write: &mut (impl AsyncWrite + Unpin), line: &impl Serialize) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// The command: asks the master in `data_dir` for its events and prints them
/// to `out` until the master goes away.
pub async fn tail(data_dir: &Path, tag: Option<String>, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let path = crate::control::socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the master's control socket {} (is `halite-master run` running with this data dir?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut request = serde_json::to_string(&Request::Events { tag: tag.clone() })?;
    request.push('\n');
    write.write_all(request.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let first = lines.next_line().await?.context("the master closed the control socket")?;
    let response: Response = serde_json::from_str(&first).context("the master's answer is not understood")?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    eprintln!(
        "Tailing the events of the master in {}{}; Ctrl-C stops.",
        data_dir.display(),
        tag.map(|t| format!(" matching {t}")).unwrap_or_default()
    );
    while let Some(line) = lines.next_line().await? {
        let line: TailLine = serde_json::from_str(&line).context("the master sent a line that is not understood")?;
        let text = match (line, json) {
            (TailLine::Event(event), true) => event.to_string(),
            (TailLine::Event(event), false) => human(&event),
            (TailLine::Lagged(skipped), true) => serde_json::json!({ "lagged": skipped }).to_string(),
            (TailLine::Lagged(skipped), false) => format!("lagged, {skipped} events skipped"),
        };
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    anyhow::bail!("the master went away")
}

/// `2026-11-23T12:00:00.123Z  halite/beacon/web01/motd  web01  {"kind":"modify",…}`
fn human(event: &serde_json::Value) -> String {
    let time = event["time_us"]
        .as_i64()
        .and_then(|us| u64::try_from(us).ok())
        .map(|us| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string())
        .unwrap_or_default();
    let agent = event["agent"].as_str().filter(|a| !a.is_empty()).unwrap_or("-");
    format!("{time}  {}  {agent}  {}", event["tag"].as_str().unwrap_or_default(), event["data"])
}

#[cfg(test)]
mod tests {
    use halite_proto::Value;

    use super::*;

    /// A reader that falls behind is told how many events it missed, and
    /// the filter lets only matching tags through.
    #[tokio::test]
    async fn a_slow_tail_is_told_what_it_missed() {
        let (sender, receiver) = broadcast::channel(4);
        for n in 0..10i64 {
            let tag = if n % 2 == 0 { "halite/beacon/web01/x" } else { "halite/job/x/new" };
            sender.send(Arc::new(Event::new(tag, "web01", Value::map().with("n", n)))).unwrap();
        }
        drop(sender);
        let matcher = Glob::new("halite/beacon/*").unwrap().compile_matcher();
        let mut out = Vec::new();
        pump(receiver, Some(&matcher), &mut out).await;
        let lines: Vec<TailLine> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(matches!(lines[0], TailLine::Lagged(6)), "{lines:?}");
        let shown: Vec<i64> = lines[1..]
            .iter()
            .map(|l| match l {
                TailLine::Event(e) => e["data"]["n"].as_i64().unwrap(),
                TailLine::Lagged(_) => -1,
            })
            .collect();
        assert_eq!(shown, [6, 8]);
    }

    #[test]
    fn human_lines_show_time_tag_agent_and_data() {
        let event = halite_proto::Event {
            time_us: 1_763_899_200_123_456,
            ..halite_proto::Event::new(
                "halite/beacon/web01/motd",
                "web01",
                halite_proto::Value::map().with("kind", "modify"),
            )
        };
        assert_eq!(
            human(&event.to_json()),
            "2025-11-23T12:00:00.123Z  halite/beacon/web01/motd  web01  {\"kind\":\"modify\"}"
        );
    }
}
