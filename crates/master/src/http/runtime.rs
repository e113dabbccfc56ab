//! The HTTP side's own runtime: one worker thread, `halite-http`, at nice
//! [`NICE`], where the API, the dashboard, the SSE streams, the event
//! ring's copier and the `/metrics` listener run.
//!
//! Why apart: on the master's runtime their work (TLS, JSON, SSE frames, a
//! scrape's rendering) took turns with the link loop, the decode workers
//! and the reactors on the same worker threads, so on a busy host a
//! client following the events delayed the drift → restore path it was
//! watching (BENCHMARKS.md, "The API, dashboard and metrics, on and off").
//! Here the kernel runs it when the hot threads leave a core free, and the
//! master's threads only hand it a shared pointer per event (the bus's
//! lossy tail, `server/bus.rs`). A host kept busy by the link starves it:
//! the streams then miss events (and are told), requests answer late, and
//! enforcement is not slowed, which is the order we want.
//!
//! Its blocking pool (store reads for the API) is niced the same way.
//! Work a handler starts through `server/` (a job, an apply) is spawned
//! where the handler runs, here.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};

/// The nice value of the HTTP side's threads: a tenth of a normal thread's
/// share of a contended core (CFS weights 110 against 1024).
pub const NICE: i32 = 10;

/// The name of its threads (`ps -L`, `/proc/PID/task/*/comm`).
pub const THREAD_NAME: &str = "halite-http";

/// Why the HTTP side's runtime did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the HTTP side's runtime (thread `{THREAD_NAME}`): {source}")]
pub struct RuntimeError {
    pub source: std::io::Error,
}

/// The runtime, stopped when dropped (its tasks are cancelled; the master
/// has drained the API's connections before it drops this).
#[derive(Debug)]
pub struct HttpRuntime {
    /// Taken when dropped.
    runtime: Option<Runtime>,
    handle: Handle,
}

impl HttpRuntime {
    /// Starts the worker thread.
    pub fn start() -> Result<HttpRuntime, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(THREAD_NAME)
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|source| RuntimeError { source })?;
        Ok(HttpRuntime { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    /// Where to spawn.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on the HTTP side and waits for it from wherever the
    /// caller runs (what it spawns, it spawns there).
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle().spawn(future).await {
            Ok(output) => output,
            // The future panicked: the panic goes on where it was awaited.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

impl Drop for HttpRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task would block it;
        // `shutdown_background` does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority to [`NICE`] (Linux's nice is per
/// thread). Failing only costs the separation, so it is logged, not fatal.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), NICE) {
        tracing::warn!(%error, nice = NICE, "Cannot lower the HTTP side's thread priority; it competes with the link loop.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What runs on the HTTP side runs on its own niced thread, not the
    /// caller's; and the runtime stops inside another runtime without
    /// blocking it.
    #[tokio::test]
    async fn work_runs_on_the_niced_thread() {
        let http = HttpRuntime::start().unwrap();
        let (name, nice) = http
            .run(async {
                let name = std::thread::current().name().map(str::to_owned);
                let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
                (name, nice)
            })
            .await;
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        assert_eq!(nice, NICE);
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_ne!(here, NICE, "the caller's thread kept its priority");
        drop(http);
    }
}
