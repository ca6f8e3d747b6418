//! The one place that installs the `tracing` subscriber; called only from `main`.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs a global subscriber writing to stderr, filtered by `RUST_LOG` (default `info`).
///
/// Human lines are coloured only when stderr is a terminal and `NO_COLOR` is unset (or empty),
/// so logs redirected to a file or a pipe carry no ANSI escape codes. Calling it twice is
/// harmless: the second call leaves the first subscriber in place.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(format, filter);
}

/// The same with the configuration's filter ([`Config::log_filter`](crate::Config::log_filter):
/// `RUST_LOG`, or the original daemon's `LOG_LEVEL` in its place); the daemon and the worker
/// call this one.
pub fn init_with_filter(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    install(format, filter);
}

fn install(format: LogFormat, filter: EnvFilter) {
    let ansi = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` holds a
/// non-empty value (<https://no-color.org>).
fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some(OsStr::new("1"))));
    }
}
