//! `halite-master events [--tag GLOB] [--json]`: prints the running
//! master's events as they happen, for people or, with `--json`, one event
//! per line as the outside publisher has them. The master's side is
//! `server/events.rs`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::protocol::{Request, Response, TailLine};

/// The command: asks the master in `data_dir` for its events and prints them
/// to `out` until the master goes away.
pub async fn tail(data_dir: &Path, tag: Option<String>, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let stream = super::connect(data_dir).await?;
    let (read, mut write) = stream.into_split();
    let mut request = serde_json::to_string(&Request::Events { tag: tag.clone() })?;
    request.push('\n');
    write.write_all(request.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let first = lines.next_line().await?.context("the master closed the control socket")?;
    let response: Response = serde_json::from_str(&first).context("the master's answer is not understood")?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    eprintln!(
        "Tailing the events of the master in {}{}; Ctrl-C stops.",
        data_dir.display(),
        tag.map(|t| format!(" matching {t}")).unwrap_or_default()
    );
    while let Some(line) = lines.next_line().await? {
        let line: TailLine = serde_json::from_str(&line).context("the master sent a line that is not understood")?;
        let text = match (line, json) {
            (TailLine::Event(event), true) => event.to_string(),
            // Tags and agents come from agents: shown, never obeyed.
            (TailLine::Event(event), false) => halite_proto::text::escape(&human(&event)).into_owned(),
            (TailLine::Lagged(skipped), true) => serde_json::json!({ "lagged": skipped }).to_string(),
            (TailLine::Lagged(skipped), false) => format!("lagged, {skipped} events skipped"),
        };
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    anyhow::bail!("the master went away")
}

/// `2026-11-23T12:00:00.123Z  halite/beacon/web01/motd  web01  {"kind":"modify",…}`,
/// and for another master's event `  (master tcp://10.0.0.3:4510)` after it.
fn human(event: &serde_json::Value) -> String {
    let time = event["time_us"]
        .as_i64()
        .and_then(|us| u64::try_from(us).ok())
        .map(|us| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string())
        .unwrap_or_default();
    let agent = event["agent"].as_str().filter(|a| !a.is_empty()).unwrap_or("-");
    let line = format!("{time}  {}  {agent}  {}", event["tag"].as_str().unwrap_or_default(), event["data"]);
    match event["master"].as_str() {
        Some(master) => format!("{line}  (master {master})"),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_show_time_tag_agent_and_data() {
        let event = halite_proto::Event {
            time_us: 1_763_899_200_123_456,
            ..halite_proto::Event::new(
                "halite/beacon/web01/motd",
                "web01",
                halite_proto::Value::map().with("kind", "modify"),
            )
        };
        assert_eq!(
            human(&event.to_json()),
            "2025-11-23T12:00:00.123Z  halite/beacon/web01/motd  web01  {\"kind\":\"modify\"}"
        );
        let mut elsewhere = event.to_json();
        elsewhere["master"] = "tcp://127.0.0.3:4510".into();
        assert!(human(&elsewhere).ends_with("{\"kind\":\"modify\"}  (master tcp://127.0.0.3:4510)"));
    }
}
