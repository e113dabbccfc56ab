//! The requisite keywords of a state: which kind of edge each makes, and
//! whether it points the other way (`require_in` on A is `require` on
//! the state it names).

use halite_proto::RequisiteKind;

/// A requisite keyword read: its edge, and `reverse` for the `*_in` forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyword {
    pub on: RequisiteKind,
    pub reverse: bool,
}

/// The keywords halite runs, with their edges.
const KEYWORDS: &[(&str, RequisiteKind, bool)] = &[
    ("require", RequisiteKind::Require, false),
    ("watch", RequisiteKind::Watch, false),
    ("onchanges", RequisiteKind::Onchanges, false),
    ("prereq", RequisiteKind::Prereq, false),
    ("listen", RequisiteKind::Listen, false),
    ("require_in", RequisiteKind::Require, true),
    ("watch_in", RequisiteKind::Watch, true),
    ("onchanges_in", RequisiteKind::Onchanges, true),
    ("prereq_in", RequisiteKind::Prereq, true),
    ("listen_in", RequisiteKind::Listen, true),
];

/// Salt's requisite keywords halite does not run (each named in
/// `tree::UNSUPPORTED_SALT_KEYS` with its way forward).
const OTHER_REQUISITES: &[&str] =
    &["onfail", "onfail_in", "onfail_any", "onfail_all", "require_any", "watch_any", "onchanges_any", "use", "use_in"];

/// The keyword `key` is, if it is one halite runs.
pub fn keyword(key: &str) -> Option<Keyword> {
    KEYWORDS.iter().find(|(k, _, _)| *k == key).map(|&(_, on, reverse)| Keyword { on, reverse })
}

/// Whether `key` is any requisite (for `extend:`, which adds to those and
/// replaces everything else).
pub fn is_requisite_key(key: &str) -> bool {
    keyword(key).is_some() || OTHER_REQUISITES.contains(&key)
}

/// The keyword as written, for messages.
pub fn written(keyword: Keyword) -> String {
    if keyword.reverse { format!("{}_in", keyword.on.keyword()) } else { keyword.on.keyword().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_their_reverse() {
        let table = [
            ("require", Some((RequisiteKind::Require, false))),
            ("watch_in", Some((RequisiteKind::Watch, true))),
            ("onchanges_in", Some((RequisiteKind::Onchanges, true))),
            ("prereq", Some((RequisiteKind::Prereq, false))),
            ("listen_in", Some((RequisiteKind::Listen, true))),
            ("onfail", None),
            ("name", None),
        ];
        for (key, expected) in table {
            assert_eq!(keyword(key).map(|k| (k.on, k.reverse)), expected, "{key}");
            if let Some(k) = keyword(key) {
                assert_eq!(written(k), key);
            }
        }
        assert!(is_requisite_key("onfail") && is_requisite_key("watch") && !is_requisite_key("mode"));
    }
}
