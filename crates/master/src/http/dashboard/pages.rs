//! What each dashboard page shows, gathered from the running master
//! ([`Master`]) and the dashboard's own window on the bus
//! ([`super::activity`]), as plain serialisable views the templates read.
//!
//! Nothing here writes HTML: the templates do, escaping every value
//! ([`super::render`]). Values an agent supplied (ids, facts, paths, event
//! data) pass through as text.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::protocol::{AgentRow, Compliance};
use crate::server::context::Master;
use crate::server::keys::KeyEntry;
use crate::server::store::{JobSummary, Reader};

use super::activity::Summary;
use crate::server::receipts::Receipt;

/// The compliance states, in the order the overview lists them.
pub const COMPLIANCE_ORDER: &[&str] = &["failing", "drifted", "restoring", "stale", "unknown", "compliant"];

/// How many jobs the jobs page lists, and how many are searched for one
/// agent's.
pub const JOBS_LISTED: u32 = 200;

/// How many of an agent's jobs its page lists.
pub const AGENT_JOBS: usize = 20;

/// A time as the pages print it: UTC, to the second.
pub fn time(us: i64) -> String {
    let Ok(us) = u64::try_from(us) else { return String::new() };
    let at = UNIX_EPOCH + Duration::from_micros(us);
    humantime::format_rfc3339_seconds(at).to_string().replace('T', " ").replace('Z', " UTC")
}

/// One agent as the overview and its page show it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub id: String,
    pub compliance: &'static str,
    pub compliance_detail: String,
    pub key: String,
    pub connected: bool,
    pub connected_since: Option<String>,
    pub address: Option<String>,
    pub version: Option<String>,
    pub last_event: Option<String>,
}

/// The name and the detail (since when, which file) of a compliance.
pub fn compliance(compliance: &Compliance) -> (&'static str, String) {
    match compliance {
        Compliance::Unknown => ("unknown", String::new()),
        Compliance::Compliant { since_us } => ("compliant", format!("since {}", time(*since_us))),
        Compliance::Drifted { since_us, path } => {
            let what = path.as_deref().map(|p| format!("{p} ")).unwrap_or_default();
            ("drifted", format!("{what}since {}", time(*since_us)))
        }
        Compliance::Failing { since_us } => ("failing", format!("since {}", time(*since_us))),
        Compliance::Stale { since_us } => ("stale", format!("since {}", time(*since_us))),
        Compliance::Restoring { since_us, path } => {
            let what = path.as_deref().map(|p| format!("{p} ")).unwrap_or_default();
            ("restoring", format!("{what}drifted {}", time(*since_us)))
        }
    }
}

impl AgentView {
    pub fn of(row: &AgentRow) -> AgentView {
        let (state, detail) = compliance(&row.compliance);
        AgentView {
            id: row.id.clone(),
            compliance: state,
            compliance_detail: detail,
            key: row.key.clone(),
            connected: row.connected,
            connected_since: row.connected_since_us.map(time),
            address: row.address.clone(),
            version: row.version.clone(),
            last_event: row.last_event_us.map(time),
        }
    }
}

/// How many agents are in one compliance state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub state: &'static str,
    pub count: usize,
}

/// The fleet overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub groups: Vec<Group>,
    pub activity: Summary,
    /// Worst compliance first, then by id.
    pub agents: Vec<AgentView>,
}

/// Agents grouped and sorted by compliance, worst first.
pub fn overview(rows: &[AgentRow], activity: Summary) -> Overview {
    let mut agents: Vec<AgentView> = rows.iter().map(AgentView::of).collect();
    let rank = |state: &str| COMPLIANCE_ORDER.iter().position(|s| *s == state).unwrap_or(COMPLIANCE_ORDER.len());
    agents.sort_by(|a, b| rank(a.compliance).cmp(&rank(b.compliance)).then_with(|| a.id.cmp(&b.id)));
    let groups = COMPLIANCE_ORDER
        .iter()
        .map(|state| Group { state, count: agents.iter().filter(|a| a.compliance == *state).count() })
        .filter(|g| g.count > 0)
        .collect();
    Overview { groups, activity, agents }
}

/// One event as the events page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub time: String,
    pub tag: String,
    pub agent: String,
    /// The event's data as JSON text.
    pub data: String,
}

/// `recent` (oldest first) as the events page lists them, newest first:
/// those whose tag `matcher` matches and that `visible` lets through.
pub fn events(
    recent: &[std::sync::Arc<halite_proto::Event>],
    matcher: Option<&globset::GlobMatcher>,
    visible: impl Fn(&halite_proto::Event) -> bool,
) -> Vec<EventView> {
    recent
        .iter()
        .rev()
        .filter(|e| matcher.is_none_or(|m| m.is_match(&e.tag)) && visible(e))
        .map(|e| EventView {
            time: time(e.time_us),
            tag: e.tag.clone(),
            agent: e.agent.clone(),
            data: e.data.to_json().to_string(),
        })
        .collect()
}

/// A receipt as the agent page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptView {
    pub time: String,
    pub path: String,
    /// `corrective` (drift restored) or `intentional` (the tree changed, an
    /// operator applied).
    pub reason: &'static str,
    pub latency_ms: Option<f64>,
    pub before: String,
    pub after: String,
    pub job: String,
    pub job_short: String,
}

/// How often one file drifted and was restored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftCount {
    pub path: String,
    pub count: i64,
}

/// How many receipts the agent page lists.
pub const RECEIPTS_LISTED: u32 = 50;

/// The store's receipts (`server/receipts.rs`), as the page lists them.
pub fn receipt_views(receipts: &[Receipt]) -> Vec<ReceiptView> {
    receipts
        .iter()
        .map(|r| ReceiptView {
            time: time(r.at_us),
            path: r.path.clone(),
            reason: r.kind.as_str(),
            #[allow(clippy::cast_precision_loss)]
            latency_ms: r.latency_us.map(|us| us as f64 / 1000.0),
            before: r.hash_before.as_deref().map_or_else(|| "(none)".into(), short_hash),
            after: r.hash_after.as_deref().map_or_else(|| "(none)".into(), short_hash),
            job_short: short_id(&r.jid),
            job: r.jid.clone(),
        })
        .collect()
}

/// `agent`'s newest receipts and how often each of its files drifted,
/// from PostgreSQL when the records go there (`postgres`). Blocking, as
/// [`jobs`].
pub fn receipts(
    store: &std::path::Path,
    postgres: Option<&crate::server::store::postgres::PgTarget>,
    agent: &str,
) -> Result<(Vec<ReceiptView>, Vec<DriftCount>), super::DashboardError> {
    let records = crate::server::store::records::open_for(store, postgres)?;
    let listed = records.receipts(Some(agent), RECEIPTS_LISTED)?;
    let counts = records.drift_counts(Some(agent))?;
    let counts = counts.into_iter().map(|c| DriftCount { path: c.path, count: c.drifts }).collect();
    Ok((receipt_views(&listed), counts))
}

fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn short_id(id: &str) -> String {
    id.chars().take(10).collect()
}

/// A file a state keeps for the agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManagedFile {
    pub path: String,
    pub state: String,
    pub kind: String,
    pub watched: bool,
}

/// The files the live tree's states keep for `agent` with `facts`.
pub fn managed_files(master: &Master, agent: &str, facts: &halite_proto::Value) -> Vec<ManagedFile> {
    let tree = master.tree();
    let mut files = Vec::new();
    for name in tree.states.states_for(agent, facts) {
        let Some(file) = tree.states.files.get(&name) else { continue };
        for state in &file.states {
            let view = halite_state::kinds::file_like(&state.call.kind).and_then(|f| (f.view)(&state.call.args));
            if let Some(view) = view {
                files.push(ManagedFile {
                    path: view.path.to_owned(),
                    state: format!("{name}:{}", state.call.id),
                    kind: state.call.kind.clone(),
                    watched: state.watch,
                });
            }
        }
    }
    files
}

/// One fact, flattened to a dotted name and its JSON text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub name: String,
    pub value: String,
}

/// Facts as a flat, sorted list (`os.family`, `ip.0`).
pub fn facts(value: &serde_json::Value) -> Vec<Fact> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<Fact>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&name, value, out);
                }
            }
            serde_json::Value::Null if prefix.is_empty() => {}
            serde_json::Value::String(text) => out.push(Fact { name: prefix.to_owned(), value: text.clone() }),
            other => out.push(Fact { name: prefix.to_owned(), value: other.to_string() }),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One job in a list.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub jid: String,
    pub jid_short: String,
    pub time: String,
    pub cause: String,
    pub target: String,
    pub states: String,
    pub changed: i64,
    pub would_change: i64,
    pub failed: i64,
    pub unchanged: i64,
    pub no_answer: i64,
    pub waiting: i64,
    /// The agents it was sent to (who may see it).
    pub agents: Vec<String>,
}

impl JobRow {
    pub fn of(summary: &JobSummary) -> JobRow {
        let job = &summary.job;
        JobRow {
            jid: job.jid.clone(),
            jid_short: short_id(&job.jid),
            time: time(job.created_us),
            cause: cause_text(job),
            target: job.target.clone(),
            states: job.states.join(", "),
            changed: summary.changed,
            would_change: summary.would_change,
            failed: summary.failed,
            unchanged: summary.unchanged,
            no_answer: summary.no_answer,
            waiting: summary.waiting,
            agents: summary.agents.clone(),
        }
    }
}

fn cause_text(job: &crate::server::store::JobRecord) -> String {
    match &job.reactor {
        Some(reactor) => format!("reactor {reactor} ({})", job.cause),
        None => job.cause.clone(),
    }
}

/// The store's jobs, newest first, optionally only `agent`'s. Blocking
/// (SQLite): callers run it off the runtime's threads.
pub fn jobs(store: &std::path::Path, agent: Option<&str>) -> Result<Vec<JobRow>, crate::server::store::StoreError> {
    let reader = Reader::open(store)?;
    let listed = reader.list(JOBS_LISTED)?;
    let rows = listed.iter().filter(|j| agent.is_none_or(|a| j.agents.iter().any(|x| x == a))).map(JobRow::of);
    Ok(match agent {
        Some(_) => rows.take(AGENT_JOBS).collect(),
        None => rows.collect(),
    })
}

/// A line of a diff with its colour class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffLine {
    pub class: &'static str,
    pub text: String,
}

/// A unified diff, line by line, classed for colour: `add`, `del`,
/// `hunk`, `head` (the `---`/`+++` lines) or `ctx`.
pub fn diff_lines(diff: &str) -> Vec<DiffLine> {
    diff.lines()
        .map(|line| {
            let class = if line.starts_with("+++") || line.starts_with("---") {
                "head"
            } else if line.starts_with('+') {
                "add"
            } else if line.starts_with('-') {
                "del"
            } else if line.starts_with("@@") {
                "hunk"
            } else {
                "ctx"
            };
            DiffLine { class, text: line.to_owned() }
        })
        .collect()
}

/// One state's result on the job page.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    pub id: String,
    pub kind: String,
    pub outcome: String,
    pub duration: String,
    pub error: Option<String>,
    pub changes: String,
    pub diff: Vec<DiffLine>,
}

/// One agent's part of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobAgentView {
    pub agent: String,
    pub error: Option<String>,
    pub states: Vec<StateView>,
}

/// The job page.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    pub job: JobHeader,
    pub agents: Vec<JobAgentView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobHeader {
    pub jid: String,
    pub time: String,
    pub cause: String,
    pub target: String,
    pub test: bool,
}

/// One job with every agent's results; `None` when `jid` names none (or
/// more than one, as a prefix). Blocking, as [`jobs`].
pub fn job(store: &std::path::Path, jid: &str) -> Result<Option<JobPage>, crate::server::store::StoreError> {
    let Some((record, report)) = Reader::open(store)?.job(jid)? else { return Ok(None) };
    let agents = report
        .agents
        .iter()
        .map(|agent| match &agent.answer {
            halite_state::report::Answer::Answered { states } => JobAgentView {
                agent: agent.agent.clone(),
                error: None,
                states: states
                    .iter()
                    .map(|s| StateView {
                        id: s.id.clone(),
                        kind: s.kind.clone(),
                        outcome: s.outcome.as_str().to_owned(),
                        duration: format!("{:.1} ms", Duration::from_micros(s.duration_us).as_secs_f64() * 1000.0),
                        error: s.error.clone(),
                        changes: s.changes.join("; "),
                        diff: s.diff.as_deref().map(diff_lines).unwrap_or_default(),
                    })
                    .collect(),
            },
            halite_state::report::Answer::NoAnswer { error } => {
                JobAgentView { agent: agent.agent.clone(), error: Some(error.clone()), states: Vec::new() }
            }
        })
        .collect();
    let header = JobHeader {
        jid: record.jid.clone(),
        time: time(record.created_us),
        cause: cause_text(&record),
        target: record.target.clone(),
        test: record.test,
    };
    Ok(Some(JobPage { job: header, agents }))
}

/// A key as the keys page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub status: &'static str,
    pub fingerprint: String,
    pub since: String,
}

/// Pending keys first (they wait for an operator), then by id.
pub fn keys(entries: &[KeyEntry]) -> Vec<KeyView> {
    let mut keys: Vec<KeyView> = entries
        .iter()
        .map(|e| KeyView {
            id: e.id.clone(),
            status: e.status.as_str(),
            fingerprint: e.key.clone(),
            since: time(i64::try_from(e.since).unwrap_or(0).saturating_mul(1_000_000)),
        })
        .collect();
    keys.sort_by(|a, b| (a.status != "pending").cmp(&(b.status != "pending")).then_with(|| a.id.cmp(&b.id)));
    keys
}

/// A reactor on the tree page.
#[derive(Debug, Clone, Serialize)]
pub struct ReactorView {
    pub name: String,
    pub on: String,
    pub when: Option<String>,
    pub target: Option<String>,
    pub actions: Vec<String>,
}

/// A beacon on the tree page.
#[derive(Debug, Clone, Serialize)]
pub struct BeaconView {
    pub name: String,
    pub kind: String,
    pub config: String,
}

/// The tree page's lists.
#[derive(Debug, Clone, Serialize)]
pub struct TreePage {
    pub summary: String,
    pub reactors: Vec<ReactorView>,
    pub beacons: Vec<BeaconView>,
}

pub fn tree(master: &Master) -> TreePage {
    let tree = master.tree();
    let reactors = tree
        .reactors
        .iter()
        .map(|r| ReactorView {
            name: r.name.clone(),
            on: r.on.clone(),
            when: r.when.clone(),
            target: r.target.as_ref().map(|t| t.as_str().to_owned()),
            actions: r.actions.iter().map(|a| a.describe()).collect(),
        })
        .collect();
    let beacons = tree
        .beacons
        .specs()
        .chain(tree.watches.iter().map(crate::tree::watch::Watch::beacon).collect::<Vec<_>>().iter())
        .map(|b| BeaconView { name: b.name.clone(), kind: b.kind.clone(), config: b.config.to_json().to_string() })
        .collect();
    TreePage { summary: tree.summary(), reactors, beacons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, compliance: Compliance) -> AgentRow {
        AgentRow { compliance, key: "accepted".into(), ..AgentRow::unknown(id) }
    }

    #[test]
    fn the_overview_lists_the_worst_first_and_counts_each_state() {
        let rows = [
            row("web02", Compliance::Compliant { since_us: 1 }),
            row("web01", Compliance::Compliant { since_us: 1 }),
            row("db01", Compliance::Failing { since_us: 1 }),
            row("new01", Compliance::Unknown),
            row("app01", Compliance::Drifted { since_us: 1, path: Some("/etc/x".into()) }),
        ];
        let overview = overview(&rows, Summary::default());
        let order: Vec<&str> = overview.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(order, ["db01", "app01", "new01", "web01", "web02"]);
        assert_eq!(
            overview.groups,
            [
                Group { state: "failing", count: 1 },
                Group { state: "drifted", count: 1 },
                Group { state: "unknown", count: 1 },
                Group { state: "compliant", count: 2 },
            ]
        );
        assert!(overview.agents[1].compliance_detail.starts_with("/etc/x since 1970-01-01 00:00:00 UTC"));
    }

    #[test]
    fn diff_lines_are_classed() {
        let diff = "--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n same";
        let classes: Vec<&str> = diff_lines(diff).iter().map(|l| l.class).collect();
        assert_eq!(classes, ["head", "head", "hunk", "del", "add", "ctx"]);
    }

    #[test]
    fn facts_are_flattened_and_sorted() {
        let value = serde_json::json!({"os": {"family": "debian", "release": 12}, "ip": ["10.0.0.1"], "id": "web01"});
        let names: Vec<(String, String)> = facts(&value).into_iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            names,
            [
                ("id".to_owned(), "web01".to_owned()),
                ("ip".to_owned(), "[\"10.0.0.1\"]".to_owned()),
                ("os.family".to_owned(), "debian".to_owned()),
                ("os.release".to_owned(), "12".to_owned()),
            ]
        );
        assert!(facts(&serde_json::Value::Null).is_empty());
    }

    #[test]
    fn pending_keys_come_first() {
        use crate::server::keys::KeyStatus;
        let entry = |id: &str, status| KeyEntry { id: id.into(), key: "ab".repeat(32), status, since: 0 };
        let listed = keys(&[
            entry("a", KeyStatus::Accepted),
            entry("z", KeyStatus::Pending),
            entry("b", KeyStatus::Rejected),
            entry("c", KeyStatus::Pending),
        ]);
        let order: Vec<(&str, &str)> = listed.iter().map(|k| (k.id.as_str(), k.status)).collect();
        assert_eq!(order, [("c", "pending"), ("z", "pending"), ("a", "accepted"), ("b", "rejected")]);
    }

    #[test]
    fn receipts_show_short_hashes_and_latency() {
        use crate::server::receipts::ReceiptKind;
        let receipt = Receipt {
            jid: "01JOB0000000000000000000000".into(),
            agent: "web01".into(),
            state: "nginx-conf".into(),
            path: "/etc/nginx/nginx.conf".into(),
            kind: ReceiptKind::Corrective,
            cause: "event:01E".into(),
            cause_event: Some("01E".into()),
            hash_before: Some("0123456789abcdef".into()),
            hash_after: None,
            latency_us: Some(2500),
            at_us: 0,
        };
        let views = receipt_views(&[receipt]);
        assert_eq!(views[0].latency_ms, Some(2.5));
        assert_eq!((views[0].before.as_str(), views[0].after.as_str()), ("0123456789ab", "(none)"));
        assert_eq!((views[0].reason, views[0].job_short.as_str()), ("corrective", "01JOB00000"));
    }
}
