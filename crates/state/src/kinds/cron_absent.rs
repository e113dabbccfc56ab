//! `cron.absent`: a job not in a user's crontab (Salt's `cron.absent`:
//! `name` the command, `user`, `identifier`), identified as
//! `cron.present` identifies it; the comment line with its identifier
//! goes with it. Edited through [`crate::edit`].

use halite_proto::Value;

use super::cron_present::{plan_cron, resolve_cron};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "cron.absent",
    summary: "A job removed from a user's crontab, identified as Salt does.",
    example: "old-backup:\n  cron.absent:\n    name: /usr/local/bin/old-backup\n    user: root\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_cron(state, KIND.name)
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_cron(args, env, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, resolved};
    use crate::kinds::cron_present::TAG;

    #[test]
    fn removes_the_job_and_its_identifier_then_is_unchanged() {
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        let call = resolved(KIND.name, &format!("user: {user}\nname: /old\nidentifier: old-job"));
        let before =
            format!("0 * * * * /old\n{TAG}\n# SALT_CRON_IDENTIFIER:old-job\n0 1 * * * /old\n* * * * * /keep\n");
        let (first, second, text) = apply_twice(&call, Some(&before));
        assert_eq!(text, format!("0 * * * * /old\n{TAG}\n* * * * * /keep\n"), "the user's own line stays");
        assert_eq!(first.len(), 1);
        assert!(second.is_empty());
        let (first, _, _) = apply_twice(&call, None);
        assert!(first.is_empty(), "no crontab: nothing to remove");
    }
}
