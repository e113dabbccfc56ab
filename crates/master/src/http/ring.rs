//! The API's view of the bus: the last [`RING`] events, each numbered,
//! so an SSE client that reconnects with `Last-Event-ID` gets what it
//! missed; and a live feed of the same numbered events for the streams.
//!
//! While a stream is live, one task copies from the bus's in-process tail
//! (a lossy broadcast: the bus never waits for it) into the ring and
//! onward to [`FEED`], a broadcast of its own. While none is, nothing waits
//! on the tail, so publishing wakes no thread: the tail keeps the newest
//! events and the first reader of the ring takes them. A client slower than the feed loses events and
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
use tokio::sync::Notify;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
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
}

/// The ring and the feed.
#[derive(Debug)]
pub struct Ring {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Numbered>,
    /// The bus's tail. While no stream is live nobody waits on it, so the
    /// master's publishing wakes no thread: events wait in the tail (its
    /// `TAIL_QUEUE`, more than [`RING`]) and whoever reads the ring first
    /// takes them ([`Ring::catch_up`]). While a stream is live the copier
    /// holds it (`None` here) and keeps the ring current.
    tail: Mutex<Option<broadcast::Receiver<Arc<Event>>>>,
    /// Wakes the copier when a stream attaches.
    wanted: Notify,
}

impl Ring {
    /// Starts copying from `bus`, and from `fleet` (the other masters'
    /// events, while a stream holds it), until `cancel`.
    pub fn start(bus: &Bus, fleet: Option<&FleetTail>, cancel: CancellationToken) -> Arc<Ring> {
        let (feed, _) = broadcast::channel(FEED);
        let ring = Arc::new(Ring {
            inner: Mutex::default(),
            feed,
            tail: Mutex::new(Some(bus.subscribe())),
            wanted: Notify::new(),
        });
        let mut fleet = fleet.map(FleetTail::subscribe);
        let copier = ring.clone();
        tokio::spawn(async move {
            loop {
                let mut live = None;
                if copier.feed.receiver_count() > 0 {
                    live = copier.tail.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                let Some(mut tail) = live else {
                    // Nobody streams: sleep until a stream attaches (or
                    // the fleet tail, which reads only for a stream, sends).
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = copier.wanted.notified() => {}
                        Some(remote) = next_remote(&mut fleet) => copier.take_remote(remote, &mut fleet),
                    }
                    continue;
                };
                copier.drain(&mut tail);
                while copier.feed.receiver_count() > 0 {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        received = tail.recv() => match received {
                            Ok(event) => copier.push(event),
                            Err(RecvError::Lagged(skipped)) => copier.skipped(skipped),
                            Err(RecvError::Closed) => return,
                        },
                        Some(remote) = next_remote(&mut fleet) => copier.take_remote(remote, &mut fleet),
                    }
                }
                // The last stream went: hand the tail back to the readers.
                copier.drain(&mut tail);
                *copier.tail.lock().unwrap_or_else(|p| p.into_inner()) = Some(tail);
            }
        });
        ring
    }

    /// Takes into the ring what waits in the bus's tail, unless the copier
    /// holds it (a stream is live: the ring is current).
    fn catch_up(&self) {
        if let Some(tail) = self.tail.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            self.drain(tail);
        }
    }

    fn drain(&self, tail: &mut broadcast::Receiver<Arc<Event>>) {
        loop {
            match tail.try_recv() {
                Ok(event) => self.push(event),
                Err(TryRecvError::Lagged(skipped)) => self.skipped(skipped),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    /// Events that left the bus's tail before the ring took them: more than
    /// the tail holds came while nobody streamed or read, so every event
    /// the ring holds is newer than they are, and they are numbered as gone
    /// (a resume from before them is told how many it missed).
    fn skipped(&self, skipped: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.last += skipped;
        inner.events.clear();
    }

    fn take_remote(
        &self,
        remote: Result<Arc<Remote>, RecvError>,
        fleet: &mut Option<broadcast::Receiver<Arc<Remote>>>,
    ) {
        match remote {
            Ok(remote) => {
                let Remote { master, event } = &*remote;
                self.push_from(event.clone(), Some(master.as_str().into()));
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "The API's event ring fell behind the fleet's events.");
            }
            Err(RecvError::Closed) => *fleet = None,
        }
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
        self.catch_up();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let feed = self.feed.subscribe();
        // The copier goes live for this stream (a stored permit if it is
        // busy): what reaches the tail after the catch-up is fed to it.
        self.wanted.notify_one();
        let Some(after) = after else { return (Replay::default(), feed) };
        if after > inner.last {
            return (Replay { missed: Some(None), events: Vec::new() }, feed);
        }
        let oldest = inner.events.front().map_or(inner.last + 1, |n| n.seq);
        let missed = oldest.saturating_sub(after + 1);
        let events = inner.events.iter().filter(|n| n.seq > after).cloned().collect();
        (Replay { missed: (missed > 0).then_some(Some(missed)), events }, feed)
    }

    /// The newest `limit` events, oldest first (the dashboard's backlog).
    pub fn recent(&self, limit: usize) -> Vec<Numbered> {
        self.catch_up();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().skip(inner.events.len().saturating_sub(limit)).cloned().collect()
    }
}

/// The fleet tail's next event; never, without several masters.
async fn next_remote(fleet: &mut Option<broadcast::Receiver<Arc<Remote>>>) -> Option<Result<Arc<Remote>, RecvError>> {
    match fleet.as_mut() {
        Some(fleet) => Some(fleet.recv().await),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use halite_proto::Value;

    use super::*;

    fn ring() -> Ring {
        Ring {
            inner: Mutex::default(),
            feed: broadcast::channel(FEED).0,
            tail: Mutex::new(None),
            wanted: Notify::new(),
        }
    }

    fn event(n: usize) -> Arc<Event> {
        Arc::new(Event::new("halite/beacon/web01/motd", "web01", Value::map().with("n", n as i64)))
    }

    /// With no stream live, nothing is copied (and no thread woken) until
    /// someone reads the ring; then it holds what the bus's tail kept, and
    /// what fell out of the tail meanwhile is numbered as missed.
    #[test]
    fn with_no_stream_the_tail_waits_for_the_first_reader() {
        let (bus, tail) = broadcast::channel(8);
        let ring = Ring {
            inner: Mutex::default(),
            feed: broadcast::channel(FEED).0,
            tail: Mutex::new(Some(tail)),
            wanted: Notify::new(),
        };
        for n in 1..=3 {
            bus.send(event(n)).unwrap();
        }
        assert_eq!(ring.inner.lock().unwrap().last, 0, "copied before anyone read");
        assert_eq!(ring.recent(10).iter().map(|n| n.seq).collect::<Vec<_>>(), [1, 2, 3]);
        // Seventeen more while nobody reads: the tail keeps the newest 8.
        for n in 4..=20 {
            bus.send(event(n)).unwrap();
        }
        let (replay, _feed) = ring.resume(Some(3));
        assert_eq!(replay.missed, Some(Some(9)));
        assert_eq!(replay.events.iter().map(|n| n.seq).collect::<Vec<_>>(), (13..=20).collect::<Vec<_>>());
        assert_eq!(replay.events[0].event.data.get("n"), Some(&Value::from(13_i64)));
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
