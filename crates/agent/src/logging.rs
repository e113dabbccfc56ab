//! Log output for both binaries (the master uses this module too): the
//! format (`--log-format`, or `log_format:` in agent.yaml and master.yaml)
//! and where colour is allowed.
//!
//! Logs go to stderr, which for a daemon is usually a file or the journal:
//! escape codes there are noise, so colour only when stderr is a terminal
//! (and `NO_COLOR` is unset). Text fields are written one way whatever
//! the call site recorded (a `&str`, a `Display`, a `Debug`): `key=value`,
//! the value quoted only when it holds a space, a quote or an `=`
//! ([`Logfmt`]). `json` writes one object per line (`timestamp`, `level`,
//! `target`, `fields` with `message`), for log shippers.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber: `RUST_LOG` if set, else `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.fmt_fields(Logfmt).with_ansi(colour()).init(),
        LogFormat::Json => builder.json().flatten_event(false).with_current_span(false).with_ansi(false).init(),
    }
}

/// Colour when stderr is a terminal and `NO_COLOR` is not set (no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Text fields as `key=value`, one rule for every value (see the module
/// docs); the message first, as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<'w> FormatFields<'w> for Logfmt {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut visitor = Fields { writer: &mut writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: &str) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if std::mem::replace(&mut self.first, false) { "" } else { " " };
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value}")
        } else {
            write!(self.writer, "{separator}{}={}", field.name(), quoted(value))
        };
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.field(field, &text);
    }
}

/// `web01` as it is; `"no such file"` quoted, with escapes.
fn quoted(value: &str) -> std::borrow::Cow<'_, str> {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=' || c.is_control()) {
        format!("{value:?}").into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_they_must_be() {
        let table = [("web01", "web01"), ("no such file", "\"no such file\""), ("", "\"\""), ("a=b", "\"a=b\"")];
        for (value, written) in table {
            assert_eq!(quoted(value), written, "{value}");
        }
    }
}
