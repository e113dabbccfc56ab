//! `beacons.yaml`: which beacons run on which agents.
//!
//! ```yaml
//! 'web*':
//!   nginx-conf:
//!     file:
//!       paths: [/etc/nginx/nginx.conf]
//! ```
//! Each beacon's configuration is checked by the agent's own beacon
//! registry, so what `check` accepts is what the agent runs.

use std::path::Path;

use halite_proto::{BeaconSpec, Value};
use halite_state::diag::Location;
use halite_state::yaml::{self, Spanned};
use halite_state::{Diagnostic, Target};
use indexmap::IndexMap;

#[derive(Debug, Default)]
pub struct BeaconTable {
    entries: Vec<(Target, Vec<BeaconSpec>)>,
}

type Authored =
    IndexMap<Spanned<String>, Option<IndexMap<Spanned<String>, IndexMap<Spanned<String>, Spanned<serde_json::Value>>>>>;

impl BeaconTable {
    pub fn load(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> BeaconTable {
        let mut table = BeaconTable::default();
        let Ok(text) = std::fs::read_to_string(path) else { return table };
        let authored: Authored = match yaml::parse(path, &text) {
            Ok(authored) => authored,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                return table;
            }
        };
        for (target_text, beacons) in authored {
            let target = match halite_state::Target::parse(&target_text.value) {
                Ok(target) => target,
                Err(message) => {
                    diagnostics.push(Diagnostic::error(path, yaml::location(&target_text), message.to_string()).help(
                        "a target is a glob on the agent id ('web*'), L@id1,id2, G@fact:glob, joined with and/or/not",
                    ));
                    continue;
                }
            };
            let mut specs = Vec::new();
            for (name, kinds) in beacons.unwrap_or_default() {
                let at = yaml::location(&name);
                if !halite_proto::event::valid_id(&name.value) {
                    diagnostics.push(
                        Diagnostic::error(
                            path,
                            at,
                            format!("beacon name `{}` is not usable in an event tag", name.value),
                        )
                        .help("use letters, digits, '.', '-' and '_'"),
                    );
                    continue;
                }
                if kinds.len() != 1 {
                    diagnostics.push(
                        Diagnostic::error(
                            path,
                            at,
                            format!("beacon `{}` must name exactly one kind, it names {}", name.value, kinds.len()),
                        )
                        .help(format!("known kinds: {}", halite_agent::beacons::names().join(", "))),
                    );
                    continue;
                }
                let Some((kind, config)) = kinds.into_iter().next() else { continue };
                let config = Value::from_json(&config.value);
                match halite_agent::beacons::validate(&kind.value, &config) {
                    Ok(()) => specs.push(BeaconSpec { name: name.value.clone(), kind: kind.value.clone(), config }),
                    Err(message) => {
                        let kind_at: Location = yaml::location(&kind);
                        let diagnostic =
                            Diagnostic::error(path, kind_at, format!("beacon `{}`: {message}", name.value));
                        diagnostics.push(match halite_agent::beacons::find(&kind.value) {
                            Some(known) => diagnostic.help(format!(
                                "a `{}` beacon looks like: {}",
                                known.name,
                                known.example.trim_end().replace('\n', "; ")
                            )),
                            None => {
                                diagnostic.help(format!("known kinds: {}", halite_agent::beacons::names().join(", ")))
                            }
                        });
                    }
                }
            }
            table.entries.push((target, specs));
        }
        table
    }

    /// The beacons for `agent`; a later entry with the same name wins.
    pub fn for_agent(&self, agent: &str, facts: &halite_proto::Value) -> Vec<BeaconSpec> {
        let mut specs: IndexMap<String, BeaconSpec> = IndexMap::new();
        for (target, entry) in &self.entries {
            if target.matches(agent, facts) {
                for spec in entry {
                    specs.insert(spec.name.clone(), spec.clone());
                }
            }
        }
        specs.into_values().collect()
    }

    /// Every beacon of every entry, for `check`'s warnings.
    pub fn specs(&self) -> impl Iterator<Item = &BeaconSpec> {
        self.entries.iter().flat_map(|(_, specs)| specs)
    }

    pub fn count(&self) -> usize {
        self.entries.iter().map(|(_, specs)| specs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_pick_beacons_and_bad_configs_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beacons.yaml");
        std::fs::write(
            &path,
            "'*':\n  motd:\n    file:\n      paths: [/etc/motd]\n'web*':\n  conf:\n    file:\n      paths: [relative]\n  cpu:\n    gpu: {}\n",
        )
        .unwrap();
        let mut diagnostics = Vec::new();
        let table = BeaconTable::load(&path, &mut diagnostics);
        assert_eq!(table.for_agent("db1", &halite_proto::Value::Null).len(), 1);
        assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
        assert_eq!((diagnostics[0].line, diagnostics[0].column), (7, 5));
        assert!(diagnostics[1].message.contains("unknown beacon kind `gpu`"));
    }
}
