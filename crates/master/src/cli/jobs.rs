//! `halite-master jobs [JID]`: the job history, read straight from the
//! store (read-only; halite.db, or PostgreSQL when master.yaml's `store:`
//! names it), so it works whether the master runs or not.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anstream::stdout;
use halite_state::report::Report;

use crate::config::StoreConfig;
use crate::server::store::{self, JobRecord, JobSummary};

/// When a job was made, in UTC to the second.
fn when(created_us: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(u64::try_from(created_us).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

fn cause(job: &JobRecord) -> String {
    match &job.reactor {
        Some(reactor) => format!("{} (reactor {reactor})", job.cause),
        None => job.cause.clone(),
    }
}

fn result(job: &JobSummary) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (job.changed, "changed"),
        (job.would_change, "would change"),
        (job.failed, "failed"),
        (job.unchanged, "unchanged"),
        (job.no_answer, "no answer"),
        (job.waiting, "waiting"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() { "no states".into() } else { parts.join(", ") }
}

/// The most recent `limit` jobs, newest first, as a table or JSON.
pub fn list(data_dir: &Path, records: &StoreConfig, limit: u32, json: bool) -> anyhow::Result<u8> {
    super::trusted_data_dir(data_dir)?;
    super::records_are_here(data_dir, records)?;
    let reader = store::records::open(records, data_dir)?;
    let jobs = reader.list(limit)?;
    let mut out = stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&jobs)?)?;
        return Ok(0);
    }
    if jobs.is_empty() {
        writeln!(out, "no jobs yet")?;
        return Ok(0);
    }
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|j| {
            let test = if j.job.test { " (test)" } else { "" };
            [
                j.job.jid.clone(),
                when(j.job.created_us),
                cause(&j.job),
                j.agents.join(","),
                format!("{}{test}", result(j)),
            ]
        })
        .collect();
    let header = ["JID", "WHEN", "CAUSE", "AGENTS", "RESULT"];
    let widths: Vec<usize> =
        (0..4).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(header[i].len())).collect();
    let line = |cells: [&str; 5]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        // A cause can name an agent's event: shown, never obeyed.
        writeln!(out, "{}", halite_proto::text::escape(&line([&row[0], &row[1], &row[2], &row[3], &row[4]])))?;
    }
    Ok(0)
}

/// One job: its cause and every agent's per-state results with diffs,
/// printed as `apply` prints them. `jid` may be a unique prefix.
pub fn show(data_dir: &Path, records: &StoreConfig, jid: &str, json: bool) -> anyhow::Result<u8> {
    super::trusted_data_dir(data_dir)?;
    super::records_are_here(data_dir, records)?;
    let reader = store::records::open(records, data_dir)?;
    let Some((job, report)) = reader.job(jid)? else {
        match reader.count_prefix(jid)? {
            0 => {
                return Err(
                    super::exit::CommandError::NoJob { jid: jid.to_owned(), store: store::path(data_dir) }.into()
                );
            }
            n => anyhow::bail!("`{jid}` is the start of {n} job ids; give more of it"),
        }
    };
    let mut out = stdout();
    if json {
        let document = serde_json::json!({ "job": job, "report": report.to_json() });
        writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        return Ok(0);
    }
    out.write_all(halite_proto::text::escape(&header(&job, &report)).as_bytes())?;
    out.write_all(report.render(true).as_bytes())?;
    Ok(0)
}

fn header(job: &JobRecord, report: &Report) -> String {
    let test = if report.test { "  (test: nothing was changed)" } else { "" };
    let mut text = format!("job {}  {}{test}\ncause:  {}\n", job.jid, when(job.created_us), cause(job));
    text.push_str(&format!("target: {}\nstates: {}\n", job.target, job.states.join(", ")));
    text
}
