//! The master's view of the state tree: states (from the state engine),
//! beacons.yaml and reactors.yaml, loaded and checked together, plus what
//! `watch: true` implies (see [`crate::tree::watch`]), and the warnings
//! about reactors that can never fire as written ([`crate::tree::lint`]).

pub mod beacons;
pub mod lint;
pub mod samples;
pub mod watch;

use std::path::Path;
use std::sync::Arc;

use halite_proto::{BeaconSpec, Value};
use halite_state::{Diagnostic, StateTree, diag};

use crate::server::reactor::{self, Reactor};
use beacons::BeaconTable;
use watch::Watch;

#[derive(Debug, Default)]
pub struct Tree {
    pub states: Arc<StateTree>,
    pub beacons: BeaconTable,
    /// The authored reactors, then one per watched state.
    pub reactors: Vec<Arc<Reactor>>,
    /// The states with `watch: true`.
    pub watches: Vec<Watch>,
}

impl Tree {
    /// Loads everything; returns what loaded and every problem found.
    pub fn load(root: &Path) -> (Tree, Vec<Diagnostic>) {
        let (states, mut diagnostics) = StateTree::load(root);
        let beacons = BeaconTable::load(&root.join("beacons.yaml"), &mut diagnostics);
        let mut reactors = reactor::load(&root.join("reactors.yaml"), &states, &mut diagnostics);
        let watches = watch::find(&states, &mut diagnostics);
        let known: Vec<BeaconSpec> = beacons.specs().cloned().chain(watches.iter().map(Watch::beacon)).collect();
        diagnostics.extend(lint::reactors(&root.join("reactors.yaml"), &reactors, &known));
        reactors.extend(watches.iter().map(|w| w.reactor.clone()));
        diag::sort(&mut diagnostics);
        (Tree { states: Arc::new(states), beacons, reactors, watches }, diagnostics)
    }

    /// The beacons `agent` runs: its beacons.yaml entries, and one for each
    /// watched state among its top.yaml states.
    pub fn beacons_for(&self, agent: &str, facts: &Value) -> Vec<BeaconSpec> {
        let mut specs = self.beacons.for_agent(agent, facts);
        let files = self.states.states_for(agent, facts);
        specs.extend(self.watches.iter().filter(|w| files.contains(&w.file)).map(Watch::beacon));
        specs
    }

    pub fn summary(&self) -> String {
        let states: usize = self.states.files.values().map(|f| f.states.len()).sum();
        let watched = match self.watches.len() {
            0 => String::new(),
            1 => ", 1 watched file".into(),
            n => format!(", {n} watched files"),
        };
        let rendered = match self.states.templates.len() {
            0 => String::new(),
            n => format!(" (and {n} rendered per agent)"),
        };
        format!(
            "{} state files with {states} states{rendered}, {} beacons, {} reactors{watched}",
            self.states.files.len(),
            self.beacons.count(),
            self.reactors.len() - self.watches.len(),
        )
    }
}
