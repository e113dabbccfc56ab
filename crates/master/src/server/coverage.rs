//! `halite-master inventory` and `adopt` on the master's side: the control
//! socket's answers, over `inventory.rs` (which cannot reach `Master`,
//! which holds it).

use halite_state::Target;

use crate::protocol::Response;
use crate::server::context::Master;

fn refused(error: String) -> Response {
    Response { ok: false, error: Some(error), ..Response::default() }
}

/// The answer to `inventory TARGET`: each connected, accepted agent the
/// target matches, asked for its inventory at once, classified.
pub async fn inventory(master: &Master, target: &str) -> Response {
    let target = match Target::parse(target) {
        Ok(target) => target,
        Err(error) => return refused(format!("{error} (write e.g. 'web*', L@web01,web02 or 'G@os:debian')")),
    };
    let agents = master.jobs.agents_matching(&target);
    if agents.is_empty() {
        return Response { no_agent: true, ..refused("the target matches no connected agent".into()) };
    }
    let tree = master.tree();
    let parts = master.inventory_parts(&tree);
    let asked = agents.iter().map(|agent| crate::server::inventory::of(parts, agent));
    let mut inventory = futures_util::future::join_all(asked).await;
    inventory.sort_by(|a, b| a.agent.cmp(&b.agent));
    Response { ok: true, inventory, ..Response::default() }
}

/// The answer to `adopt AGENT PATH`: that unmanaged, watched file's content
/// and mode, for the command to write into the tree.
pub async fn adopt(master: &Master, agent: &str, path: &str) -> Response {
    if !master.sessions.accepted_agents().iter().any(|a| a == agent) {
        return Response {
            no_agent: true,
            ..refused(format!("agent `{agent}` is not connected (or its key is not accepted)"))
        };
    }
    let tree = master.tree();
    match crate::server::inventory::content(master.inventory_parts(&tree), agent, path).await {
        Ok(content) => Response { ok: true, adopted: Some(content), ..Response::default() },
        Err(error) => refused(error.to_string()),
    }
}
