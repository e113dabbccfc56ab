//! `halite-master apply TARGET [STATE..]`: sends the request over the
//! control socket, shows a progress bar while agents answer (on a terminal
//! only), prints each agent's report as it arrives and a summary at the
//! end, or one JSON document with `--json`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use halite_state::report::{AgentReport, Report, render_agent, render_summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::exit::Code;
use crate::protocol::{ApplyLine, ApplyRequest, Request};

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub states: Vec<String>,
    pub test: bool,
    pub json: bool,
    pub timeout: Duration,
    /// What the operator typed, recorded as the jobs' cause.
    pub command_line: String,
    /// At most this many agents at once.
    pub batch: Option<usize>,
    /// Run on this many agents first; stop if any fails.
    pub canary: Option<usize>,
    /// Stop sending once this many agents failed.
    pub max_failures: Option<usize>,
}

/// A hint when STATE looks like a Salt keyword argument (`test=True`):
/// state file names hold no `=`, and halite spells it `--test`.
pub fn salt_habit(states: &[String]) -> Option<String> {
    let habit = states.iter().find(|s| s.contains('='))?;
    let (key, _) = habit.split_once('=').unwrap_or_default();
    let hint = if key.eq_ignore_ascii_case("test") {
        "halite spells test mode `--test`: halite-master apply TARGET --test".to_owned()
    } else {
        format!("state file names hold no `=`; halite takes no `{key}=` keyword (see `halite-master apply --help`)")
    };
    Some(format!("`{habit}` looks like a Salt argument, not a state file: {hint}"))
}

/// Runs the command; returns its exit code (see [`Report::exit_code`];
/// 4 when the target matches no connected agent).
pub async fn run(data_dir: &Path, options: Options) -> anyhow::Result<u8> {
    let request = Request::Apply(ApplyRequest {
        target: options.target.clone(),
        states: options.states.clone(),
        test: options.test,
        timeout_ms: u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
        command_line: options.command_line.clone(),
        batch: options.batch,
        canary: options.canary,
        max_failures: options.max_failures,
    });
    let mut lines = super::stream(data_dir, &request).await?;
    let parse = |line: &str| -> anyhow::Result<ApplyLine> {
        serde_json::from_str(line).with_context(|| format!("the master answered something unexpected: {line}"))
    };
    let first = lines.next_line().await?.context("the master closed the control socket without answering")?;
    let jobs = match parse(&first)? {
        ApplyLine::Started { jobs, .. } => jobs,
        ApplyLine::Error { error, no_agent } => {
            eprintln!("error: {error}");
            return Ok(if no_agent { Code::NoMatch } else { Code::Failed } as u8);
        }
        other => bail!("the master answered out of order: {other:?}"),
    };

    let bar = progress_bar(jobs.len(), options.json);
    let mut report = Report { test: options.test, agents: Vec::new() };
    let mut stdout = anstream::stdout();
    while let Some(line) = lines.next_line().await? {
        match parse(&line)? {
            ApplyLine::Agent { report: agent } => {
                bar.inc(1);
                bar.set_message(format!("last: {}", agent.agent));
                if !options.json {
                    let text = render_agent(&agent, true);
                    bar.suspend(|| stdout.write_all(text.as_bytes()))?;
                }
                report.agents.push(agent);
            }
            ApplyLine::Stopped { reason, skipped } => {
                bar.suspend(|| eprintln!("stopped: {reason}; not sent to {}", skipped.join(", ")));
                for agent in skipped {
                    report.agents.push(AgentReport::no_answer(&agent, None, format!("not sent: {reason}")));
                }
            }
            ApplyLine::Done => break,
            other => bail!("the master answered out of order: {other:?}"),
        }
    }
    bar.finish_and_clear();
    for (agent, jid) in &jobs {
        if !report.agents.iter().any(|a| &a.agent == agent) {
            let missing = AgentReport::no_answer(
                agent,
                Some(jid.clone()),
                "the master closed the connection before this agent answered (see `halite-master jobs`)",
            );
            if !options.json {
                stdout.write_all(render_agent(&missing, true).as_bytes())?;
            }
            report.agents.push(missing);
        }
    }
    if options.json {
        report.agents.sort_by(|a, b| a.agent.cmp(&b.agent));
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report.to_json())?)?;
    } else {
        stdout.write_all(render_summary(&report, true).as_bytes())?;
    }
    stdout.flush()?;
    Ok(report.exit_code())
}

/// On a terminal, a bar of agents answered; hidden when stderr is not a
/// terminal or the output is JSON.
fn progress_bar(agents: usize, json: bool) -> ProgressBar {
    let target = if json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(agents as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} agents answered  {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_keyword_arguments_get_a_hint() {
        let hint = salt_habit(&["test=True".to_owned()]).unwrap();
        assert!(hint.contains("--test"), "{hint}");
        assert!(salt_habit(&["pillar={}".to_owned()]).unwrap().contains("`pillar=`"));
        assert_eq!(salt_habit(&["motd".to_owned(), "nginx".to_owned()]), None);
    }
}
