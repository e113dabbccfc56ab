//! The master's side of `halite-master events`: a live tail of the bus
//! through the control socket.
//!
//! [`stream`] subscribes to the bus's tail (a bounded
//! broadcast, [`crate::server::bus::TAIL_QUEUE`]) and writes one JSON line per
//! matching event; a tail that falls behind gets a `lagged` line with the
//! number of events it missed, and the bus never waits for it. The command's side is
//! `cli/events.rs`.
//!
//! With several masters the tail also follows the fleet
//! (`cluster/tail.rs`): the other masters' agents' events and job returns,
//! read from PostgreSQL while this tail is attached, each line with a
//! `master` field naming where it came from (this master's own events
//! have none, and stay live). The fleet's events have a bounded queue of
//! their own; falling behind it is told the same way.

use globset::{Glob, GlobMatcher};
use halite_proto::Event;
use serde::Serialize;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::protocol::{Response, TailLine};
use crate::server::cluster::tail::Remote;
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
    // Held while this tail runs: the fleet tail polls only while followed.
    let (_follow, fleet) = master.fleet.as_ref().map(|tail| tail.follow()).unzip();
    if let Some(tail) = &master.fleet {
        tail.ready().await;
    }
    if send(&mut write, &Response { ok: true, ..Response::default() }).await.is_err() {
        return;
    }
    pump(events, fleet, matcher.as_ref(), &reaches, &mut write).await;
}

/// The next item of `receiver`, or never once it is gone.
async fn next<T: Clone>(receiver: &mut Option<broadcast::Receiver<T>>) -> Result<T, RecvError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes the tail's events to `write` until it fails or the bus closes:
/// this master's, and with `fleet` the other masters' (with `master`).
async fn pump(
    events: broadcast::Receiver<Arc<Event>>,
    mut fleet: Option<broadcast::Receiver<Arc<Remote>>>,
    matcher: Option<&GlobMatcher>,
    reaches: &impl Fn(&Event) -> bool,
    write: &mut (impl AsyncWrite + Unpin),
) {
    let shown = |event: &Event| matcher.is_none_or(|m| m.is_match(&event.tag)) && reaches(event);
    let mut events = Some(events);
    // Until both are closed (the master stops): each closes on its own.
    while events.is_some() || fleet.is_some() {
        let line = tokio::select! {
            // This master's own first: they are the live ones.
            biased;
            received = next(&mut events) => match received {
                Ok(event) if shown(&event) => TailLine::Event(event.to_json()),
                Ok(_) => continue,
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "An events tail fell behind.");
                    TailLine::Lagged(skipped)
                }
                Err(RecvError::Closed) => {
                    events = None;
                    continue;
                }
            },
            received = next(&mut fleet) => match received {
                Ok(remote) if shown(&remote.event) => TailLine::Event(with_master(&remote)),
                Ok(_) => continue,
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "An events tail fell behind the fleet's events.");
                    TailLine::Lagged(skipped)
                }
                Err(RecvError::Closed) => {
                    fleet = None;
                    continue;
                }
            },
        };
        if send(write, &line).await.is_err() {
            return;
        }
    }
}

/// Another master's event as the publisher's JSON, with `master` naming
/// that master.
pub fn with_master(remote: &Remote) -> serde_json::Value {
    let mut json = remote.event.to_json();
    if let Some(fields) = json.as_object_mut() {
        fields.insert("master".into(), remote.master.clone().into());
    }
    json
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
        pump(receiver, None, Some(&matcher), &|_: &Event| true, &mut out).await;
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

    /// Events of another master come merged into the tail with `master`
    /// naming it, filtered like the rest; a tail behind the fleet's queue
    /// is told how many it missed.
    #[tokio::test]
    async fn another_masters_events_are_merged_and_named() {
        let (local, receiver) = broadcast::channel(16);
        let (fleet, fleet_receiver) = broadcast::channel::<Arc<Remote>>(2);
        for n in 0..3i64 {
            let tag = if n == 1 { "halite/job/x/new" } else { "halite/beacon/web02/motd" };
            let event = Arc::new(Event::new(tag, "web02", Value::map().with("n", n)));
            fleet.send(Arc::new(Remote { master: "tcp://127.0.0.3:4510".into(), event })).unwrap();
        }
        local.send(Arc::new(Event::new("halite/beacon/web01/motd", "web01", Value::map().with("n", 9i64)))).unwrap();
        drop((local, fleet));
        let matcher = Glob::new("halite/beacon/*").unwrap().compile_matcher();
        let mut out = Vec::new();
        pump(receiver, Some(fleet_receiver), Some(&matcher), &|_: &Event| true, &mut out).await;
        let lines: Vec<TailLine> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let shown: Vec<String> = lines
            .iter()
            .map(|l| match l {
                TailLine::Event(e) => format!("{} {} {}", e["agent"], e["data"]["n"], e["master"]),
                TailLine::Lagged(n) => format!("lagged {n}"),
            })
            .collect();
        // The local one first (it was there when the tail began), then the
        // fleet's: one lost to its bound of 2 (told), the job filtered out.
        assert_eq!(shown, ["\"web01\" 9 null", "lagged 1", "\"web02\" 2 \"tcp://127.0.0.3:4510\""]);
    }
}
