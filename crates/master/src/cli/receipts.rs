//! `halite-master receipts [AGENT]`: remediation receipts and the drift
//! count per file, read straight from the store (read-only; halite.db, or
//! PostgreSQL when master.yaml's `store:` names it: then every master's
//! receipts), so it works whether the master runs or not.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anstream::stdout;

use crate::config::StoreConfig;
use crate::server::receipts::{DriftCount, Receipt};
use crate::server::store;

/// Prints the newest `limit` receipts (of `agent`, or all) and the drift
/// counts, as text or one JSON document.
pub fn run(
    data_dir: &Path,
    records: &StoreConfig,
    agent: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<bool> {
    super::trusted_data_dir(data_dir)?;
    super::records_are_here(data_dir, records)?;
    let reader = store::records::open(records, data_dir)?;
    let receipts = reader.receipts(agent, limit)?;
    let drifts = reader.drift_counts(agent)?;
    let mut out = stdout();
    if json {
        let document = serde_json::json!({ "receipts": receipts, "drift_counts": drifts });
        writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        return Ok(true);
    }
    // Paths, causes and agents come from the tree and agents: shown escaped.
    out.write_all(halite_proto::text::escape(&text(&receipts, &drifts)).as_bytes())?;
    Ok(true)
}

/// When, in UTC to the millisecond.
fn when(us: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// A latency as `12.3ms` or `1.20s`.
pub fn latency(us: i64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let ms = us as f64 / 1000.0;
    if ms < 1000.0 { format!("{ms:.1}ms") } else { format!("{:.2}s", ms / 1000.0) }
}

fn short(hash: Option<&String>) -> String {
    hash.map_or_else(|| "(none)".to_owned(), |h| h.chars().take(12).collect())
}

/// The two tables: receipts, then drift counts.
pub fn text(receipts: &[Receipt], drifts: &[DriftCount]) -> String {
    let mut out = String::new();
    if receipts.is_empty() {
        out.push_str("no receipts yet\n");
    } else {
        let mut rows =
            vec![["WHEN", "AGENT", "PATH", "KIND", "BEFORE → AFTER", "LATENCY", "CAUSE", "JOB"].map(str::to_owned)];
        for r in receipts {
            rows.push([
                when(r.at_us),
                r.agent.clone(),
                r.path.clone(),
                r.kind.as_str().to_owned(),
                format!("{} → {}", short(r.hash_before.as_ref()), short(r.hash_after.as_ref())),
                r.latency_us.map_or_else(|| "-".to_owned(), latency),
                r.cause.clone(),
                r.jid.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !drifts.is_empty() {
        out.push_str("\ndrifts restored per file (what flaps):\n");
        let mut rows = vec![["AGENT", "PATH", "DRIFTS", "LAST"].map(str::to_owned)];
        for d in drifts {
            rows.push([d.agent.clone(), d.path.clone(), d.drifts.to_string(), when(d.last_us)]);
        }
        out.push_str(&table(&rows));
    }
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::receipts::ReceiptKind;

    #[test]
    fn receipts_and_drift_counts_print_as_tables() {
        let receipt = Receipt {
            jid: "01JOB".into(),
            agent: "web01".into(),
            state: "motd".into(),
            path: "/etc/motd".into(),
            kind: ReceiptKind::Corrective,
            cause: "event:01EVENT".into(),
            cause_event: Some("01EVENT".into()),
            hash_before: Some("ab".repeat(32)),
            hash_after: Some("cd".repeat(32)),
            latency_us: Some(12_300),
            at_us: 0,
        };
        let drifts = [DriftCount { agent: "web01".into(), path: "/etc/motd".into(), drifts: 3, last_us: 0 }];
        let text = text(&[receipt], &drifts);
        assert_eq!(
            text,
            "WHEN                      AGENT  PATH       KIND        BEFORE → AFTER               LATENCY  CAUSE          JOB\n\
             1970-01-01T00:00:00.000Z  web01  /etc/motd  corrective  abababababab → cdcdcdcdcdcd  12.3ms   event:01EVENT  01JOB\n\
             \n\
             drifts restored per file (what flaps):\n\
             AGENT  PATH       DRIFTS  LAST\n\
             web01  /etc/motd  3       1970-01-01T00:00:00.000Z\n"
        );
        assert_eq!(latency(1_500_000), "1.50s");
    }
}
