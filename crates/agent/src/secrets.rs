//! The secret pillar values this agent was told about, and their
//! redaction (`<secret>`) in everything the agent logs, sends and writes
//! of a job's outcome: state results (the job runner, jobs.rs, before it
//! logs a state or sends a result, so the outbox holds them redacted),
//! `healed` events and offline-healing errors (daemon.rs).
//!
//! The master sends an agent its secrets before each job
//! (`MasterMessage::Secrets`); `apply --local` learns them from its own
//! render (local.rs). They are kept process-wide, as the master's book
//! (`halite_state::salt::secret`) is: the job runner's thread, the
//! offline healer and the daemon loop all redact with the same set. A set
//! that arrives is added to the ones before it, never replaces them: a
//! job still running when a reload's new set arrives is redacted with
//! both. At most [`MAX_SECRETS`] values are kept; past that, the newest
//! set replaces the rest (a fleet's pillar has a few dozen).
//!
//! With offline healing on, the set is also kept in
//! `<data_dir>/offline/secrets` (mode 0600, beside the kept contents that
//! hold the same values), so a restart while the master is away still
//! redacts the `healed` events it sends later.

use std::path::Path;
use std::sync::{LazyLock, RwLock};

use halite_proto::JobResult;
use halite_state::salt::secret;

/// How many secret values are kept at most (module doc).
pub const MAX_SECRETS: usize = 4096;

static KNOWN: LazyLock<RwLock<Vec<String>>> = LazyLock::new(|| RwLock::new(Vec::new()));

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("kept secrets {path}: {source}")]
    Write { path: std::path::PathBuf, source: halite_fs::FsError },
}

/// Adds `values` to the known secrets; `true` when the set changed.
pub fn learn(values: &[String]) -> bool {
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    let before = known.clone();
    if before.len() + values.len() > MAX_SECRETS {
        known.clear();
    }
    known.extend(values.iter().filter(|v| !v.is_empty()).cloned());
    // Longest first: a secret inside a longer one must not leave the rest
    // of the longer one behind.
    known.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    known.dedup();
    *known != before
}

/// The known secrets, longest first.
pub fn known() -> Vec<String> {
    KNOWN.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `text` with every known secret shown as `<secret>`.
pub fn redact(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    if known.is_empty() { text.to_owned() } else { secret::redact(text, &known) }
}

/// A job result with every known secret shown as `<secret>`.
pub fn redact_result(result: JobResult) -> JobResult {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    secret::redact_result_with(result, &known)
}

/// Learns the secrets kept at `path` (a missing or unreadable file keeps
/// none). Blocking.
pub fn load(path: &Path) {
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(values) = halite_proto::decode::<Vec<String>>(&bytes)
    {
        learn(&values);
    }
}

/// Keeps the known secrets at `path`, mode 0600. Blocking.
pub fn save(path: &Path) -> Result<(), SecretsError> {
    halite_fs::write_atomic(path, &halite_proto::encode(&known()), 0o600)
        .map_err(|source| SecretsError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::{Id, Outcome, StateResult};

    #[test]
    fn learned_secrets_are_redacted_kept_and_loaded_again() {
        assert!(learn(&["agent-test-pw".to_owned()]));
        assert!(!learn(&["agent-test-pw".to_owned()]), "the same set again changes nothing");
        assert!(learn(&["agent-test-pw-longer".to_owned()]), "a new set adds to the one before");
        assert_eq!(redact("x agent-test-pw-longer y agent-test-pw"), "x <secret> y <secret>");
        let result = JobResult {
            job: Id(1),
            results: vec![StateResult {
                id: "run agent-test-pw".into(),
                kind: "cmd.run".into(),
                outcome: Outcome::Failed { error: "stderr: agent-test-pw-longer".into() },
                diff: None,
                duration_us: 1,
            }],
        };
        let text = format!("{:?}", redact_result(result));
        assert!(!text.contains("agent-test-pw") && text.contains("run <secret>"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let kept: Vec<String> = halite_proto::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert!(kept.contains(&"agent-test-pw-longer".to_owned()), "{kept:?}");
        load(&path);
        assert!(known().contains(&"agent-test-pw".to_owned()));
    }
}
