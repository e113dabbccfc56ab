//! Target expressions: which agents a top.yaml, vars.yaml or beacons.yaml
//! entry (and the `apply` command) is for. Compiled once, when the tree
//! loads; matched against an agent's id and the facts from its hello.
//!
//! - `web*`, `db[0-9]` — a glob on the agent id;
//! - `L@web1,db1` — a list of ids (each may be a glob);
//! - `G@os:debian` — a glob on a grain (Salt's grain names and values,
//!   `salt/grains.rs`, laid over the facts), matched without regard to
//!   case as Salt does; nested facts are separated by `:`
//!   (`G@os_release:version_id:12*`), and as in Salt every split of the
//!   expression is tried (`G@ipv6:fe80::1`); a list-valued grain (`ipv4`)
//!   matches when any element does;
//! - `P@os:(Debian|Ubuntu)` — the same with a regular expression, anchored
//!   at the start (Python's `re.match`), without regard to case;
//! - `E@web\d+` — a regular expression on the agent id, anchored at the
//!   start;
//! - `and`, `or`, `not`, parentheses: `G@os:debian and not web*`.
//!   `not` binds tightest, then `and`, then `or`.

use globset::{Glob, GlobMatcher};
use halite_proto::Value;

/// Why a target expression does not compile; names the expression (or the
/// glob) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty target")]
    Empty,
    #[error("bad glob `{glob}`: {reason}")]
    Glob { glob: String, reason: String },
    #[error("target `{target}`: {syntax}")]
    Syntax { target: String, syntax: Syntax },
}

/// What is wrong in the shape of a target expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Syntax {
    #[error("expression ends early")]
    EndsEarly,
    #[error("`(` is not closed")]
    Unclosed,
    #[error("unexpected `{0}`")]
    Unexpected(String),
    #[error("`L@` needs a comma-separated list of agent ids")]
    EmptyList,
    #[error("`{0}`: write G@fact:glob, e.g. G@os:debian")]
    Fact(String),
    #[error("`{0}@` targets are not supported (only L@, G@, P@ and E@)")]
    Unsupported(String),
    #[error("`{pattern}`: not a regular expression: {reason}")]
    Regex { pattern: String, reason: String },
}

/// While parsing: a glob error stands alone (it names its glob), a syntax
/// error is wrapped with the whole expression.
enum ParseError {
    Glob(TargetError),
    Syntax(Syntax),
}

impl From<Syntax> for ParseError {
    fn from(syntax: Syntax) -> Self {
        ParseError::Syntax(syntax)
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    source: String,
    expr: Expr,
}

#[derive(Debug, Clone)]
enum Expr {
    Id(GlobMatcher),
    List(Vec<GlobMatcher>),
    /// Every split of `G@a:b:c` into a grain path and a pattern, as Salt
    /// tries them.
    Fact(Vec<(Vec<String>, Pattern)>),
    Pcre(regex::Regex),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Target {
    pub fn parse(expression: &str) -> Result<Target, TargetError> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err(TargetError::Empty);
        }
        let tokens = tokenize(expression);
        let mut parser = Parser { tokens: &tokens, at: 0 };
        let syntax = |syntax| TargetError::Syntax { target: expression.to_owned(), syntax };
        let expr = parser.or().map_err(|e| match e {
            ParseError::Glob(e) => e,
            ParseError::Syntax(e) => syntax(e),
        })?;
        if let Some(extra) = parser.peek() {
            return Err(syntax(Syntax::Unexpected(extra.to_owned())));
        }
        Ok(Target { source: expression.to_owned(), expr })
    }

    /// Whether the agent with this id and these facts is targeted. Facts
    /// may be `Value::Null` (not known): then only id forms can match.
    pub fn matches(&self, agent: &str, facts: &Value) -> bool {
        self.expr.matches(agent, facts)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads facts (a `G@` anywhere in it): such a
    /// target cannot be matched against agents whose facts are not known
    /// here (a `not G@…` would match them all).
    pub fn uses_facts(&self) -> bool {
        self.expr.uses_facts()
    }
}

impl Expr {
    fn uses_facts(&self) -> bool {
        match self {
            Expr::Fact(_) => true,
            Expr::Id(_) | Expr::List(_) | Expr::Pcre(_) => false,
            Expr::Not(inner) => inner.uses_facts(),
            Expr::And(a, b) | Expr::Or(a, b) => a.uses_facts() || b.uses_facts(),
        }
    }
}

impl Expr {
    fn matches(&self, agent: &str, facts: &Value) -> bool {
        match self {
            Expr::Id(glob) => glob.is_match(agent),
            Expr::List(globs) => globs.iter().any(|g| g.is_match(agent)),
            Expr::Fact(splits) => splits.iter().any(|(path, pattern)| grain_matches(facts, path, pattern)),
            Expr::Pcre(regex) => regex.is_match(agent),
            Expr::Not(inner) => !inner.matches(agent, facts),
            Expr::And(a, b) => a.matches(agent, facts) && b.matches(agent, facts),
            Expr::Or(a, b) => a.matches(agent, facts) || b.matches(agent, facts),
        }
    }
}

/// A grain's pattern: a glob (`G@`) or a regular expression (`P@`), both
/// without regard to case.
#[derive(Debug, Clone)]
enum Pattern {
    Glob(GlobMatcher),
    Regex(regex::Regex),
}

impl Pattern {
    fn is_match(&self, text: &str) -> bool {
        match self {
            Pattern::Glob(glob) => glob.is_match(text),
            Pattern::Regex(regex) => regex.is_match(text),
        }
    }
}

/// The grain at `path` (its first part a Salt grain, else a fact) matches.
fn grain_matches(facts: &Value, path: &[String], pattern: &Pattern) -> bool {
    let Some((first, rest)) = path.split_first() else { return false };
    match crate::salt::grains::lookup(facts, first) {
        Some(value) => fact_matches(&value, rest, pattern),
        None => false,
    }
}

fn fact_matches(value: &Value, path: &[String], pattern: &Pattern) -> bool {
    match (value, path.split_first()) {
        (Value::List(items), _) => items.iter().any(|item| fact_matches(item, path, pattern)),
        (Value::Map(map), Some((key, rest))) => map.get(key).is_some_and(|v| fact_matches(v, rest, pattern)),
        (_, Some(_)) => false,
        (Value::String(s), None) => pattern.is_match(s),
        (Value::Int(i), None) => pattern.is_match(&i.to_string()),
        (Value::Float(f), None) => pattern.is_match(&f.to_string()),
        (Value::Bool(b), None) => pattern.is_match(&b.to_string()),
        (_, None) => false,
    }
}

fn tokenize(expression: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for word in expression.split_whitespace() {
        let mut rest = word;
        while let Some(stripped) = rest.strip_prefix('(') {
            tokens.push("(".to_owned());
            rest = stripped;
        }
        let mut closing = 0;
        // A `)` that closes a `(` of the word (a regular expression's
        // group, `P@os:(Debian|Ubuntu)`) is part of it.
        let balanced = |s: &str| s.matches(')').count() <= s.matches('(').count();
        while !balanced(rest)
            && let Some(stripped) = rest.strip_suffix(')')
        {
            closing += 1;
            rest = stripped;
        }
        if !rest.is_empty() {
            tokens.push(rest.to_owned());
        }
        tokens.extend(std::iter::repeat_n(")".to_owned(), closing));
    }
    tokens
}

struct Parser<'a> {
    tokens: &'a [String],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Option<&str> {
        let token = self.tokens.get(self.at).map(String::as_str);
        self.at += 1;
        token
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.peek() == Some("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.peek() == Some("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == Some("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        match self.next() {
            None => Err(Syntax::EndsEarly.into()),
            Some("(") => {
                let inner = self.or()?;
                match self.next() {
                    Some(")") => Ok(inner),
                    _ => Err(Syntax::Unclosed.into()),
                }
            }
            Some(token @ (")" | "and" | "or")) => Err(Syntax::Unexpected(token.to_owned()).into()),
            Some(token) => atom(token),
        }
    }
}

/// A regular expression anchored at the start, as Python's `re.match`.
fn regex(text: &str, case_insensitive: bool) -> Result<regex::Regex, ParseError> {
    regex::RegexBuilder::new(&format!("^(?:{text})"))
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| ParseError::Syntax(Syntax::Regex { pattern: text.to_owned(), reason: e.to_string() }))
}

fn glob(text: &str) -> Result<GlobMatcher, ParseError> {
    Glob::new(text)
        .map(|g| g.compile_matcher())
        .map_err(|e| ParseError::Glob(TargetError::Glob { glob: text.to_owned(), reason: e.kind().to_string() }))
}

fn atom(token: &str) -> Result<Expr, ParseError> {
    if let Some(list) = token.strip_prefix("L@") {
        let globs: Vec<GlobMatcher> = list.split(',').filter(|s| !s.is_empty()).map(glob).collect::<Result<_, _>>()?;
        if globs.is_empty() {
            return Err(Syntax::EmptyList.into());
        }
        return Ok(Expr::List(globs));
    }
    if let Some(pcre) = token.strip_prefix("E@") {
        return Ok(Expr::Pcre(regex(pcre, false)?));
    }
    if let Some((prefix, fact)) = token.split_once('@')
        && (prefix == "G" || prefix == "P")
    {
        let parts: Vec<&str> = fact.split(':').collect();
        if parts.len() < 2 || parts[0].is_empty() {
            return Err(Syntax::Fact(token.to_owned()).into());
        }
        let mut splits = Vec::new();
        for at in 1..parts.len() {
            let path: Vec<String> = parts[..at].iter().map(|p| (*p).to_owned()).collect();
            let text = parts[at..].join(":");
            if path.iter().any(String::is_empty) || text.is_empty() {
                continue;
            }
            let pattern = if prefix == "G" {
                Pattern::Glob(
                    globset::GlobBuilder::new(&text)
                        .case_insensitive(true)
                        .build()
                        .map(|g| g.compile_matcher())
                        .map_err(|e| {
                            ParseError::Glob(TargetError::Glob { glob: text.clone(), reason: e.kind().to_string() })
                        })?,
                )
            } else {
                Pattern::Regex(regex(&text, true)?)
            };
            splits.push((path, pattern));
        }
        if splits.is_empty() {
            return Err(Syntax::Fact(token.to_owned()).into());
        }
        return Ok(Expr::Fact(splits));
    }
    if let Some((prefix, _)) = token.split_once('@')
        && prefix.len() == 1
    {
        return Err(Syntax::Unsupported(prefix.to_owned()).into());
    }
    Ok(Expr::Id(glob(token)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_says_whether_it_reads_facts() {
        let cases = [
            ("web*", false),
            ("L@web01,db01", false),
            ("E@web0[12]", false),
            ("web* and not db*", false),
            ("G@os:debian", true),
            ("not G@os:debian", true),
            ("web* or (db* and G@role:db)", true),
        ];
        for (expression, wanted) in cases {
            assert_eq!(Target::parse(expression).unwrap().uses_facts(), wanted, "{expression}");
        }
    }

    fn facts() -> Value {
        Value::map()
            .with("os", "debian")
            .with("cpus", 4i64)
            .with("os_release", Value::map().with("version_id", "12"))
            .with("ips", Value::List(vec!["10.0.0.5".into(), "192.168.1.9".into(), "fe80::1".into()]))
    }

    #[test]
    fn expressions_match() {
        let cases = [
            ("*", "web01", true),
            ("web*", "web01", true),
            ("web*", "db01", false),
            ("db[0-9]", "db7", true),
            ("db[0-9]", "db10", false),
            ("web01", "web01", true),
            ("L@web01,db1", "db1", true),
            ("L@web01,db1", "db2", false),
            ("L@web*,db1", "web9", true),
            ("G@os:debian", "x", true),
            ("G@os:deb*", "x", true),
            ("G@os:ubuntu", "x", false),
            ("G@cpus:4", "x", true),
            ("G@os_release:version_id:12", "x", true),
            ("G@os_release:version_id:11", "x", false),
            ("G@ips:10.0.0.*", "x", true),
            ("G@missing:x", "x", false),
            // Salt's grains over the facts, without regard to case.
            ("G@os:Debian", "x", true),
            ("G@os_family:debian", "x", true),
            ("G@num_cpus:4", "x", true),
            ("G@kernel:Linux", "x", true),
            ("G@ipv4:127.0.0.1", "x", true),
            ("G@ipv6:fe80::1", "x", true),
            ("G@ipv6:fe80::2", "x", false),
            ("P@os:(Debian|Ubuntu)", "x", true),
            ("P@os:ebian", "x", false),
            ("P@os_family:deb", "x", true),
            ("E@web\\d+", "web12", true),
            ("E@web\\d+", "xweb12", false),
            ("E@web\\d+", "Web12", false),
            ("E@web.* and G@os:debian", "web1", true),
            ("web* and G@os:debian", "web1", true),
            ("web* and G@os:ubuntu", "web1", false),
            ("web* or G@os:ubuntu", "web1", true),
            ("not web*", "web1", false),
            ("not web*", "db1", true),
            ("G@os:debian and not web*", "db1", true),
            ("db* or web* and G@os:ubuntu", "db1", true),
            ("(db* or web*) and G@os:ubuntu", "db1", false),
            ("not (db* or web*)", "mail", true),
            ("((web1))", "web1", true),
        ];
        for (target, agent, expected) in cases {
            let parsed = Target::parse(target).unwrap_or_else(|e| panic!("{target}: {e}"));
            assert_eq!(parsed.matches(agent, &facts()), expected, "{target} vs {agent}");
        }
    }

    #[test]
    fn unknown_facts_never_match_fact_forms() {
        assert!(!Target::parse("G@os:*").unwrap().matches("a", &Value::Null));
        assert!(Target::parse("not G@os:*").unwrap().matches("a", &Value::Null));
    }

    #[test]
    fn bad_expressions_are_errors() {
        let cases = [
            ("web[", "bad glob"),
            ("", "empty"),
            ("web* and", "ends early"),
            ("(web*", "not closed"),
            ("web*)", "unexpected `)`"),
            ("and web", "unexpected `and`"),
            ("G@os", "G@fact:glob"),
            ("I@role:web", "`I@` targets are not supported"),
            ("E@web(", "not a regular expression"),
            ("P@os:(", "not a regular expression"),
            ("web db", "unexpected `db`"),
        ];
        for (target, message) in cases {
            let error = Target::parse(target).unwrap_err().to_string();
            assert!(error.contains(message), "{target}: {error}");
        }
    }
}
