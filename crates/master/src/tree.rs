//! The master's view of the state tree: states (from the state engine),
//! beacons.yaml and reactors.yaml, loaded and checked together.

use std::path::Path;
use std::sync::Arc;

use halite_state::{Diagnostic, StateTree, diag};

use crate::beacons::BeaconTable;
use crate::reactor::{self, Reactor};

#[derive(Debug, Default)]
pub struct Tree {
    pub states: StateTree,
    pub beacons: BeaconTable,
    pub reactors: Vec<Arc<Reactor>>,
}

impl Tree {
    /// Loads everything; returns what loaded and every problem found.
    pub fn load(root: &Path) -> (Tree, Vec<Diagnostic>) {
        let (states, mut diagnostics) = StateTree::load(root);
        let beacons = BeaconTable::load(&root.join("beacons.yaml"), &mut diagnostics);
        let reactors = reactor::load(&root.join("reactors.yaml"), &states, &mut diagnostics);
        diag::sort(&mut diagnostics);
        (Tree { states, beacons, reactors }, diagnostics)
    }

    pub fn summary(&self) -> String {
        let states: usize = self.states.files.values().map(|f| f.states.len()).sum();
        format!(
            "{} state files with {states} states, {} beacons, {} reactors",
            self.states.files.len(),
            self.beacons.count(),
            self.reactors.len()
        )
    }
}
