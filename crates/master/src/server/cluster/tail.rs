//! The fleet tail: while an operator follows the events (`halite-master
//! events`, the API's SSE stream, the dashboard's live events), this
//! master reads from PostgreSQL what the *other* masters recorded (their
//! agents' events, and their agents' job returns) and hands it to those
//! followers with the master it came from, so a follower on any master
//! sees the whole fleet. This master's own events stay live on its bus;
//! nothing here touches them.
//!
//! Costs nothing unfollowed: the task waits on the count of followers
//! ([`FleetTail::follow`] hands out a guard) and holds no connection
//! while it is zero. Followed, it polls every [`POLL_EVERY`], at most
//! [`TAIL_BATCH`] rows a query (a full page is followed by the next at
//! once), on a connection of its own; the batched event writes are not
//! touched (no `NOTIFY`). What it reads waits for followers in a bounded
//! broadcast ([`FLEET_QUEUE`]): a follower that falls behind is told how
//! many it missed, as with the local tail, and never holds the poll back.
//!
//! **No row is skipped.** Transactions commit out of the order their ids
//! or sequence values were taken in, so "rows after the last one seen"
//! can miss a row committed late. Each row carries the id of the
//! transaction that wrote it (`xid`, PostgreSQL's `pg_current_xact_id()`,
//! schema v5), and the tail pages by `(xid, key)` but only below
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still
//! running: every transaction below it has ended, so no row can appear
//! behind the cursor later. The price: a long transaction that writes the
//! database (a large retention pass) holds the tail back until it ends.
//! A job's answer replaces its row (a new xid): it is read when answered.
//!
//! Where it starts: at the horizon when the first follower attaches
//! (what committed just before may show too); when the last one leaves the
//! cursor is dropped, and the next follower starts at the horizon again.
//! A follower waits for that position ([`FleetTail::ready`], at most
//! [`READY_WAIT`]) before it is told it follows, so whatever another
//! master records after `events` prints its notice (or the SSE stream
//! answers) is shown.

use std::sync::Arc;
use std::time::Duration;

use halite_proto::event::tag;
use halite_proto::{Event, Id, Value};
use tokio::sync::{broadcast, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::server::store::postgres::{PgTarget, describe};

/// How often a followed tail reads PostgreSQL.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Rows one query reads at most, per table.
pub const TAIL_BATCH: i64 = 1024;
/// Events from other masters waiting for the slowest follower; beyond it
/// a follower loses the oldest and is told how many.
pub const FLEET_QUEUE: usize = 4096;
/// How long a new follower waits for the tail's starting position; with
/// PostgreSQL unreachable it follows this master's events meanwhile.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// An event another master took or raised, and that master.
#[derive(Debug)]
pub struct Remote {
    /// The master's name (its link's address).
    pub master: String,
    pub event: Arc<Event>,
}

/// The handle followers attach through; cheap to clone.
#[derive(Debug, Clone)]
pub struct FleetTail {
    followers: Arc<watch::Sender<usize>>,
    events: broadcast::Sender<Arc<Remote>>,
    /// Whether the tail has its starting position (while followed).
    positioned: Arc<watch::Sender<bool>>,
}

/// A follower's hold on the tail: while one exists, the tail polls.
#[derive(Debug)]
pub struct Follow {
    followers: Arc<watch::Sender<usize>>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.followers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Why a poll failed; the tail reconnects at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Connect(#[from] crate::server::store::postgres::PgError),
    #[error("the PostgreSQL store {target}: reading the fleet's events: {}", describe(source))]
    Query { target: String, source: tokio_postgres::Error },
}

impl FleetTail {
    /// A tail with no poller (tests, and a master without PostgreSQL
    /// never makes one).
    fn idle() -> FleetTail {
        let (followers, _) = watch::channel(0);
        let (events, _) = broadcast::channel(FLEET_QUEUE);
        let (positioned, _) = watch::channel(false);
        FleetTail { followers: Arc::new(followers), events, positioned: Arc::new(positioned) }
    }

    /// Starts the tail of the masters other than `name` on `target`.
    pub fn spawn(target: PgTarget, name: String, cancel: CancellationToken) -> FleetTail {
        let tail = FleetTail::idle();
        let mut followed = tail.followers.subscribe();
        let events = tail.events.clone();
        let positioned = tail.positioned.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = followed.wait_for(|n| *n > 0) => if changed.is_err() { return },
                }
                let mut poller = Poller { target: target.clone(), name: name.clone(), client: None, cursor: None };
                let mut said = false;
                while *followed.borrow() > 0 {
                    let full = match poller.poll(&events).await {
                        Ok(full) => {
                            said = false;
                            positioned.send_replace(true);
                            full
                        }
                        Err(error) => {
                            if !said {
                                tracing::warn!(%error, "Cannot read the other masters' events; tried again while followed.");
                                said = true;
                            }
                            poller.client = None;
                            false
                        }
                    };
                    if full {
                        continue;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(POLL_EVERY) => {}
                        _ = followed.wait_for(|n| *n == 0) => {}
                    }
                }
                positioned.send_replace(false);
            }
        });
        tail
    }

    /// Attaches a follower: the tail polls while any is attached. The
    /// receiver gets what is read from now on.
    pub fn follow(&self) -> (Follow, broadcast::Receiver<Arc<Remote>>) {
        let receiver = self.events.subscribe();
        (self.hold(), receiver)
    }

    /// Keeps the tail polling without a receiver of its own (the API's
    /// ring receives for its streams: [`FleetTail::subscribe`]).
    pub fn hold(&self) -> Follow {
        self.followers.send_modify(|n| *n += 1);
        Follow { followers: self.followers.clone() }
    }

    /// Waits (at most [`READY_WAIT`]) until the tail, held by the caller,
    /// has its starting position: what other masters record from then on
    /// reaches the caller's receiver.
    pub async fn ready(&self) {
        let mut positioned = self.positioned.subscribe();
        if tokio::time::timeout(READY_WAIT, positioned.wait_for(|p| *p)).await.is_err() {
            tracing::debug!("The fleet tail has no position yet; following this master's events meanwhile.");
        }
    }

    /// What is read from now on, without making the tail poll.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Remote>> {
        self.events.subscribe()
    }
}

/// Where the tail is in each table: the last row read, by (xid, key).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    events: (String, String),
    answers: (String, String, String),
}

struct Poller {
    target: PgTarget,
    name: String,
    client: Option<Client>,
    cursor: Option<Cursor>,
}

impl Poller {
    /// Reads one page of each table and sends what other masters wrote;
    /// `true` when a page was full (more is waiting).
    async fn poll(&mut self, events: &broadcast::Sender<Arc<Remote>>) -> Result<bool, TailError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.target.connect().await?);
        }
        let Some(client) = self.client.as_ref() else { return Ok(false) };
        let query = |source| TailError::Query { target: self.target.to_string(), source };
        let Some(cursor) = self.cursor.as_mut() else {
            // Rows from transactions not ended yet are all at or above the
            // horizon: start there.
            let row =
                client.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[]).await.map_err(query)?;
            let xmin: String = row.get(0);
            self.cursor =
                Some(Cursor { events: (xmin.clone(), String::new()), answers: (xmin, String::new(), String::new()) });
            return Ok(false);
        };
        let events_after: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&cursor.events.0, &cursor.events.1, &self.name, &TAIL_BATCH];
        let answers_after: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&cursor.answers.0, &cursor.answers.1, &cursor.answers.2, &self.name, &TAIL_BATCH];
        let (event_rows, answer_rows) = tokio::try_join!(
            client.query(
                "SELECT xid::text, id, master, agent, tag, time_us,
                        CASE WHEN master IS DISTINCT FROM $3 THEN data END
                 FROM events
                 WHERE (xid, id) > ($1::text::xid8, $2) AND xid < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY xid, id LIMIT $4",
                &events_after,
            ),
            client.query(
                "SELECT a.xid::text, a.jid, a.agent, a.master, a.finished_us,
                        CASE WHEN a.status = 'answered' AND a.master IS DISTINCT FROM $4 THEN
                            (SELECT coalesce(json_agg(json_build_object(
                                'id', r.state, 'kind', r.kind, 'outcome', r.outcome, 'changes', r.changes::json,
                                'error', r.error, 'duration_us', r.duration_us) ORDER BY r.seq), '[]')::text
                             FROM job_results r WHERE r.jid = a.jid AND r.agent = a.agent)
                        END
                 FROM job_agents a
                 WHERE (a.xid, a.jid, a.agent) > ($1::text::xid8, $2, $3)
                   AND a.xid < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY a.xid, a.jid, a.agent LIMIT $5",
                &answers_after,
            ),
        )
        .map_err(query)?;
        for row in &event_rows {
            cursor.events = (row.get(0), row.get(1));
            let (Some(master), Some(data)) = (row.get::<_, Option<String>>(2), row.get::<_, Option<String>>(6)) else {
                continue;
            };
            let Ok(id) = row.get::<_, &str>(1).parse::<Id>() else { continue };
            let event = Event {
                id,
                tag: row.get(4),
                agent: row.get(3),
                time_us: row.get(5),
                data: json_value(&data),
                cause_job: None,
            };
            // An error only says nobody follows right now.
            let _ = events.send(Arc::new(Remote { master, event: Arc::new(event) }));
        }
        for row in &answer_rows {
            cursor.answers = (row.get(0), row.get(1), row.get(2));
            let (Some(master), Some(results)) = (row.get::<_, Option<String>>(3), row.get::<_, Option<String>>(5))
            else {
                continue;
            };
            let Ok(jid) = row.get::<_, &str>(1).parse::<Id>() else { continue };
            let agent: String = row.get(2);
            let event = answer_event(jid, &agent, row.get::<_, Option<i64>>(4).unwrap_or_default(), &results);
            let _ = events.send(Arc::new(Remote { master, event: Arc::new(event) }));
        }
        let page = usize::try_from(TAIL_BATCH).unwrap_or(usize::MAX);
        Ok(event_rows.len() >= page || answer_rows.len() >= page)
    }
}

/// Stored JSON text as a [`Value`] (`null` if it does not parse).
fn json_value(text: &str) -> Value {
    Value::from_json(&serde_json::from_str(text).unwrap_or(serde_json::Value::Null))
}

/// A job's return as the answering master published it
/// (`halite/job/<jid>/ret/<agent>`, `{results, failed}`), from its rows:
/// the output of a `cmd.run` is not in the event there either.
fn answer_event(jid: Id, agent: &str, time_us: i64, results: &str) -> Event {
    let results = json_value(results);
    let failed = match &results {
        Value::List(states) => states.iter().any(|state| match state {
            Value::Map(fields) => fields.get("outcome") == Some(&Value::from("failed")),
            _ => false,
        }),
        _ => false,
    };
    Event {
        time_us,
        cause_job: Some(jid),
        ..Event::new(tag::job_ret(jid, agent), agent, Value::map().with("results", results).with("failed", failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail polls exactly while someone follows: each guard counts,
    /// and dropping the last stops it.
    #[test]
    fn followers_are_counted_by_their_guards() {
        let tail = FleetTail::idle();
        let count = || *tail.followers.borrow();
        let (first, _receiver) = tail.follow();
        let second = tail.hold();
        let _quiet = tail.subscribe();
        assert_eq!(count(), 2);
        drop(first);
        assert_eq!(count(), 1);
        drop(second);
        assert_eq!(count(), 0);
    }

    /// A return read back from the rows says failed when a state failed,
    /// names its job, and keeps each state's fields.
    #[test]
    fn a_return_is_rebuilt_from_its_rows() {
        let jid = Id::new();
        let cases = [
            (r#"[{"id":"motd","kind":"file.managed","outcome":"changed"}]"#, false),
            (r#"[{"id":"a","outcome":"unchanged"},{"id":"b","outcome":"failed","error":"no"}]"#, true),
            ("[]", false),
        ];
        for (results, failed) in cases {
            let event = answer_event(jid, "web02", 7, results);
            assert_eq!(event.tag, format!("halite/job/{jid}/ret/web02"));
            assert_eq!((event.cause_job, event.time_us), (Some(jid), 7));
            let json = event.to_json();
            assert_eq!(json["data"]["failed"], failed, "{results}");
            assert_eq!(json["data"]["results"], serde_json::from_str::<serde_json::Value>(results).unwrap());
        }
    }
}
