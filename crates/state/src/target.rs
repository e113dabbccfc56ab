//! Target expressions: which agents a top.yaml or beacons.yaml entry (and
//! later the `apply` command) is for. Compiled once, when the tree loads.
//!
//! Today a target is a glob on the agent id (`web*`, `db[0-9]`, `*`).
//! The compound forms of SPEC §2 (`L@`, `G@`, `and`/`or`/`not`) will extend
//! [`Target::parse`] without changing its callers.

use globset::{Glob, GlobMatcher};

#[derive(Debug, Clone)]
pub struct Target {
    source: String,
    glob: GlobMatcher,
}

impl Target {
    pub fn parse(expression: &str) -> Result<Target, String> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err("empty target".into());
        }
        if expression.contains('@') || expression.split_whitespace().count() > 1 {
            return Err(format!("target `{expression}`: only globs on the agent id are supported in this version"));
        }
        let glob = Glob::new(expression).map_err(|e| format!("bad glob `{expression}`: {}", e.kind()))?;
        Ok(Target { source: expression.to_owned(), glob: glob.compile_matcher() })
    }

    pub fn matches(&self, agent: &str) -> bool {
        self.glob.is_match(agent)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_agent_ids() {
        let cases = [
            ("*", "web01", true),
            ("web*", "web01", true),
            ("web*", "db01", false),
            ("db[0-9]", "db7", true),
            ("db[0-9]", "db10", false),
            ("web01", "web01", true),
        ];
        for (target, agent, expected) in cases {
            assert_eq!(Target::parse(target).unwrap().matches(agent), expected, "{target} vs {agent}");
        }
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(Target::parse("web[").unwrap_err().contains("bad glob"));
        assert!(Target::parse("").is_err());
    }
}
