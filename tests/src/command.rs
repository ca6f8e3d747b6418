//! What a command run to completion printed and how it exited, with the checks the CLI suites
//! make on it.

use std::fmt;

use serde_json::Value;

/// What one command printed and how it exited.
#[derive(Debug)]
pub struct CommandOutput {
    /// The exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl From<std::process::Output> for CommandOutput {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}(exit {:?})", self.stdout, self.stderr, self.code)
    }
}

impl CommandOutput {
    /// Whether it exited with status 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and parses stdout as JSON.
    pub fn json(&self) -> Value {
        assert!(self.ok(), "command failed: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// The whitespace-separated cells of the first stdout line that starts with `first`.
    pub fn row(&self, first: &str) -> Vec<String> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.first().map(String::as_str) == Some(first))
            .unwrap_or_else(|| panic!("no line starting with {first}: {}", self.stdout))
    }

    /// Asserts a clean failure: exit status `code`, `needle` on stderr, no panic.
    pub fn assert_error(&self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(self.stderr.contains(needle), "{needle:?} not in {self:?}");
        assert!(!self.stderr.contains("panicked"), "{self:?}");
    }
}
