//! `GET /api/v1/events`: the bus as Server-Sent Events, optionally
//! filtered by a tag glob (`?tag=halite/beacon/*`).
//!
//! Each event's SSE id is its number in the API's ring
//! (`http::ring`, the last [`RING`] events): a client that reconnects with
//! `Last-Event-ID` gets every event after it that the ring still holds,
//! and a `missed` event (`{"missed": N}`, or `null` when the id is from an
//! earlier run of the master) for those it no longer does. A client slower
//! than the live feed gets a `missed` event with the number it lost; it
//! never slows the master (the bus's tail and the feed are lossy
//! broadcasts). A role sees the events of the agents its target reaches
//! and the master's own events.
//!
//! With several masters a stream also gets the other masters' agents'
//! events and job returns (`cluster/tail.rs`, read from PostgreSQL while
//! any stream is open, about 250 ms behind), each with a `master` field
//! naming where it came from, numbered in the same ring.
//! An event's SSE frame is written once, by the first stream that sends
//! it, and shared by every other (`ring::Numbered::frame`): a stream's own
//! work per event is its filter and a write. All of it runs on the HTTP
//! side's thread (`http/runtime.rs`), never on the master's.
//!
//! [`RING`]: crate::http::ring::RING

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt as _;
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::http::ring::Numbered;
use crate::server::access::Principal;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/events", get(events))
}

/// `GET /api/v1/events`' filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// A tag glob: `halite/beacon/*`, `halite/job/**`.
    pub tag: Option<String>,
}

/// What an `event` SSE event carries: an event as the publisher sends it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub tag: String,
    pub agent: String,
    pub time_us: i64,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub job: Option<String>,
    /// The master that took the event, when it is another one (several
    /// masters on PostgreSQL); absent for this master's own.
    pub master: Option<String>,
}

/// What a `missed` SSE event carries.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct MissedView {
    /// Events this stream lost (`null`: unknown, the `Last-Event-ID` is
    /// from an earlier run of the master).
    pub missed: Option<u64>,
}

/// The live event stream.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", security(("token" = [])), params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (its SSE id)")),
    responses(
        (status = 200, description = "Server-Sent Events: `event` (id = its number, data = the event as JSON) and `missed`", content_type = "text/event-stream", body = EventView),
        (status = 400, description = "The tag glob is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<HttpState>,
    principal: Principal,
    headers: HeaderMap,
    super::ApiQuery(query): super::ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    principal.can(Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let matcher = match query.tag.as_deref().map(Glob::new).transpose() {
        Ok(glob) => glob.map(|g| g.compile_matcher()),
        Err(error) => return Err(ApiError::BadRequest(format!("tag glob: {}", error.kind()))),
    };
    // An id that is not a number is no id of ours: the stream starts live.
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let (replay, feed) = state.ring.resume(after);
    let mut first: Vec<Item> = Vec::new();
    if let Some(missed) = replay.missed {
        first.push(Item::Missed(missed));
    }
    first.extend(replay.events.into_iter().map(Item::Event));
    // Held while the stream lasts: the fleet tail reads only while followed.
    let follow = state.master.fleet.as_ref().map(crate::server::cluster::tail::FleetTail::hold);
    if let Some(tail) = &state.master.fleet {
        tail.ready().await;
    }
    let filter = Filter { matcher, principal, master: state.master.clone(), _follow: follow };
    let replayed = futures_util::stream::iter(first);
    let live = futures_util::stream::unfold(feed, |mut feed: broadcast::Receiver<Numbered>| async move {
        let item = match tokio::time::timeout(KEEP_ALIVE, feed.recv()).await {
            Ok(Ok(numbered)) => Item::Event(numbered),
            Ok(Err(RecvError::Lagged(missed))) => Item::Missed(Some(missed)),
            Ok(Err(RecvError::Closed)) => return None,
            Err(_idle) => Item::KeepAlive,
        };
        Some((item, feed))
    });
    let stream = replayed
        .chain(live)
        .filter_map(move |item| {
            let frame = filter.frame(item);
            async move { frame.map(Ok::<_, Infallible>) }
        })
        .take_until(state.cancel.clone().cancelled_owned());
    let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// A stream idle this long is sent a comment, so that proxies and
/// clients see it alive (axum's `KeepAlive` default).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

enum Item {
    Event(Numbered),
    Missed(Option<u64>),
    KeepAlive,
}

/// Which events a stream passes: its tag glob and its role's reach.
struct Filter {
    matcher: Option<GlobMatcher>,
    principal: Principal,
    master: std::sync::Arc<crate::server::context::Master>,
    /// Keeps the fleet tail reading while this stream is open.
    _follow: Option<crate::server::cluster::tail::Follow>,
}

impl Filter {
    /// What the stream sends for `item`, if anything: an event's frame is
    /// the ring's, written once for every stream (`Numbered::frame`).
    fn frame(&self, item: Item) -> Option<Bytes> {
        match item {
            Item::Missed(missed) => {
                let data = serde_json::to_string(&MissedView { missed }).unwrap_or_default();
                Some(Bytes::from(format!("event: missed\ndata: {data}\n\n")))
            }
            Item::KeepAlive => Some(Bytes::from_static(b":\n\n")),
            Item::Event(numbered) => {
                let event = &numbered.event;
                if self.matcher.as_ref().is_some_and(|m| !m.is_match(&event.tag)) {
                    return None;
                }
                let reaches = event.agent.is_empty()
                    || self.principal.role.can(Verb::Admin)
                    || self.principal.sees(&event.agent, &self.master.sessions.facts(&event.agent));
                if !reaches {
                    return None;
                }
                Some(numbered.frame().clone())
            }
        }
    }
}
