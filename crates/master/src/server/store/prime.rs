//! Once-only across a failover (issue #20): the event ids PostgreSQL
//! already holds for an agent, read when its session starts on this master.
//!
//! An agent that fails over resends its outbox (everything not yet
//! acknowledged) to its new master, whose seen ids (`sessions.rs`) are its
//! own: without this, an event the old master had recorded and reacted to
//! would be reacted to again. The link (`server/link.rs`, "priming") holds
//! a new session's messages until [`Primer::recent_ids`] answers, remembers
//! those ids as seen, then takes the held messages: a resent event already
//! recorded is acknowledged and dropped, not published nor reacted to.
//!
//! Bounded: the newest [`PRIMED_IDS`] events of the agent (by event time;
//! the index `events_by_agent`), what the session's seen ids hold per
//! agent anyway. An agent whose outbox held more recorded-but-unacknowledged
//! events than that has the older ones reacted to again (recorded once:
//! inserts are `ON CONFLICT DO NOTHING`).
//!
//! The hot path does not wait on it: only a session's first messages wait,
//! for one indexed query, at most [`PRIME_TIMEOUT`]. PostgreSQL unreachable:
//! the query fails (or times out), the session is taken unprimed (at least
//! once, as with one master), and the primer tries PostgreSQL again only
//! after [`RETRY_AFTER`], so a fleet re-homing during an outage does not
//! wait a timeout each.

use std::sync::Arc;
use std::time::Duration;

use halite_proto::Id;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use super::postgres::{PgError, PgTarget};

/// Event ids read per agent at most: `sessions::RECENT_IDS`.
pub const PRIMED_IDS: usize = crate::server::sessions::RECENT_IDS;
/// How long a session's first messages wait for the ids at most.
pub const PRIME_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, how long the primer answers at once without trying.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Sessions waiting for the primer. When full, a session is taken unprimed.
pub const PRIME_QUEUE: usize = 1024;

/// Why an agent's ids could not be read; its session is taken unprimed.
#[derive(Debug, thiserror::Error)]
pub enum PrimeError {
    #[error(transparent)]
    Store(#[from] PgError),
    #[error("the PostgreSQL store {target}: reading agent `{agent}`'s event ids: {source}")]
    Query { target: String, agent: String, source: tokio_postgres::Error },
    #[error("the PostgreSQL store was unreachable less than {RETRY_AFTER:?} ago")]
    CoolingDown,
    #[error("no answer within {PRIME_TIMEOUT:?}")]
    Timeout,
    #[error("{PRIME_QUEUE} sessions are waiting for their ids already")]
    Busy,
}

struct Request {
    agent: String,
    answer: oneshot::Sender<Result<Vec<Id>, PrimeError>>,
}

/// The handle the link asks; cheap to clone.
#[derive(Clone)]
pub struct Primer {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Primer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Primer")
    }
}

/// The primer's connection, shared by the queries in flight.
struct Connection {
    target: PgTarget,
    client: Option<Arc<tokio_postgres::Client>>,
    /// No attempt before this, after a failure.
    quiet_until: Option<Instant>,
}

impl Primer {
    /// Starts the primer's task on the current runtime; it connects on the
    /// first request.
    pub fn spawn(target: PgTarget) -> Primer {
        let (requests, mut inbox) = mpsc::channel::<Request>(PRIME_QUEUE);
        let connection = Arc::new(Mutex::new(Connection { target, client: None, quiet_until: None }));
        tokio::spawn(async move {
            while let Some(request) = inbox.recv().await {
                // Each query on its own task: they pipeline on the one
                // connection, and a slow one holds up no other.
                let connection = connection.clone();
                tokio::spawn(async move {
                    let result = read(&connection, &request.agent).await;
                    let _ = request.answer.send(result);
                });
            }
        });
        Primer { requests }
    }

    /// The newest [`PRIMED_IDS`] event ids recorded for `agent`, within
    /// [`PRIME_TIMEOUT`].
    pub async fn recent_ids(&self, agent: &str) -> Result<Vec<Id>, PrimeError> {
        let (answer, answered) = oneshot::channel();
        self.requests.try_send(Request { agent: agent.to_owned(), answer }).map_err(|_| PrimeError::Busy)?;
        match tokio::time::timeout(PRIME_TIMEOUT, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(PrimeError::Timeout),
        }
    }
}

/// One agent's ids, connecting first when needed.
async fn read(connection: &Mutex<Connection>, agent: &str) -> Result<Vec<Id>, PrimeError> {
    let (client, target) = {
        let mut connection = connection.lock().await;
        if connection.quiet_until.is_some_and(|until| Instant::now() < until) {
            return Err(PrimeError::CoolingDown);
        }
        if connection.client.as_ref().is_none_or(|client| client.is_closed()) {
            match connection.target.connect().await {
                Ok(client) => connection.client = Some(Arc::new(client)),
                Err(error) => {
                    connection.client = None;
                    connection.quiet_until = Some(Instant::now() + RETRY_AFTER);
                    return Err(error.into());
                }
            }
        }
        (connection.client.clone(), connection.target.to_string())
    };
    let Some(client) = client else { return Err(PrimeError::CoolingDown) };
    let limit = i64::try_from(PRIMED_IDS).unwrap_or(i64::MAX);
    let rows =
        client.query("SELECT id FROM events WHERE agent = $1 ORDER BY time_us DESC LIMIT $2", &[&agent, &limit]).await;
    match rows {
        Ok(rows) => Ok(rows.iter().filter_map(|row| row.get::<_, &str>(0).parse().ok()).collect()),
        Err(source) => {
            let mut connection = connection.lock().await;
            connection.client = None;
            connection.quiet_until = Some(Instant::now() + RETRY_AFTER);
            Err(PrimeError::Query { target, agent: agent.to_owned(), source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL unreachable: the first session waits for one failed
    /// connection, the next ones are answered at once until
    /// [`RETRY_AFTER`] has passed (a fleet re-homing in an outage does not
    /// each wait a timeout).
    #[tokio::test]
    async fn an_unreachable_store_is_not_tried_again_for_each_session() {
        // Nothing listens on port 1 of loopback: refused at once.
        let target = PgTarget::new("postgres://halite@127.0.0.1:1/halite?sslmode=disable", None, None).unwrap();
        let primer = Primer::spawn(target);
        let first = primer.recent_ids("web01").await.unwrap_err();
        assert!(matches!(first, PrimeError::Store(_)), "{first}");
        let second = primer.recent_ids("web02").await.unwrap_err();
        assert!(matches!(second, PrimeError::CoolingDown), "{second}");
    }
}
