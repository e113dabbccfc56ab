//! Secret pillar values kept out of what the master publishes, stores and
//! logs: every occurrence in a job's results (state ids, changes, errors,
//! diffs) is replaced by `<secret>` before the master takes the result
//! (`halite-master`'s `server/jobs.rs`, `Jobs::take_result`, the one door
//! every result passes through to the bus, the store, a waiting command
//! and the logs).
//!
//! The agent redacts first (`halite-agent`'s `secrets.rs`, with
//! [`redact_result_with`]): the master sends it an agent's secrets before
//! each job (`MasterMessage::Secrets`), so its own log, outbox and events
//! never hold them either.
//!
//! The secrets of each agent are remembered when its tree is rendered
//! (salt/rendered.rs), in a process-wide book: the master renders before
//! it sends, so an agent's secrets are known before any result that could
//! hold them comes back. A reload that renders again replaces them; the
//! book holds one entry per agent rendered, as the render cache does.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use halite_proto::{JobResult, Outcome};

/// What a secret is shown as.
pub const SHOWN: &str = "<secret>";

static BOOK: LazyLock<Mutex<HashMap<String, Arc<Vec<String>>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Remembers the secrets of `agent` (longest first), replacing earlier ones.
pub fn remember(agent: &str, secrets: &[String]) {
    let mut book = BOOK.lock().unwrap_or_else(|p| p.into_inner());
    if secrets.is_empty() {
        book.remove(agent);
    } else {
        book.insert(agent.to_owned(), Arc::new(secrets.to_vec()));
    }
}

/// The secrets remembered for `agent`.
pub fn of(agent: &str) -> Option<Arc<Vec<String>>> {
    BOOK.lock().unwrap_or_else(|p| p.into_inner()).get(agent).cloned()
}

/// `text` with every secret replaced by [`SHOWN`], longest first (so a
/// secret inside a longer one does not leave the rest of it behind).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), SHOWN);
        }
    }
    out
}

/// A job result of `agent` with its secrets redacted everywhere it could
/// show them.
pub fn redact_result(agent: &str, result: JobResult) -> JobResult {
    let Some(secrets) = of(agent) else { return result };
    redact_result_with(result, &secrets)
}

/// A job result with `secrets` (longest first) redacted everywhere it
/// could show them: state ids, changes, errors and diffs. The agent
/// redacts with this before it logs or sends a result (its
/// `secrets.rs`), the master again when it takes one.
pub fn redact_result_with(mut result: JobResult, secrets: &[String]) -> JobResult {
    if secrets.is_empty() {
        return result;
    }
    for state in &mut result.results {
        state.id = redact(&state.id, secrets);
        if let Some(diff) = &mut state.diff {
            *diff = redact(diff, secrets);
        }
        match &mut state.outcome {
            Outcome::Changed { changes } | Outcome::WouldChange { changes } => {
                for change in changes.iter_mut() {
                    *change = redact(change, secrets);
                }
            }
            Outcome::Failed { error } => *error = redact(error, secrets),
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::{Id, StateResult};

    #[test]
    fn every_place_a_result_shows_text_is_redacted() {
        remember("secret-test-agent", &["hunter2-long".to_owned(), "hunter2".to_owned()]);
        let state = |id: &str, outcome: Outcome, diff: Option<&str>| StateResult {
            id: id.to_owned(),
            kind: "file.managed".to_owned(),
            outcome,
            diff: diff.map(str::to_owned),
            duration_us: 1,
        };
        let result = JobResult {
            job: Id(1),
            results: vec![
                state(
                    "echo hunter2",
                    Outcome::Changed { changes: vec!["content hunter2-long".into()] },
                    Some("-x\n+pw=hunter2-long\n"),
                ),
                state("b", Outcome::Failed { error: "`mysql -phunter2` exited with 1".into() }, None),
            ],
        };
        let redacted = redact_result("secret-test-agent", result);
        let text = format!("{redacted:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(redacted.results[0].id, "echo <secret>");
        assert_eq!(redacted.results[0].diff.as_deref(), Some("-x\n+pw=<secret>\n"));
        assert!(
            matches!(&redacted.results[1].outcome, Outcome::Failed { error } if error == "`mysql -p<secret>` exited with 1")
        );
        remember("secret-test-agent", &[]);
        assert!(of("secret-test-agent").is_none());
    }
}
