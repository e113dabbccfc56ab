//! The report of an apply: what each agent's states did. One printer for
//! `halite-master apply`, `halite-master jobs JID` and `halite-agent apply
//! --local`, so an operator reads the same thing whichever way states ran.
//!
//! [`render_agent`] and [`render_summary`] write ANSI styles when asked;
//! the binaries always ask and print through `anstream`, which strips them
//! when stdout is not a terminal or `NO_COLOR` is set. [`Report::to_json`]
//! is the `--json` document.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use halite_proto::{Outcome, StateResult};
use serde::{Deserialize, Serialize};

/// Every agent's answer to one apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Test mode: states were planned, nothing was changed.
    pub test: bool,
    pub agents: Vec<AgentReport>,
}

/// One agent's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent: String,
    /// The job that carried the states (none for `apply --local`).
    #[serde(default)]
    pub jid: Option<String>,
    #[serde(flatten)]
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    /// The agent ran the job; one entry per state, in order.
    Answered { states: Vec<StateReport> },
    /// No result: the agent was not reachable or did not answer in time.
    NoAnswer { error: String },
}

/// One state's result, in the form the JSON output and the store keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateReport {
    pub id: String,
    pub kind: String,
    pub outcome: OutcomeKind,
    /// One line per change (made, or that would be made in test mode).
    #[serde(default)]
    pub changes: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// A unified diff of file content, uncoloured.
    #[serde(default)]
    pub diff: Option<String>,
    pub duration_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Unchanged,
    Changed,
    WouldChange,
    Failed,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Unchanged => "unchanged",
            OutcomeKind::Changed => "changed",
            OutcomeKind::WouldChange => "would_change",
            OutcomeKind::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<OutcomeKind> {
        [OutcomeKind::Unchanged, OutcomeKind::Changed, OutcomeKind::WouldChange, OutcomeKind::Failed]
            .into_iter()
            .find(|k| k.as_str() == text)
    }

    fn label(self) -> &'static str {
        match self {
            OutcomeKind::WouldChange => "would change",
            other => other.as_str(),
        }
    }

    fn style(self) -> Style {
        let colour = match self {
            OutcomeKind::Unchanged => AnsiColor::Green,
            OutcomeKind::Changed => AnsiColor::Cyan,
            OutcomeKind::WouldChange => AnsiColor::Yellow,
            OutcomeKind::Failed => AnsiColor::Red,
        };
        Style::new().fg_color(Some(colour.into()))
    }
}

impl From<&StateResult> for StateReport {
    fn from(result: &StateResult) -> Self {
        let (outcome, changes, error) = match &result.outcome {
            Outcome::Unchanged => (OutcomeKind::Unchanged, Vec::new(), None),
            Outcome::Changed { changes } => (OutcomeKind::Changed, changes.clone(), None),
            Outcome::WouldChange { changes } => (OutcomeKind::WouldChange, changes.clone(), None),
            Outcome::Failed { error } => (OutcomeKind::Failed, Vec::new(), Some(error.clone())),
        };
        StateReport {
            id: result.id.clone(),
            kind: result.kind.clone(),
            outcome,
            changes,
            error,
            diff: result.diff.clone(),
            duration_us: result.duration_us,
        }
    }
}

impl AgentReport {
    pub fn answered(agent: &str, jid: Option<String>, results: &[StateResult]) -> Self {
        AgentReport {
            agent: agent.to_owned(),
            jid,
            answer: Answer::Answered { states: results.iter().map(StateReport::from).collect() },
        }
    }

    pub fn no_answer(agent: &str, jid: Option<String>, error: impl Into<String>) -> Self {
        AgentReport { agent: agent.to_owned(), jid, answer: Answer::NoAnswer { error: error.into() } }
    }

    pub fn states(&self) -> &[StateReport] {
        match &self.answer {
            Answer::Answered { states } => states,
            Answer::NoAnswer { .. } => &[],
        }
    }

    pub fn count(&self, kind: OutcomeKind) -> usize {
        self.states().iter().filter(|s| s.outcome == kind).count()
    }

    pub fn answered_ok(&self) -> bool {
        matches!(self.answer, Answer::Answered { .. }) && self.count(OutcomeKind::Failed) == 0
    }
}

/// Totals over a report, for the summary line and `--json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub agents: usize,
    /// Agents that answered with no failed state.
    pub ok: usize,
    /// Agents that answered with at least one failed state.
    pub failed: usize,
    pub no_answer: usize,
    pub unchanged: usize,
    pub changed: usize,
    pub would_change: usize,
    pub failed_states: usize,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut summary = Summary { agents: self.agents.len(), ..Summary::default() };
        for agent in &self.agents {
            match agent.answer {
                Answer::NoAnswer { .. } => summary.no_answer += 1,
                Answer::Answered { .. } if agent.count(OutcomeKind::Failed) > 0 => summary.failed += 1,
                Answer::Answered { .. } => summary.ok += 1,
            }
            summary.unchanged += agent.count(OutcomeKind::Unchanged);
            summary.changed += agent.count(OutcomeKind::Changed);
            summary.would_change += agent.count(OutcomeKind::WouldChange);
            summary.failed_states += agent.count(OutcomeKind::Failed);
        }
        summary
    }

    /// The exit code of a command that printed this report: 0 every agent
    /// answered and nothing failed; 3 some agent did not answer (the
    /// picture is incomplete, whatever the others said); 1 otherwise,
    /// when some state failed.
    pub fn exit_code(&self) -> u8 {
        let summary = self.summary();
        if summary.no_answer > 0 {
            3
        } else if summary.failed > 0 {
            1
        } else {
            0
        }
    }

    /// The `--json` document.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "test": self.test,
            "agents": self.agents,
            "summary": self.summary(),
            "exit_code": self.exit_code(),
        })
    }

    /// Every agent, then the summary line.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for agent in &self.agents {
            out.push_str(&render_agent(agent, color));
        }
        out.push_str(&render_summary(self, color));
        out
    }
}

fn paint(text: &str, style: Style, color: bool) -> String {
    if color { format!("{style}{text}{style:#}") } else { text.to_owned() }
}

/// `1.2 ms`, `340 µs`, `2.50 s`.
pub fn format_duration_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// One agent: a header line, a line per state, its changes or error
/// beneath, and its diff (coloured when `color`).
pub fn render_agent(agent: &AgentReport, color: bool) -> String {
    // Everything below but our own colours comes from the agent (or from
    // a managed file's content, in a diff): shown, never obeyed.
    use halite_proto::text::escape;
    let mut out = String::new();
    let bold = Style::new().bold();
    let dim = Style::new().dimmed();
    let name = paint(&escape(&agent.agent), bold, color);
    let job = agent.jid.as_deref().map(|j| paint(&format!("  job {j}"), dim, color)).unwrap_or_default();
    let states = match &agent.answer {
        Answer::NoAnswer { error } => {
            let what = paint("did not answer", OutcomeKind::Failed.style().bold(), color);
            let _ = writeln!(out, "{name}: {what}: {}{job}", escape(error));
            return out;
        }
        Answer::Answered { states } => states,
    };
    let total: u64 = states.iter().map(|s| s.duration_us).sum();
    let mut counts = Vec::new();
    for kind in [OutcomeKind::Changed, OutcomeKind::WouldChange, OutcomeKind::Failed, OutcomeKind::Unchanged] {
        let n = agent.count(kind);
        if n > 0 {
            counts.push(paint(&format!("{n} {}", kind.label()), kind.style(), color));
        }
    }
    let counts = if counts.is_empty() { "no states".to_owned() } else { counts.join(", ") };
    let _ = writeln!(out, "{name}: {counts} in {}{job}", format_duration_us(total));
    let label_width = states.iter().map(|s| s.outcome.label().len()).max().unwrap_or(0);
    let id_width = states.iter().map(|s| s.id.len()).max().unwrap_or(0);
    for state in states {
        let label = paint(&format!("{:<label_width$}", state.outcome.label()), state.outcome.style(), color);
        let detail = paint(&format!("{}, {}", escape(&state.kind), format_duration_us(state.duration_us)), dim, color);
        let _ = writeln!(out, "  {label}  {:<id_width$}  {detail}", escape(&state.id));
        let indent = " ".repeat(label_width + 4);
        for change in &state.changes {
            let _ = writeln!(out, "{indent}{}", escape(change));
        }
        if let Some(error) = &state.error {
            for line in error.lines() {
                let _ = writeln!(out, "{indent}{}", paint(&escape(line), OutcomeKind::Failed.style(), color));
            }
        }
        if let Some(diff) = &state.diff {
            out.push_str(&render_diff(diff, &indent, color));
        }
    }
    out
}

/// A unified diff, each line indented; on a terminal, removals red,
/// additions green, hunk headers cyan.
pub fn render_diff(diff: &str, indent: &str, color: bool) -> String {
    let mut out = String::new();
    for line in diff.lines() {
        let style = if line.starts_with("+++") || line.starts_with("---") {
            Style::new().bold()
        } else if line.starts_with('+') {
            Style::new().fg_color(Some(AnsiColor::Green.into()))
        } else if line.starts_with('-') {
            Style::new().fg_color(Some(AnsiColor::Red.into()))
        } else if line.starts_with("@@") {
            Style::new().fg_color(Some(AnsiColor::Cyan.into()))
        } else {
            Style::new()
        };
        let _ = writeln!(out, "{indent}{}", paint(&halite_proto::text::escape(line), style, color));
    }
    out
}

/// `2 agents: 1 ok, 1 did not answer; states: 3 changed, 1 unchanged`.
pub fn render_summary(report: &Report, color: bool) -> String {
    let s = report.summary();
    let mut agents = vec![paint(&format!("{} ok", s.ok), OutcomeKind::Unchanged.style(), color)];
    if s.failed > 0 {
        agents.push(paint(&format!("{} failed", s.failed), OutcomeKind::Failed.style(), color));
    }
    if s.no_answer > 0 {
        agents.push(paint(&format!("{} did not answer", s.no_answer), OutcomeKind::Failed.style(), color));
    }
    let mut states = Vec::new();
    for (n, kind) in [
        (s.changed, OutcomeKind::Changed),
        (s.would_change, OutcomeKind::WouldChange),
        (s.failed_states, OutcomeKind::Failed),
        (s.unchanged, OutcomeKind::Unchanged),
    ] {
        if n > 0 {
            states.push(paint(&format!("{n} {}", kind.label()), kind.style(), color));
        }
    }
    let states = if states.is_empty() { "none".to_owned() } else { states.join(", ") };
    let plural = if s.agents == 1 { "agent" } else { "agents" };
    let mode = if report.test { " (test: nothing was changed)" } else { "" };
    format!("{} {plural}: {}; states: {states}{mode}\n", s.agents, agents.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, outcome: Outcome, diff: Option<&str>) -> StateResult {
        StateResult {
            id: id.into(),
            kind: "file.managed".into(),
            outcome,
            diff: diff.map(str::to_owned),
            duration_us: 1500,
        }
    }

    fn sample() -> Report {
        Report {
            test: false,
            agents: vec![
                AgentReport::answered(
                    "web01",
                    Some("J1".into()),
                    &[
                        state("motd", Outcome::Unchanged, None),
                        state(
                            "conf",
                            Outcome::Changed { changes: vec!["content of /etc/x".into()] },
                            Some("--- /etc/x\n+++ /etc/x\n@@ -1 +1 @@\n-old\n+new\n"),
                        ),
                    ],
                ),
                AgentReport::no_answer("web02", Some("J2".into()), "agent `web02` did not answer within 60s"),
            ],
        }
    }

    #[test]
    fn plain_output_has_no_escapes_and_says_everything() {
        let text = sample().render(false);
        assert!(!text.contains('\x1b'), "{text}");
        let expected = "\
web01: 1 changed, 1 unchanged in 3.0 ms  job J1
  unchanged  motd  file.managed, 1.5 ms
  changed    conf  file.managed, 1.5 ms
             content of /etc/x
             --- /etc/x
             +++ /etc/x
             @@ -1 +1 @@
             -old
             +new
web02: did not answer: agent `web02` did not answer within 60s  job J2
2 agents: 1 ok, 1 did not answer; states: 1 changed, 1 unchanged
";
        assert_eq!(text, expected);
    }

    #[test]
    fn colour_output_colours_diff_lines() {
        let text = sample().render(true);
        let red = Style::new().fg_color(Some(AnsiColor::Red.into()));
        let green = Style::new().fg_color(Some(AnsiColor::Green.into()));
        assert!(text.contains(&format!("{red}-old{red:#}")), "{text:?}");
        assert!(text.contains(&format!("{green}+new{green:#}")), "{text:?}");
    }

    #[test]
    fn exit_codes_say_what_went_wrong() {
        let ok = Report {
            test: false,
            agents: vec![AgentReport::answered("a", None, &[state("s", Outcome::Unchanged, None)])],
        };
        assert_eq!(ok.exit_code(), 0);
        let failed = Report {
            test: false,
            agents: vec![AgentReport::answered(
                "a",
                None,
                &[state("s", Outcome::Failed { error: "boom".into() }, None)],
            )],
        };
        assert_eq!(failed.exit_code(), 1);
        assert!(failed.render(false).contains("boom"));
        let mut silent = failed.clone();
        silent.agents.push(AgentReport::no_answer("b", None, "timeout"));
        assert_eq!(silent.exit_code(), 3, "a missing answer wins: the picture is incomplete");
    }

    #[test]
    fn json_round_trips() {
        let report = sample();
        let json = report.to_json();
        assert_eq!(json["exit_code"], 3);
        assert_eq!(json["summary"]["changed"], 1);
        assert_eq!(json["agents"][1]["status"], "no_answer");
        assert_eq!(json["agents"][0]["states"][1]["outcome"], "changed");
        let back: Vec<AgentReport> = serde_json::from_value(json["agents"].clone()).unwrap();
        assert_eq!(back, report.agents);
    }
}
