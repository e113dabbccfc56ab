//! Templates (minijinja) for file content: `file.managed` with
//! `template: jinja`. Syntax-checked when the tree loads; rendered for one
//! agent when the master builds its job (or by `apply --local`).
//!
//! The context: `id` (the agent id), `facts` (from the agent's hello),
//! `vars` (vars.yaml entries targeting the agent) and `event` (the data of
//! the event that made a reactor apply the state, or none). Salt's names
//! `grains` and `pillar` are aliases of `facts` and `vars`. An undefined
//! name is an error, not an empty string: a typo fails loudly.

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

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // File content keeps its final newline.
    env.set_keep_trailing_newline(true);
    env
}

/// Compiles `text`, reporting a syntax error with its line.
pub fn check(text: &str) -> Result<(), TemplateError> {
    environment().template_from_str(text).map(|_| ()).map_err(TemplateError::from)
}

pub fn render(text: &str, context: &RenderContext<'_>, vars: &serde_json::Value) -> Result<String, TemplateError> {
    let env = environment();
    let template = env.template_from_str(text)?;
    let facts = minijinja::Value::from_serialize(context.facts.to_json());
    let vars = minijinja::Value::from_serialize(vars);
    let event = context.event.map_or(minijinja::Value::from(()), |e| minijinja::Value::from_serialize(e.to_json()));
    let ctx = minijinja::context! {
        id => context.agent,
        facts => facts.clone(),
        grains => facts,
        vars => vars.clone(),
        pillar => vars,
        event => event,
    };
    Ok(template.render(ctx)?)
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
        assert_eq!(render(text, &context, &vars).unwrap(), "web1 debian debian 8080 8080 /etc/x\n");
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
    }
}
