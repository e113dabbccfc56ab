//! The dashboard's templates: minijinja, embedded in the binary, every
//! value HTML-escaped.
//!
//! Escaping is not left to each template: every template's name ends in
//! `.html`, for which minijinja's default auto-escape escapes every `{{ }}`
//! (the test `agent_supplied_text_is_escaped_everywhere` renders every page
//! with hostile strings), and no template uses `|safe`
//! (`no_template_opts_out_of_escaping`). URLs built from values go through
//! the `path` filter, which percent-encodes all but unreserved characters.

use std::sync::OnceLock;

use minijinja::{Environment, Value};

/// Every template, by name.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("compliance.html", include_str!("templates/compliance.html")),
    ("login.html", include_str!("templates/login.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("overview_body.html", include_str!("templates/overview_body.html")),
    ("events.html", include_str!("templates/events.html")),
    ("agent.html", include_str!("templates/agent.html")),
    ("receipts.html", include_str!("templates/receipts.html")),
    ("jobs.html", include_str!("templates/jobs.html")),
    ("jobs_table.html", include_str!("templates/jobs_table.html")),
    ("job.html", include_str!("templates/job.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("tree.html", include_str!("templates/tree.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("error.html", include_str!("templates/error.html")),
];

/// Why a page could not be rendered: a bug in a template (the tests
/// render every page), named with the template.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the dashboard template {template}: {source:#}")]
pub struct RenderError {
    pub template: String,
    #[source]
    pub source: minijinja::Error,
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are ours and tested; one that does not parse
            // fails every render with its error, below.
            if let Err(error) = env.add_template(name, source) {
                tracing::error!(template = name, %error, "Dashboard template does not parse.");
            }
        }
        env.add_filter("path", path_segment);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env
    })
}

/// Renders `template` with `context`.
pub fn render(template: &str, context: Value) -> Result<String, RenderError> {
    let wrap = |source| RenderError { template: template.to_owned(), source };
    environment().get_template(template).map_err(wrap)?.render(context).map_err(wrap)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// value placed in a URL path or query stays one segment.
pub fn path_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let on_disk: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/dashboard/templates"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        for name in &on_disk {
            assert!(TEMPLATES.iter().any(|(t, _)| t == name), "{name} is not in TEMPLATES");
        }
    }

    #[test]
    fn no_template_opts_out_of_escaping() {
        for (name, source) in TEMPLATES {
            assert!(name.ends_with(".html"), "{name}: auto-escaping is chosen by the .html suffix");
            for forbidden in ["|safe", "| safe", "autoescape false", "autoescape=false"] {
                assert!(!source.contains(forbidden), "{name} uses {forbidden}");
            }
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("web01.example-1_~"), "web01.example-1_~");
        assert_eq!(path_segment("a/b c\"<>"), "a%2Fb%20c%22%3C%3E");
        assert_eq!(path_segment("halite/beacon/**"), "halite%2Fbeacon%2F%2A%2A");
    }
}
