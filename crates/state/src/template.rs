//! Templates (minijinja) for file content: `file.managed` with
//! `template: jinja`. Syntax-checked when the tree loads; rendered for one
//! agent when the master builds its job (or by `apply --local`).
//!
//! The context: `id` (the agent id), `facts` (from the agent's hello),
//! `vars` (vars.yaml entries targeting the agent, or its pillar in a tree
//! with one) and `event` (the data of the event that made a reactor apply
//! the state, or none). As in a Salt state file (salt/render.rs): `grains`
//! (Salt's grain names and values over the facts, salt/grains.rs),
//! `pillar` (the same as `vars`), `salt['pillar.get']` and the other
//! functions of salt/functions.rs, Salt's filters and Python's methods.
//! An undefined name is an error, not an empty string: a typo fails
//! loudly.

use halite_proto::Value;
use minijinja::{Environment, UndefinedBehavior};

/// Who a tree is rendered for.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    pub agent: &'a str,
    /// The agent's facts; `Value::Null` when not known.
    pub facts: &'a Value,
    /// The triggering event's data, when a reactor applies the states.
    pub event: Option<&'a Value>,
}

impl<'a> RenderContext<'a> {
    pub fn new(agent: &'a str, facts: &'a Value) -> Self {
        RenderContext { agent, facts, event: None }
    }
}

/// A template problem: the 1-based line within the template, if known.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub line: Option<usize>,
    pub message: String,
}

impl From<minijinja::Error> for TemplateError {
    fn from(error: minijinja::Error) -> Self {
        let message = match error.detail() {
            Some(detail) => format!("{}: {detail}", error.kind()),
            None => error.kind().to_string(),
        };
        TemplateError { line: error.line(), message }
    }
}

impl TemplateError {
    /// A render error of `source`, naming what failed: the expression
    /// whose value is undefined (`facts.nope.deeper`), or the filter
    /// minijinja does not know, as written in the template.
    pub(crate) fn rendering(error: &minijinja::Error, source: &str) -> TemplateError {
        // minijinja's span of an attribute lookup starts at the dot: take
        // the names before it too (`facts.nope.deeper`, not `.nope.deeper`).
        let range = error.range().map(|range| {
            let head = source.get(..range.start).unwrap_or_default();
            let start = head
                .char_indices()
                .rev()
                .take_while(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == '.')
                .last()
                .map_or(range.start, |(i, _)| i);
            start..range.end
        });
        let written = range.and_then(|range| source.get(range)).map(str::trim).filter(|w| !w.is_empty());
        let message = match (error.kind(), written, error.detail()) {
            (minijinja::ErrorKind::UndefinedError, Some(written), _) => {
                format!("undefined value: `{written}` is not defined for this agent")
            }
            (kind, Some(written), Some(detail)) => format!("{kind}: {detail} (in `{written}`)"),
            (kind, Some(written), None) => format!("{kind} in `{written}`"),
            (kind, None, Some(detail)) => format!("{kind}: {detail}"),
            (kind, None, None) => kind.to_string(),
        };
        TemplateError { line: error.line(), message }
    }
}

/// The names a template may read from its context; anything else it
/// reads without defining it is undefined for every agent.
pub const CONTEXT_NAMES: &[&str] = &["id", "facts", "grains", "vars", "pillar", "event", "salt", "saltenv", "opts"];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // File content keeps its final newline.
    env.set_keep_trailing_newline(true);
    env
}

/// Compiles `text`, reporting a syntax error with its line, and a name it
/// reads that is neither in the context ([`CONTEXT_NAMES`]) nor defined by
/// the template itself (`set`, a loop variable) or a builtin: undefined
/// whichever agent it renders for.
pub fn check(text: &str) -> Result<(), TemplateError> {
    check_with(text, &[])
}

/// [`check`], with `extra` names defined too (a state's `context` and
/// `defaults`).
pub fn check_with(text: &str, extra: &[String]) -> Result<(), TemplateError> {
    let env = environment();
    let template = env.template_from_str(text).map_err(TemplateError::from)?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| {
            !CONTEXT_NAMES.contains(&name.as_str())
                && !extra.contains(name)
                && env.globals().all(|(global, _)| global != name)
        })
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(name) => {
            let line = text.lines().position(|l| l.contains(name.as_str())).map(|i| i + 1);
            Err(TemplateError {
                line,
                message: format!(
                    "undefined value: `{name}` is not defined for any agent (a template reads {})",
                    CONTEXT_NAMES.join(", ")
                ),
            })
        }
    }
}

pub fn render(text: &str, context: &RenderContext<'_>, vars: &serde_json::Value) -> Result<String, TemplateError> {
    render_with(text, context, vars, &serde_json::Value::Null)
}

/// [`render`], with `extra`'s keys as top-level names (a state's
/// `context`/`defaults`, which win over the standard names as in Salt).
pub fn render_with(
    text: &str,
    context: &RenderContext<'_>,
    vars: &serde_json::Value,
    extra: &serde_json::Value,
) -> Result<String, TemplateError> {
    let mut env = environment();
    let data = crate::salt::functions::Data {
        grains: crate::salt::grains::for_agent(context.agent, context.facts),
        pillar: vars.clone(),
    };
    crate::salt::context::add_salt(&mut env, &std::sync::Arc::new(data));
    let template = env.template_from_str(text)?;
    let facts = minijinja::Value::from_serialize(context.facts.to_json());
    let vars = minijinja::Value::from_serialize(vars);
    let event = context.event.map_or(minijinja::Value::from(()), |e| minijinja::Value::from_serialize(e.to_json()));
    let ctx = minijinja::context! {
        id => context.agent,
        facts => facts,
        vars => vars,
        event => event,
    };
    let ctx = if extra.is_object() {
        minijinja::value::merge_maps([minijinja::Value::from_serialize(extra), ctx])
    } else {
        ctx
    };
    template.render(ctx).map_err(|error| TemplateError::rendering(&error, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_facts_vars_and_event() {
        let facts = Value::map().with("os", "debian");
        let event = Value::map().with("path", "/etc/x");
        let context = RenderContext { agent: "web1", facts: &facts, event: Some(&event) };
        let vars = serde_json::json!({"port": 8080});
        let text = "{{ id }} {{ facts.os }} {{ grains.os }} {{ vars.port }} {{ pillar.port }} {{ event.path }}\n";
        assert_eq!(render(text, &context, &vars).unwrap(), "web1 debian Debian 8080 8080 /etc/x\n");
        let salt = "{{ salt['pillar.get']('port') }} {{ pillar.get('nope', 1) }} {{ grains.os_family }}";
        assert_eq!(render(salt, &context, &vars).unwrap(), "8080 1 Debian");
        let no_event = RenderContext::new("web1", &facts);
        assert_eq!(render("{% if event %}e{% else %}none{% endif %}", &no_event, &vars).unwrap(), "none");
    }

    #[test]
    fn errors_have_lines() {
        let error = check("ok\n{% if x %}\nno end\n").unwrap_err();
        assert!(error.line.is_some(), "{error:?}");
        assert!(error.message.contains("syntax error"), "{error:?}");
        let facts = Value::Null;
        let error = render("a\n{{ facts.nope.deeper }}\n", &RenderContext::new("a", &facts), &serde_json::json!({}))
            .unwrap_err();
        assert_eq!(error.line, Some(2), "{error:?}");
        assert!(error.message.contains("`facts.nope.deeper`"), "the expression is named: {error:?}");
    }

    #[test]
    fn a_name_no_agent_defines_is_caught_without_rendering() {
        let cases = [
            ("{{ facts.os }} {{ vars.x }} {{ id }} {{ event }} {{ grains.os }} {{ pillar.y }}\n", None),
            ("{% set port = 80 %}{{ port }}{% for ip in facts.ips %}{{ ip }}{% endfor %}{{ range(3) }}", None),
            ("ok\nlisten {{ hostname }}\n", Some(("hostname", 2))),
        ];
        for (text, expected) in cases {
            match (check(text), expected) {
                (Ok(()), None) => {}
                (Err(error), Some((name, line))) => {
                    assert!(error.message.contains(&format!("`{name}`")), "{error:?}");
                    assert_eq!(error.line, Some(line), "{error:?}");
                }
                (outcome, _) => panic!("{text}: {outcome:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_filter_is_named_with_its_line() {
        let facts = Value::map().with("os", "debian");
        let error = render("a\n{{ facts.os | upcase }}\n", &RenderContext::new("a", &facts), &serde_json::json!({}))
            .unwrap_err();
        assert_eq!(error.line, Some(2), "{error:?}");
        assert!(error.message.contains("unknown filter") && error.message.contains("upcase"), "{error:?}");
    }
}
