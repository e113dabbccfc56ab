//! The home master's side of routed jobs (`cluster/route.rs`): operators'
//! `apply` and `cmd` asked on another master for an agent connected here.
//!
//! The asking master authorized the operator and audited the request; this
//! master runs only what the request row says, as job `id` (the id the
//! operator was shown), exactly as a local job (`apply::run_routed`,
//! `cmd::run_routed`: rendered with the agent's facts here, recorded by
//! this master's store), with a cause naming the master and the principal
//! that asked. It writes no audit row of its own.
//!
//! Each request taken runs in a task of its own; how many run at once is
//! bounded by the requests in flight, which their askers bound (each asks
//! once per agent its rollout starts).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::server::cluster::route::{Answer, Router, Taken, Wake, Work};
use crate::server::context::Master;
use crate::server::jobs::Origin;

/// Wake-ups handled together, at most.
const BATCH: usize = 64;

/// Takes and runs the requests for this master's agents until `cancel`.
pub async fn serve(master: Arc<Master>, router: Router, mut inbox: mpsc::Receiver<Wake>, cancel: CancellationToken) {
    let mut wakes = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            n = inbox.recv_many(&mut wakes, BATCH) => if n == 0 { return },
        }
        // One statement for everything notified meanwhile.
        let wake = if wakes.contains(&Wake::Scan) {
            Wake::Scan
        } else {
            Wake::Ids(
                wakes.iter().flat_map(|w| if let Wake::Ids(ids) = w { ids.clone() } else { Vec::new() }).collect(),
            )
        };
        wakes.clear();
        let taken = match router.take(&wake).await {
            Ok(taken) => taken,
            Err(error) => {
                // Their askers time out, or the next scan takes them.
                tracing::warn!(%error, "Cannot take the jobs other masters routed here.");
                router.reset().await;
                continue;
            }
        };
        for taken in taken {
            tokio::spawn(run(master.clone(), router.clone(), taken));
        }
    }
}

/// Runs one routed request and writes its answer.
async fn run(master: Arc<Master>, router: Router, taken: Taken) {
    let Ok(id) = taken.id.parse::<halite_proto::Id>() else {
        tracing::warn!(job = %taken.id, "A routed job whose id is not a job id; not run.");
        return;
    };
    let origin = Origin {
        cause: format!(
            "operator:{} (asked on master {} by {})",
            taken.request.command_line, taken.asker, taken.principal
        ),
        reactor: None,
        target: taken.request.target.clone(),
    };
    let timeout = Duration::from_millis(taken.request.timeout_ms);
    tracing::info!(agent = %taken.agent, job = %taken.id, asker = %taken.asker, who = %taken.principal, "Running a job another master routed here.");
    let answer = match &taken.request.work {
        Work::Apply { states, test } => Answer::Apply {
            report: crate::server::apply::run_routed(&master, &taken.agent, id, (states, *test), origin, timeout).await,
        },
        Work::Cmd { argv } => {
            Answer::Cmd { line: crate::server::cmd::run_routed(&master, &taken.agent, id, argv, origin, timeout).await }
        }
    };
    // PostgreSQL may be briefly away: try again while the asker may still
    // be waiting (it gives up ROUTE_GRACE after the job's timeout).
    let mut backoff = crate::server::cluster::BACKOFF.0;
    let give_up = tokio::time::Instant::now() + crate::server::cluster::route::ROUTE_GRACE;
    loop {
        match router.answer(&taken, &answer).await {
            Ok(()) => return,
            Err(error) if tokio::time::Instant::now() + backoff < give_up => {
                tracing::debug!(%error, "Cannot write a routed job's answer yet.");
                router.reset().await;
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                tracing::warn!(%error, agent = %taken.agent, "Cannot write a routed job's answer; its master reports no answer (the job's result is in this master's job history).");
                return;
            }
        }
    }
}
