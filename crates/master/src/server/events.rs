//! The master's side of `halite-master events`: a live tail of the bus
//! through the control socket.
//!
//! [`stream`] subscribes to the bus's tail (a bounded
//! broadcast, [`crate::server::bus::TAIL_QUEUE`]) and writes one JSON line per
//! matching event; a tail that falls behind gets a `lagged` line with the
//! number of events it missed, and the bus never waits for it. The command's side is
//! `cli/events.rs`.

use globset::{Glob, GlobMatcher};
use halite_proto::Event;
use serde::Serialize;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::protocol::{Response, TailLine};
use crate::server::context::Master;

/// Serves one `events` request until the reader goes away.
pub async fn stream(master: &Master, tag: Option<String>, write: OwnedWriteHalf) {
    stream_filtered(master, tag, write, |_: &Event| true).await;
}

/// As [`stream`], passing only the events `reaches` lets through (a
/// token's role: the agents its target reaches).
pub async fn stream_filtered(
    master: &Master,
    tag: Option<String>,
    mut write: OwnedWriteHalf,
    reaches: impl Fn(&Event) -> bool,
) {
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
    pump(events, matcher.as_ref(), &reaches, &mut write).await;
}

/// Writes the tail's events to `write` until it fails or the bus closes.
async fn pump(
    mut events: broadcast::Receiver<Arc<Event>>,
    matcher: Option<&GlobMatcher>,
    reaches: &impl Fn(&Event) -> bool,
    write: &mut (impl AsyncWrite + Unpin),
) {
    loop {
        let line = match events.recv().await {
            Ok(event) if matcher.is_none_or(|m| m.is_match(&event.tag)) && reaches(&event) => {
                TailLine::Event(event.to_json())
            }
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
        pump(receiver, Some(&matcher), &|_: &Event| true, &mut out).await;
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
}
