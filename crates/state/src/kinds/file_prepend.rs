//! `file.prepend`: text that must be in a file, put at its top when it is
//! not (Salt's `file.prepend`, the same arguments as `file.append` plus
//! `header`: leading comment lines stay first). The file is made when
//! missing. Read and written through [`crate::edit`].

use halite_proto::Value;

use super::file_append::{plan_chunks, resolve_chunks};
use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.prepend",
    summary: "Text that must be in a file, put at its top when it is not (after a comment header with `header: true`).",
    example: "hosts-header:\n  file.prepend:\n    name: /etc/hosts.allow\n    text: '# managed by halite'\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_chunks(state, KIND.name)
}

/// `lines` before `text`, or after its leading `#` lines with `header`.
fn place(text: &str, lines: &str, args: &Value) -> String {
    let split = if args::bool_or(args, "header", false) {
        crate::text::lines(text).iter().take_while(|l| l.starts_with('#')).map(|l| l.len()).sum()
    } else {
        0
    };
    let (head, rest) = text.split_at(split);
    format!("{}{lines}{rest}", if head.is_empty() { String::new() } else { crate::text::with_newline(head) })
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_chunks(args, env, "prepended", place)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind_tests::{apply_twice, resolved};

    #[test]
    fn prepends_what_is_missing_then_reports_unchanged() {
        let call = resolved(KIND.name, "text: [one, two]");
        let (first, second, text) = apply_twice(&call, Some("two\nrest\n"));
        assert_eq!(text, "one\ntwo\nrest\n");
        assert_eq!(first, ["prepended `one`"]);
        assert!(second.is_empty());
    }

    #[test]
    fn a_header_stays_first() {
        let call = resolved(KIND.name, "text: new\nheader: true");
        let (_, second, text) = apply_twice(&call, Some("#!/bin/sh\n# hi\nbody\n"));
        assert_eq!(text, "#!/bin/sh\n# hi\nnew\nbody\n");
        assert!(second.is_empty());
    }
}
