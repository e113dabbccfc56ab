//! Events: what beacons, the link and the master's engines say happened.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// A unique, time-sortable id (a ULID) for events and jobs. Ids made in one
/// process are strictly increasing, so sorting by id is sorting by creation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Id(pub u128);

static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

impl Id {
    pub fn new() -> Self {
        let mut guard = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let generator = guard.get_or_insert_with(ulid::Generator::new);
        // The generator fails only when 2^80 ids are made in one millisecond.
        let ulid = generator.generate().unwrap_or_else(|_| ulid::Ulid::new());
        Id(ulid.0)
    }
}

impl Default for Id {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ulid::Ulid(self.0))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

impl FromStr for Id {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(|u| Id(u.0))
    }
}

/// Something that happened, as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and sortable; the master drops a second event with the same id.
    pub id: Id,
    /// Slash-separated topic, e.g. `halite/beacon/web01/nginx-conf`.
    pub tag: String,
    /// The agent the event is about (the master's own events name the agent
    /// concerned, or are empty).
    pub agent: String,
    /// Microseconds since the Unix epoch, taken where the event was raised.
    pub time_us: i64,
    /// What happened; its shape depends on the tag.
    pub data: Value,
    /// The job whose work raised this event, if any. A corrective write never
    /// raises drift, so beacon events from a job's own changes do not exist;
    /// this links the job lifecycle events (`halite/job/...`) to their job.
    pub cause_job: Option<Id>,
}

impl Event {
    pub fn new(tag: impl Into<String>, agent: impl Into<String>, data: Value) -> Self {
        Event { id: Id::new(), tag: tag.into(), agent: agent.into(), time_us: now_us(), data, cause_job: None }
    }

    /// The event as JSON, the form outside subscribers and hooks see.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "tag": self.tag,
            "agent": self.agent,
            "time_us": self.time_us,
            "data": self.data.to_json(),
            "cause_job": self.cause_job.map(|j| j.to_string()),
        })
    }
}

impl Event {
    /// [`Event::to_json`] as bytes, the same byte for byte, written without
    /// building the JSON tree: what the outside publisher sends per event.
    pub fn json_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128 + self.tag.len());
        // Writing to a Vec fails only on a serialiser error, and these
        // types have none (map keys are strings).
        let _ = serde_json::to_writer(&mut bytes, &EventJson(self));
        bytes
    }
}

/// The JSON form of an event; fields in `to_json`'s (sorted) order.
struct EventJson<'a>(&'a Event);

/// An id as its ULID string.
struct IdJson(Id);

impl Serialize for IdJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl Serialize for EventJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let event = self.0;
        let mut out = serializer.serialize_struct("Event", 6)?;
        out.serialize_field("agent", &event.agent)?;
        out.serialize_field("cause_job", &event.cause_job.map(IdJson))?;
        out.serialize_field("data", &crate::value::AsJson(&event.data))?;
        out.serialize_field("id", &IdJson(event.id))?;
        out.serialize_field("tag", &event.tag)?;
        out.serialize_field("time_us", &event.time_us)?;
        out.end()
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Whether `id` may name an agent or a beacon: ids appear in event tags
/// and targets, so they keep to a safe alphabet (letters, digits, `._-`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 253 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The tags halite itself raises (SPEC §3), in one place.
pub mod tag {
    use crate::Id;

    pub fn beacon(agent: &str, beacon: &str) -> String {
        format!("halite/beacon/{agent}/{beacon}")
    }
    pub fn agent(agent: &str, what: &str) -> String {
        format!("halite/agent/{agent}/{what}")
    }
    pub fn job_new(jid: Id) -> String {
        format!("halite/job/{jid}/new")
    }
    pub fn job_ret(jid: Id, agent: &str) -> String {
        format!("halite/job/{jid}/ret/{agent}")
    }
    pub fn reactor(reactor: &str, what: &str) -> String {
        format!("halite/reactor/{reactor}/{what}")
    }
    pub fn key(agent: &str, what: &str) -> String {
        format!("halite/key/{agent}/{what}")
    }
    pub fn master(what: &str) -> String {
        format!("halite/master/{what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_to_a_safe_alphabet() {
        let long = "a".repeat(254);
        let cases = [
            ("web-01.example_a", true),
            ("web/01", false),
            ("web 01", false),
            ("", false),
            (&long[..253], true),
            (&long, false),
        ];
        for (id, valid) in cases {
            assert_eq!(valid_id(id), valid, "{id}");
        }
    }

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<Id> = (0..10_000).map(|_| Id::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn id_text_round_trip() {
        let id = Id::new();
        assert_eq!(id.to_string().parse::<Id>().unwrap(), id);
        assert_eq!(id.to_string().len(), 26);
    }

    #[test]
    fn json_bytes_are_to_json_byte_for_byte() {
        let data = Value::map()
            .with("path", "/etc/\"quoted\"\n\u{1}é")
            .with("n", -3i64)
            .with("x", Value::Float(1.5))
            .with("nan", Value::Float(f64::NAN))
            .with("inf", Value::Float(f64::INFINITY))
            .with("text", Value::Bytes(b"utf-8".to_vec()))
            .with("raw", Value::Bytes(vec![0xff, 0, 7]))
            .with(
                "list",
                Value::List(vec![Value::Null, Value::Bool(true), Value::map().with("b", 1i64).with("a", 2i64)]),
            )
            .with("empty", Value::map());
        let mut event = Event::new("halite/beacon/web01/x", "web01", data);
        assert_eq!(String::from_utf8(event.json_bytes()).unwrap(), event.to_json().to_string());
        event.cause_job = Some(Id::new());
        event.data = Value::Null;
        assert_eq!(String::from_utf8(event.json_bytes()).unwrap(), event.to_json().to_string());
    }
}
