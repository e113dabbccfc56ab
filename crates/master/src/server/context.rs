//! The running master's shared context: what the link, the control socket
//! and hot reload all reach through one handle.

use std::sync::{Arc, RwLock};

use crate::server::bus::Bus;
use crate::server::jobs::Jobs;
use crate::server::keys::KeyStore;
use crate::server::reactor::engine::Engine;
use crate::server::sessions::Sessions;
use crate::tree::Tree;

/// The running master's shared parts.
#[derive(Debug)]
pub struct Master {
    /// The master's static key; agents pin its public half.
    pub keypair: halite_link::Keypair,
    /// Every agent key and its status, in memory, persisted in halite.db.
    pub keys: KeyStore,
    pub tree: Arc<RwLock<Arc<Tree>>>,
    pub sessions: Sessions,
    pub jobs: Jobs,
    pub engine: Engine,
    pub bus: Bus,
    /// The wire limits master.yaml sets (`max_event_bytes`).
    pub limits: crate::server::limits::Limits,
    /// What each agent's file beacons watch (`inventory.rs`).
    pub inventory: crate::server::inventory::Inventories,
    /// Roles, API tokens and the audit log, for the API and the control
    /// socket alike.
    pub access: crate::server::access::Access,
    /// With several masters on PostgreSQL: the others, their tree
    /// versions and each agent's master (`cluster/masters.rs`).
    pub cluster: Option<crate::server::cluster::masters::View>,
    /// With several masters on PostgreSQL: the other masters' events,
    /// read while someone follows (`events`, the API's stream).
    pub fleet: Option<crate::server::cluster::tail::FleetTail>,
    /// With several masters: jobs for agents homed on another master go
    /// through here (`cluster/route.rs`).
    pub route: Option<crate::server::cluster::route::Router>,
}

impl Master {
    pub fn tree(&self) -> Arc<Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The agents `target` names (by id) that are connected to other
    /// masters, each with its master, by id or by their frozen facts
    /// (shared through PostgreSQL, held in memory: no query): where an
    /// operator's job for them is routed (`cluster/route.rs`). Only agents
    /// whose key is accepted; none of `here`; none without several masters.
    pub fn homed_elsewhere(&self, target: &halite_state::Target, here: &[String]) -> Vec<(String, String)> {
        let Some(view) = &self.cluster else { return Vec::new() };
        let frozen = if target.uses_facts() { self.keys.frozen_facts() } else { Default::default() };
        let mut there = view.homed_elsewhere(target, here, &frozen);
        let ids: Vec<String> = there.iter().map(|(agent, _)| agent.clone()).collect();
        let accepted: std::collections::BTreeSet<String> = self
            .keys
            .entries_of(&ids)
            .into_iter()
            .filter(|entry| entry.status == crate::server::keys::KeyStatus::Accepted)
            .map(|entry| entry.id)
            .collect();
        there.retain(|(agent, _)| accepted.contains(agent));
        there
    }

    /// What `inventory.rs` needs of the master, with `tree` the live one.
    pub fn inventory_parts<'a>(&'a self, tree: &'a Tree) -> crate::server::inventory::Parts<'a> {
        crate::server::inventory::Parts { sessions: &self.sessions, inventories: &self.inventory, tree }
    }
}
