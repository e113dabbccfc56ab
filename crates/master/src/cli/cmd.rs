//! `halite-master cmd TARGET -- PROGRAM ARGS…`: runs a program on every
//! connected agent TARGET matches (no shell; at most `--batch` at once),
//! and prints each agent's exit code and output as it answers, then a
//! summary; with `--json`, one JSON object per agent per line instead.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::exit::Code;

use crate::protocol::{CmdLine, CmdRequest, Request};

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub batch: Option<usize>,
    pub json: bool,
    /// What the operator typed, recorded as the jobs' cause.
    pub command_line: String,
}

/// Runs the command; returns its exit code (`exit.rs`): 0 every agent ran
/// the program and it exited 0; 1 it exited otherwise somewhere, timed out
/// or was killed (or the request was refused); 3 some agent did not answer
/// (wins over 1); 4 TARGET matches no connected agent.
pub async fn run(data_dir: &Path, options: Options) -> anyhow::Result<u8> {
    let request = Request::Cmd(CmdRequest {
        target: options.target.clone(),
        argv: options.argv.clone(),
        timeout_ms: u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
        batch: options.batch,
        command_line: options.command_line.clone(),
    });
    let mut lines = super::stream(data_dir, &request).await?;
    let parse = |line: &str| -> anyhow::Result<CmdLine> {
        serde_json::from_str(line).with_context(|| format!("the master answered something unexpected: {line}"))
    };
    let first = lines.next_line().await?.context("the master closed the control socket without answering")?;
    let mut waiting = match parse(&first)? {
        CmdLine::Started { agents } => agents,
        CmdLine::Error { error, no_agent } => {
            eprintln!("error: {error}");
            return Ok(if no_agent { Code::NoMatch } else { Code::Failed } as u8);
        }
        other => bail!("the master answered out of order: {other:?}"),
    };
    let mut stdout = std::io::stdout().lock();
    let (mut zero, mut nonzero, mut unanswered) = (0_usize, 0_usize, 0_usize);
    while let Some(line) = lines.next_line().await? {
        let line = parse(&line)?;
        match &line {
            CmdLine::Agent { agent, code, answered, .. } => {
                waiting.retain(|a| a != agent);
                match (answered, code) {
                    (false, _) => unanswered += 1,
                    (true, Some(0)) => zero += 1,
                    (true, _) => nonzero += 1,
                }
                if options.json {
                    writeln!(stdout, "{}", serde_json::to_string(&line)?)?;
                } else {
                    stdout.write_all(render(&line).as_bytes())?;
                }
                stdout.flush()?;
            }
            CmdLine::Done => break,
            other => bail!("the master answered out of order: {other:?}"),
        }
    }
    for agent in waiting {
        unanswered += 1;
        let line = CmdLine::Agent {
            agent,
            jid: String::new(),
            answered: false,
            code: None,
            error: Some(
                "the master closed the connection before this agent answered (see `halite-master jobs`)".into(),
            ),
            stdout: String::new(),
            stderr: String::new(),
        };
        if options.json {
            writeln!(stdout, "{}", serde_json::to_string(&line)?)?;
        } else {
            stdout.write_all(render(&line).as_bytes())?;
        }
    }
    if !options.json {
        writeln!(
            stdout,
            "{} agents: {zero} exited 0, {nonzero} did not (exit code, timeout or signal), {unanswered} did not answer",
            zero + nonzero + unanswered
        )?;
    }
    stdout.flush()?;
    Ok(if unanswered > 0 {
        Code::NoAnswer
    } else if nonzero > 0 {
        Code::Failed
    } else {
        Code::Success
    } as u8)
}

/// `web01: exit 0` (or the error), then the output, stdout lines indented
/// and stderr lines marked `stderr| `.
pub fn render(line: &CmdLine) -> String {
    let CmdLine::Agent { agent, code, error, stdout, stderr, .. } = line else { return String::new() };
    let mut out = match (code, error) {
        (Some(code), _) => format!("{agent}: exit {code}\n"),
        (None, Some(error)) => format!("{agent}: {error}\n"),
        (None, None) => format!("{agent}: no exit code\n"),
    };
    for line in stdout.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    for line in stderr.lines() {
        out.push_str(&format!("  stderr| {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_agent_shows_its_exit_code_and_output() {
        let line = CmdLine::Agent {
            agent: "web01".into(),
            jid: "01J".into(),
            answered: true,
            code: Some(3),
            error: None,
            stdout: "a\nb\n".into(),
            stderr: "oops\n".into(),
        };
        assert_eq!(render(&line), "web01: exit 3\n  a\n  b\n  stderr| oops\n");
        let line = CmdLine::Agent {
            agent: "web02".into(),
            jid: "01K".into(),
            answered: true,
            code: None,
            error: Some("timed out".into()),
            stdout: String::new(),
            stderr: String::new(),
        };
        assert_eq!(render(&line), "web02: timed out\n");
    }
}
