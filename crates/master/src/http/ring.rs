//! The API's view of the bus: the last [`RING`] events, each numbered,
//! so an SSE client that reconnects with `Last-Event-ID` gets what it
//! missed; and a live feed of the same numbered events for the streams.
//!
//! One task copies from the bus's in-process tail (a lossy broadcast:
//! the bus never waits for it) into the ring and onward to [`FEED`], a
//! broadcast of its own. A client slower than the feed loses events and
//! is told how many (`missed`); none of this ever slows the master.
//! Numbers start at 1 with each master run: an id from an earlier run is
//! answered with a `missed` of unknown size.
//!
//! With several masters the copier also takes the fleet tail's events
//! (`cluster/tail.rs`: other masters', each naming its master) into the
//! same numbering. The fleet tail reads only while a stream holds it
//! (`api/events.rs`), so the ring holds other masters' events only from
//! the times someone streamed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use halite_proto::Event;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::server::bus::Bus;
use crate::server::cluster::tail::{FleetTail, Remote};

/// Events kept for `Last-Event-ID` resumes.
pub const RING: usize = 1024;
/// Numbered events waiting for the slowest live stream; beyond that it
/// misses them (and is told).
pub const FEED: usize = 1024;

/// One event with its number.
#[derive(Debug, Clone)]
pub struct Numbered {
    pub seq: u64,
    pub event: Arc<Event>,
    /// The master it came from, when not this one (the fleet tail).
    pub master: Option<Arc<str>>,
    /// The event's SSE frame, written by the first stream that sends it
    /// and shared by every stream after (not per client; never for an
    /// event no stream sends).
    frame: Arc<OnceLock<Bytes>>,
}

impl Numbered {
    pub fn new(seq: u64, event: Arc<Event>, master: Option<Arc<str>>) -> Numbered {
        Numbered { seq, event, master, frame: Arc::default() }
    }

    /// The SSE frame: `id: N`, `event: event`, `data:` the event as the
    /// publisher sends it (one line: JSON escapes newlines), with a
    /// `master` field when another master's, a blank line.
    pub fn frame(&self) -> &Bytes {
        self.frame.get_or_init(|| {
            let json = match &self.master {
                None => self.event.json_bytes(),
                Some(master) => {
                    let mut json = self.event.to_json();
                    if let Some(fields) = json.as_object_mut() {
                        fields.insert("master".into(), master.as_ref().into());
                    }
                    json.to_string().into_bytes()
                }
            };
            let mut frame = Vec::with_capacity(json.len() + 48);
            frame.extend_from_slice(format!("id: {}\nevent: event\ndata: ", self.seq).as_bytes());
            frame.extend_from_slice(&json);
            frame.extend_from_slice(b"\n\n");
            Bytes::from(frame)
        })
    }
}

/// What a resume gets from the ring.
#[derive(Debug, Default)]
pub struct Replay {
    /// Events after the client's id that are gone from the ring (`None`:
    /// unknown, the id is from an earlier run).
    pub missed: Option<Option<u64>>,
    pub events: Vec<Numbered>,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Numbered>,
    /// The number of the newest event (0: none yet).
    last: u64,
    /// The last `halite/master/tree/reloaded` or `tree/failed`.
    last_reload: Option<Arc<Event>>,
}

/// The ring and the feed.
#[derive(Debug)]
pub struct Ring {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Numbered>,
}

impl Ring {
    /// Starts copying from `bus`, and from `fleet` (the other masters'
    /// events, while a stream holds it), until `cancel`.
    pub fn start(bus: &Bus, fleet: Option<&FleetTail>, cancel: CancellationToken) -> Arc<Ring> {
        let (feed, _) = broadcast::channel(FEED);
        let ring = Arc::new(Ring { inner: Mutex::default(), feed });
        let mut tail = bus.subscribe();
        let mut fleet = fleet.map(FleetTail::subscribe);
        let copier = ring.clone();
        tokio::spawn(async move {
            loop {
                let remote = async {
                    match fleet.as_mut() {
                        Some(fleet) => fleet.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let received = tokio::select! {
                    () = cancel.cancelled() => return,
                    received = tail.recv() => received,
                    remote = remote => match remote {
                        Ok(remote) => {
                            let Remote { master, event } = &*remote;
                            copier.push_from(event.clone(), Some(master.as_str().into()));
                            continue;
                        }
                        Err(RecvError::Lagged(skipped)) => {
                            tracing::warn!(skipped, "The API's event ring fell behind the fleet's events.");
                            continue;
                        }
                        Err(RecvError::Closed) => {
                            fleet = None;
                            continue;
                        }
                    },
                };
                match received {
                    Ok(event) => copier.push(event),
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::warn!(
                            skipped,
                            "The API's event ring fell behind the bus; resumes across the gap miss events."
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        ring
    }

    /// Numbers and keeps `event`, and feeds it to the live streams.
    pub fn push(&self, event: Arc<Event>) {
        self.push_from(event, None);
    }

    /// As [`Ring::push`], for an event from another master.
    pub fn push_from(&self, event: Arc<Event>, master: Option<Arc<str>>) {
        let numbered = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.last += 1;
            let numbered = Numbered::new(inner.last, event, master);
            if numbered.event.tag == "halite/master/tree/reloaded" || numbered.event.tag == "halite/master/tree/failed"
            {
                inner.last_reload = Some(numbered.event.clone());
            }
            if inner.events.len() == RING {
                inner.events.pop_front();
            }
            inner.events.push_back(numbered.clone());
            numbered
        };
        // An error only says nobody streams right now.
        let _ = self.feed.send(numbered);
    }

    /// The live feed from now on, and what came after `after` (a client's
    /// `Last-Event-ID`) that the ring still holds: taken under one lock,
    /// so nothing falls between the replay and the feed.
    pub fn resume(&self, after: Option<u64>) -> (Replay, broadcast::Receiver<Numbered>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let feed = self.feed.subscribe();
        let Some(after) = after else { return (Replay::default(), feed) };
        if after > inner.last {
            return (Replay { missed: Some(None), events: Vec::new() }, feed);
        }
        let oldest = inner.events.front().map_or(inner.last + 1, |n| n.seq);
        let missed = oldest.saturating_sub(after + 1);
        let events = inner.events.iter().filter(|n| n.seq > after).cloned().collect();
        (Replay { missed: (missed > 0).then_some(Some(missed)), events }, feed)
    }

    /// The last reload's event (`tree/reloaded` or `tree/failed`), if any
    /// since the master started.
    pub fn last_reload(&self) -> Option<Arc<Event>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).last_reload.clone()
    }

    /// The newest `limit` events, oldest first (the dashboard's backlog).
    pub fn recent(&self, limit: usize) -> Vec<Numbered> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().skip(inner.events.len().saturating_sub(limit)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use halite_proto::Value;

    use super::*;

    fn ring() -> Ring {
        Ring { inner: Mutex::default(), feed: broadcast::channel(FEED).0 }
    }

    fn event(n: usize) -> Arc<Event> {
        Arc::new(Event::new("halite/beacon/web01/motd", "web01", Value::map().with("n", n as i64)))
    }

    /// A resume gets exactly what came after its id, is told how many
    /// fell out of the ring, and an id from another run is unknown.
    #[test]
    fn resumes_replay_what_the_ring_holds_and_count_the_rest() {
        let ring = ring();
        for n in 1..=RING + 10 {
            ring.push(event(n));
        }
        let last = (RING + 10) as u64;
        let cases: [(Option<u64>, Option<Option<u64>>, usize); 5] = [
            (None, None, 0),
            (Some(last), None, 0),
            (Some(last - 5), None, 5),
            (Some(5), Some(Some(5)), RING),
            (Some(last + 1), Some(None), 0),
        ];
        for (after, missed, replayed) in cases {
            let (replay, _) = ring.resume(after);
            assert_eq!((replay.missed, replay.events.len()), (missed, replayed), "{after:?}");
            if let Some(first) = replay.events.first() {
                assert_eq!(first.seq, after.unwrap_or(0).max(10) + 1);
            }
        }
    }

    /// An event's SSE frame is written once, whoever asks, and carries
    /// its number and the publisher's JSON on one `data:` line.
    #[test]
    fn a_frame_is_written_once_and_shared() {
        let ring = ring();
        let mut sent = event(1);
        Arc::get_mut(&mut sent).unwrap().data = Value::map().with("text", "two\nlines");
        ring.push(sent.clone());
        let (first, second) = (ring.recent(1).remove(0), ring.recent(1).remove(0));
        assert!(std::ptr::eq(first.frame().as_ptr(), second.frame().as_ptr()), "written twice");
        let text = std::str::from_utf8(first.frame()).unwrap();
        let expected = format!("id: 1\nevent: event\ndata: {}\n\n", sent.to_json());
        assert_eq!(text, expected);
    }

    /// What is pushed after a resume comes on the feed, numbered on.
    #[tokio::test]
    async fn the_feed_continues_where_the_replay_ends() {
        let ring = ring();
        ring.push(event(1));
        let (replay, mut feed) = ring.resume(Some(0));
        assert_eq!(replay.events.len(), 1);
        ring.push(event(2));
        assert_eq!(feed.recv().await.unwrap().seq, 2);
    }
}
