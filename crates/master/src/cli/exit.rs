//! `halite-master`'s exit codes: each way a command can fail has its own,
//! so a script tells "nothing matched" from "the master is down" from "an
//! agent did not answer" without reading messages. README.md, "Exit
//! codes", is the table; `main.rs` turns an error into its code here.

use std::path::PathBuf;

/// What a command's exit status says (`args.rs` shows the same table in
/// `--help`; `halite_state::report::Report::exit_code` gives 0, 1 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Success = 0,
    /// An error (the message says why); `check`: the tree has errors;
    /// `apply`: a state failed.
    Failed = 1,
    /// The command line is wrong (clap's own code, and only that).
    Usage = 2,
    /// `apply`: some agent did not answer in time (wins over 1: the
    /// picture is incomplete).
    NoAnswer = 3,
    /// Nothing matched: `keys accept|reject|delete` TARGET names no key,
    /// `jobs JID` no job, `apply` TARGET no connected agent.
    NoMatch = 4,
    /// The master is not running: its control socket cannot be reached.
    NotRunning = 5,
    /// Refused so as to do no harm: another master uses the data dir, or
    /// `keys accept` would replace an accepted key without being told to.
    Refused = 6,
}

/// A failure with its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no key matched `{target}` (`halite-master keys list` shows every key)")]
    NoKeyMatched { target: String },
    #[error("no job `{jid}` in {store} (`halite-master jobs` lists them)")]
    NoJob { jid: String, store: PathBuf },
    #[error(
        "cannot reach the master's control socket {socket}: {source} (is `halite-master run` running with this data dir?)"
    )]
    NotRunning { socket: PathBuf, source: std::io::Error },
    /// The master refused, to do no harm; its message says how to insist.
    #[error("{message}")]
    Refused { message: String },
}

impl CommandError {
    pub fn code(&self) -> Code {
        match self {
            CommandError::NoKeyMatched { .. } | CommandError::NoJob { .. } => Code::NoMatch,
            CommandError::NotRunning { .. } => Code::NotRunning,
            CommandError::Refused { .. } => Code::Refused,
        }
    }
}

/// The exit code for an error that ended a command: its own when it has
/// one, 1 otherwise.
pub fn code_of(error: &anyhow::Error) -> Code {
    for cause in error.chain() {
        if let Some(error) = cause.downcast_ref::<CommandError>() {
            return error.code();
        }
        if let Some(halite_fs::lock::LockError::Held { .. }) = cause.downcast_ref::<halite_fs::lock::LockError>() {
            return Code::Refused;
        }
    }
    Code::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_its_code() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let table: Vec<(anyhow::Error, Code)> = vec![
            (CommandError::NoKeyMatched { target: "x".into() }.into(), Code::NoMatch),
            (CommandError::NoJob { jid: "x".into(), store: "db".into() }.into(), Code::NoMatch),
            (CommandError::NotRunning { socket: "s".into(), source: io() }.into(), Code::NotRunning),
            (CommandError::Refused { message: "no".into() }.into(), Code::Refused),
            (
                halite_fs::lock::LockError::Held { who: "master".into(), pid: Some(1), dir: "d".into() }.into(),
                Code::Refused,
            ),
            (anyhow::Error::from(CommandError::NoKeyMatched { target: "x".into() }).context("keys"), Code::NoMatch),
            (anyhow::anyhow!("anything else"), Code::Failed),
        ];
        for (error, code) in table {
            assert_eq!(code_of(&error), code, "{error:#}");
        }
    }
}
