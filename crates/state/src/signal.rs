//! Stopping a daemon on SIGTERM or SIGINT: the master's and the agent's
//! `run` both cancel their token here, so both stop the same way.

use tokio_util::sync::CancellationToken;

/// Cancels `cancel` when SIGTERM or SIGINT arrives. `daemon` names the
/// process in the log (`master`, `agent`). When the handlers cannot be
/// installed it says so and returns: the daemon runs on, and only SIGKILL
/// stops it.
pub async fn stop_on_signal(cancel: CancellationToken, daemon: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("Cannot install signal handlers; stop the {daemon} with SIGKILL.");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Signal received; stopping.");
    cancel.cancel();
}
