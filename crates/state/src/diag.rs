//! Diagnostics: what is wrong with an authored file, where, and how to fix it.
//!
//! Rendered as `file:line:col: error: message` followed by an indented
//! `help:` line, the form editors and CI logs link to.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file concerned, as the operator named it (relative to the tree
    /// root where possible).
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// A way forward, when there is one.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(file: impl AsRef<Path>, at: Location, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.as_ref().to_path_buf(),
            line: at.line,
            column: at.column,
            message: message.into(),
            help: None,
        }
    }

    /// A problem that does not stop the tree from loading.
    pub fn warning(file: impl AsRef<Path>, at: Location, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(file, at, message) }
    }

    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {severity}: {}", self.file.display(), self.line, self.column, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A position in an authored file. 1-based; `0:0` means "the whole file".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl Location {
    pub const FILE: Location = Location { line: 0, column: 0 };

    pub fn new(line: u64, column: u64) -> Self {
        Location { line, column }
    }
}

impl From<serde_saphyr::Location> for Location {
    fn from(l: serde_saphyr::Location) -> Self {
        Location { line: l.line(), column: l.column() }
    }
}

/// Sorts diagnostics by file and position, so output is stable.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_help() {
        let d = Diagnostic::error("top.yaml", Location::new(3, 5), "bad glob").help("close the [");
        assert_eq!(d.to_string(), "top.yaml:3:5: error: bad glob\n  help: close the [");
    }
}
