//! `host.absent`: a host name on none of the given addresses' lines in
//! `/etc/hosts` (Salt's `host.absent`: `name`, `ip`); a line left with no
//! name is removed. Edited through [`crate::edit`].

use halite_proto::Value;

use super::host_present::{plan_hosts, resolve_host};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "host.absent",
    summary: "A host name removed from the /etc/hosts lines of the given addresses.",
    example: "old-db:\n  host.absent:\n    ip: 10.0.0.5\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_host(state, KIND.name)
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_hosts(args, env, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, resolved};

    #[test]
    fn removes_the_name_then_is_unchanged() {
        let call = resolved(KIND.name, "name: old-db\nip: 10.0.0.5\npath: /placeholder");
        let (first, second, text) =
            apply_twice(&call, Some("127.0.0.1 localhost\n10.0.0.5 old-db\n10.0.0.6 old-db x\n"));
        assert_eq!(text, "127.0.0.1 localhost\n10.0.0.6 old-db x\n");
        assert_eq!(first, ["old-db removed from 10.0.0.5"]);
        assert!(second.is_empty());
    }
}
