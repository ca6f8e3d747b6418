//! The original daemon's settings under their old names.
//!
//! Operators coming from the Python EXAI MCP daemon bring environments that name some settings
//! differently. [`resolve`] runs before anything else is read: each old name that has a meaning
//! here is converted (units included) and stands in for its new name when the new name is not
//! set; the new name always wins when both are. Old names that mean nothing here are noted too.
//! Every case becomes a [`LegacyNotice`], which the daemon and the worker log as a warning once
//! tracing is up. A process cannot set environment variables (that is `unsafe` in edition
//! 2024), so the aliases live here, in the one reader of the environment.

use std::collections::HashMap;

use super::{ConfigError, DEFAULT_REDIS_URL};

/// One setting of the original daemon found in the environment, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyNotice {
    /// The original daemon's variable.
    pub legacy: &'static str,
    /// The variable it maps to here; `None` when it has no meaning here.
    pub new: Option<&'static str>,
    /// What was done with its value: the conversion, or why it was ignored. Never a secret.
    pub detail: String,
}

impl std::fmt::Display for LegacyNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.new {
            Some(new) => write!(
                f,
                "{} is the original daemon's name for {new}: {}",
                self.legacy, self.detail
            ),
            None => write!(
                f,
                "{} (an original daemon setting) has no meaning here and is ignored: {}",
                self.legacy, self.detail
            ),
        }
    }
}

/// How an old value becomes a new one.
#[derive(Debug, Clone, Copy)]
enum Convert {
    /// The same value, the same unit.
    Same,
    /// Seconds, possibly with a fraction (Python floats), rounded up to whole seconds.
    WholeSeconds,
    /// Megabytes as the original computed them (`float(MB) * 1024 * 1024`) to bytes; 0 meant
    /// "no limit".
    MibToBytes,
    /// A period in hours to a six-field cron expression.
    HoursToCron,
    /// A Python logging level to a `RUST_LOG` filter.
    LogLevel,
}

/// An old name that still works.
struct Alias {
    legacy: &'static str,
    new: &'static str,
    convert: Convert,
}

/// The old names with a meaning here, in the order they are tried (for one new name, the
/// first old name that is set is used).
const ALIASES: &[Alias] = &[
    Alias {
        legacy: "MAX_CONNECTIONS",
        new: "EXAI_WS_MAX_CONNECTIONS",
        convert: Convert::Same,
    },
    Alias {
        legacy: "MAX_CONNECTIONS_PER_IP",
        new: "EXAI_WS_MAX_CONNECTIONS_PER_IP",
        convert: Convert::Same,
    },
    Alias {
        legacy: "RESULT_TTL_SECS",
        new: "EXAI_RESULT_TTL_SECS",
        convert: Convert::WholeSeconds,
    },
    Alias {
        legacy: "EXAI_WS_RESULT_TTL",
        new: "EXAI_RESULT_TTL_SECS",
        convert: Convert::WholeSeconds,
    },
    Alias {
        legacy: "WORKFLOW_TOOL_TIMEOUT_SECS",
        new: "EXAI_WS_CALL_TIMEOUT_SECS",
        convert: Convert::Same,
    },
    Alias {
        legacy: "SESSION_TIMEOUT_SECS",
        new: "EXAI_WS_IDLE_TIMEOUT_SECS",
        convert: Convert::Same,
    },
    Alias {
        legacy: "FILE_RETENTION_DAYS",
        new: "EXAI_FILE_RETENTION_DAYS",
        convert: Convert::Same,
    },
    Alias {
        legacy: "CLEANUP_INTERVAL_HOURS",
        new: "EXAI_CLEANUP_CRON",
        convert: Convert::HoursToCron,
    },
    Alias {
        legacy: "KIMI_FILES_MAX_SIZE_MB",
        new: "EXAI_MAX_UPLOAD_BYTES",
        convert: Convert::MibToBytes,
    },
    Alias {
        legacy: "LOG_LEVEL",
        new: "RUST_LOG",
        convert: Convert::LogLevel,
    },
];

/// Old names with no meaning here, and why.
const NO_MEANING: &[(&str, &str)] = &[
    (
        "JWT_SECRET_KEY",
        "JWT authentication is not supported; clients authenticate with EXAI_WS_TOKEN",
    ),
    (
        "SESSION_MAX_CONCURRENT",
        "sessions are not capped; connections are (EXAI_WS_MAX_CONNECTIONS, \
         EXAI_WS_MAX_CONNECTIONS_PER_IP) and so are calls per session (EXAI_WS_SESSION_MAX_INFLIGHT)",
    ),
    (
        "SESSION_CLEANUP_INTERVAL",
        "there is no session sweep: each connection has its own idle timer \
         (EXAI_WS_IDLE_TIMEOUT_SECS)",
    ),
    (
        "EXAI_WS_INFLIGHT_TTL_SECS",
        "there is no in-flight cache: a call is a job with a deadline (EXAI_WS_CALL_TIMEOUT_SECS)",
    ),
    (
        "SEMANTIC_CACHE_TTL_SECONDS",
        "there is no result cache: every call runs",
    ),
    (
        "EXAI_SEMAPHORE_HEALTH_CHECK_INTERVAL",
        "permits are Redis leases that expire by themselves (EXAI_SEMAPHORE_LEASE_MS); there is \
         no leak recovery to schedule",
    ),
];

/// The environment after the old names were resolved.
pub(super) struct Resolved {
    /// The variables as the reader sees them: the new names carry the converted old values.
    pub vars: HashMap<String, String>,
    /// What was found, to be logged at start-up.
    pub notices: Vec<LegacyNotice>,
    /// For each new name set from an old one, that old name (to name it in errors).
    origin: HashMap<&'static str, &'static str>,
}

impl std::fmt::Debug for Resolved {
    /// The notices only: the variables may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("notices", &self.notices)
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// An error about a new name whose value came from an old one names the old one.
    pub fn explain(&self, err: ConfigError) -> ConfigError {
        match self.origin.get(err.var) {
            Some(legacy) => {
                ConfigError::new(legacy, format!("read as {}: {}", err.var, err.message))
            }
            None => err,
        }
    }
}

/// A set, non-empty value (the reader's rule).
fn get<'a>(vars: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    vars.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// Resolves the old names in `vars` (see the module docs).
pub(super) fn resolve(mut vars: HashMap<String, String>) -> Result<Resolved, ConfigError> {
    let mut notices = Vec::new();
    let mut origin: HashMap<&'static str, &'static str> = HashMap::new();
    for alias in ALIASES {
        let Some(raw) = get(&vars, alias.legacy).map(str::to_owned) else {
            continue;
        };
        if let Some(current) = get(&vars, alias.new).map(str::to_owned) {
            let by = match origin.get(alias.new) {
                Some(other) => format!("{other} is used"),
                None => format!("{}={current} is set and wins", alias.new),
            };
            notices.push(LegacyNotice {
                legacy: alias.legacy,
                new: Some(alias.new),
                detail: format!("{}={raw} ignored: {by}", alias.legacy),
            });
            continue;
        }
        match convert(alias, &raw)? {
            Some((value, how)) => {
                notices.push(LegacyNotice {
                    legacy: alias.legacy,
                    new: Some(alias.new),
                    detail: format!(
                        "{}={raw} read as {}={value}{how}; rename it",
                        alias.legacy, alias.new
                    ),
                });
                vars.insert(alias.new.to_owned(), value);
                origin.insert(alias.new, alias.legacy);
            }
            None => notices.push(LegacyNotice {
                legacy: alias.legacy,
                new: Some(alias.new),
                detail: format!(
                    "{}={raw} meant no limit; the default of {} applies (Moonshot's own limit)",
                    alias.legacy, alias.new
                ),
            }),
        }
    }
    redis_password(&mut vars, &mut notices, &mut origin)?;
    for (legacy, why) in NO_MEANING {
        if get(&vars, legacy).is_some() {
            notices.push(LegacyNotice {
                legacy,
                new: None,
                detail: (*why).to_owned(),
            });
        }
    }
    Ok(Resolved {
        vars,
        notices,
        origin,
    })
}

/// The new value and a note on the conversion; `None` when the old value keeps the default.
fn convert(alias: &Alias, raw: &str) -> Result<Option<(String, String)>, ConfigError> {
    let bad = |message: String| ConfigError::new(alias.legacy, message);
    match alias.convert {
        Convert::Same => Ok(Some((raw.to_owned(), String::new()))),
        Convert::WholeSeconds => {
            let secs: f64 = raw
                .parse()
                .map_err(|e| bad(format!("`{raw}`: {e} (expected seconds)")))?;
            if !secs.is_finite() || secs <= 0.0 || secs > 1e12 {
                return Err(bad(format!(
                    "`{raw}`: must be a positive number of seconds"
                )));
            }
            let whole = secs.ceil();
            let how = if whole == secs {
                String::new()
            } else {
                " (rounded up to whole seconds)".to_owned()
            };
            Ok(Some((format!("{whole}"), how)))
        }
        Convert::MibToBytes => {
            let mb: f64 = raw
                .parse()
                .map_err(|e| bad(format!("`{raw}`: {e} (expected megabytes)")))?;
            if !mb.is_finite() || !(0.0..=1e9).contains(&mb) {
                return Err(bad(format!(
                    "`{raw}`: must be a non-negative number of megabytes"
                )));
            }
            // The original: `int(float(MB) * 1024 * 1024)`, 0 meaning no limit.
            let bytes = (mb * 1_048_576.0).floor() as u64;
            if bytes == 0 {
                return Ok(None);
            }
            Ok(Some((
                bytes.to_string(),
                " (megabytes of 1,048,576 bytes)".to_owned(),
            )))
        }
        Convert::HoursToCron => {
            let hours: u64 = raw
                .parse()
                .map_err(|e| bad(format!("`{raw}`: {e} (expected a whole number of hours)")))?;
            if hours == 0 {
                return Err(bad("must be at least 1 hour".to_owned()));
            }
            let (cron, how) = hours_to_cron(hours);
            Ok(Some((cron, format!(" ({how})"))))
        }
        Convert::LogLevel => {
            let filter = match raw.to_ascii_uppercase().as_str() {
                "NOTSET" | "TRACE" => "trace",
                "DEBUG" => "debug",
                "INFO" => "info",
                "WARNING" | "WARN" => "warn",
                "ERROR" | "CRITICAL" | "FATAL" => "error",
                _ => {
                    return Err(bad(format!(
                        "`{raw}`: expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
                    )));
                }
            };
            Ok(Some((
                filter.to_owned(),
                " (a Python logging level)".to_owned(),
            )))
        }
    }
}

/// A cron expression (seconds field first, UTC) for "every `hours` hours", and how close it
/// comes. Cron counts hours within a day and days within a month, so only periods that divide
/// a day, or are whole days, are exact.
fn hours_to_cron(hours: u64) -> (String, String) {
    if hours == 1 {
        return ("0 0 * * * *".to_owned(), "every hour".to_owned());
    }
    if hours < 24 {
        let how = if 24u64.is_multiple_of(hours) {
            format!("every {hours} hours, at hours 0, {hours}, … UTC")
        } else {
            format!(
                "at hours 0, {hours}, … of each day, UTC: every {hours} hours except the last \
                 interval of a day, which is {} h",
                24 % hours
            )
        };
        return (format!("0 0 */{hours} * * *"), how);
    }
    let days = (hours + 12) / 24;
    let rounded = if hours.is_multiple_of(24) {
        String::new()
    } else {
        format!("{hours} h rounded to {days} days; ")
    };
    if days == 1 {
        return (
            "0 0 0 * * *".to_owned(),
            format!("{rounded}daily at 00:00 UTC"),
        );
    }
    if days > 31 {
        return (
            "0 0 0 1 * *".to_owned(),
            format!("{rounded}longer than a month: monthly, on the 1st at 00:00 UTC"),
        );
    }
    (
        format!("0 0 0 */{days} * *"),
        format!(
            "{rounded}every {days} days at 00:00 UTC, on days 1, {}, … of each month (the last \
             interval of a month is shorter)",
            1 + days
        ),
    )
}

/// `REDIS_PASSWORD`: put into `REDIS_URL` (and each `REDIS_CLUSTER_NODES` seed) that carries no
/// password. Its value is never logged.
fn redis_password(
    vars: &mut HashMap<String, String>,
    notices: &mut Vec<LegacyNotice>,
    origin: &mut HashMap<&'static str, &'static str>,
) -> Result<(), ConfigError> {
    const LEGACY: &str = "REDIS_PASSWORD";
    let Some(password) = get(vars, LEGACY).map(str::to_owned) else {
        return Ok(());
    };
    let mut used = Vec::new();
    let mut kept = Vec::new();
    let url = get(vars, "REDIS_URL")
        .unwrap_or(DEFAULT_REDIS_URL)
        .to_owned();
    match with_password(&url, &password) {
        Some(with) => {
            vars.insert("REDIS_URL".to_owned(), with);
            origin.insert("REDIS_URL", LEGACY);
            used.push("REDIS_URL");
        }
        None => kept.push("REDIS_URL"),
    }
    if let Some(nodes) = get(vars, "REDIS_CLUSTER_NODES").map(str::to_owned) {
        let mut changed = false;
        let seeds: Vec<String> = nodes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|seed| match with_password(seed, &password) {
                Some(with) => {
                    changed = true;
                    with
                }
                None => seed.to_owned(),
            })
            .collect();
        if changed {
            vars.insert("REDIS_CLUSTER_NODES".to_owned(), seeds.join(","));
            origin.insert("REDIS_CLUSTER_NODES", LEGACY);
            used.push("REDIS_CLUSTER_NODES");
        } else {
            kept.push("REDIS_CLUSTER_NODES");
        }
    }
    let detail = if used.is_empty() {
        format!(
            "ignored: {} already carries a password, which wins",
            kept.join(" and ")
        )
    } else {
        format!(
            "the password (not shown) was put into {} as its password; put it in the URL \
             (redis://:PASSWORD@host:port) instead",
            used.join(" and ")
        )
    };
    notices.push(LegacyNotice {
        legacy: LEGACY,
        new: Some(used.first().copied().unwrap_or("REDIS_URL")),
        detail,
    });
    Ok(())
}

/// `url` with `password` in it; `None` when it already has one or is not a Redis URL this can
/// extend (the reader then reports a malformed URL itself).
fn with_password(url: &str, password: &str) -> Option<String> {
    let mut parsed = reqwest::Url::parse(url).ok()?;
    match parsed.scheme() {
        "unix" | "redis+unix" => {
            if parsed.query_pairs().any(|(k, _)| k == "pass") {
                return None;
            }
            parsed.query_pairs_mut().append_pair("pass", password);
        }
        "redis" | "rediss" => {
            if parsed.password().is_some() {
                return None;
            }
            parsed.set_password(Some(password)).ok()?;
        }
        _ => return None,
    }
    Some(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn resolve_pairs(pairs: &[(&str, &str)]) -> Result<Resolved, ConfigError> {
        resolve(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn value(r: &Resolved, name: &str) -> Option<String> {
        r.vars.get(name).cloned()
    }

    #[test]
    fn each_old_name_converts_to_its_new_one() {
        for (legacy, raw, new, want) in [
            ("MAX_CONNECTIONS", "50", "EXAI_WS_MAX_CONNECTIONS", "50"),
            (
                "MAX_CONNECTIONS_PER_IP",
                "3",
                "EXAI_WS_MAX_CONNECTIONS_PER_IP",
                "3",
            ),
            ("RESULT_TTL_SECS", "600", "EXAI_RESULT_TTL_SECS", "600"),
            ("RESULT_TTL_SECS", "600.5", "EXAI_RESULT_TTL_SECS", "601"),
            ("EXAI_WS_RESULT_TTL", "600.0", "EXAI_RESULT_TTL_SECS", "600"),
            (
                "WORKFLOW_TOOL_TIMEOUT_SECS",
                "180",
                "EXAI_WS_CALL_TIMEOUT_SECS",
                "180",
            ),
            (
                "SESSION_TIMEOUT_SECS",
                "1800",
                "EXAI_WS_IDLE_TIMEOUT_SECS",
                "1800",
            ),
            ("FILE_RETENTION_DAYS", "7", "EXAI_FILE_RETENTION_DAYS", "7"),
            (
                "CLEANUP_INTERVAL_HOURS",
                "24",
                "EXAI_CLEANUP_CRON",
                "0 0 0 * * *",
            ),
            (
                "CLEANUP_INTERVAL_HOURS",
                "6",
                "EXAI_CLEANUP_CRON",
                "0 0 */6 * * *",
            ),
            (
                "KIMI_FILES_MAX_SIZE_MB",
                "20",
                "EXAI_MAX_UPLOAD_BYTES",
                "20971520",
            ),
            (
                "KIMI_FILES_MAX_SIZE_MB",
                "0.5",
                "EXAI_MAX_UPLOAD_BYTES",
                "524288",
            ),
            ("LOG_LEVEL", "WARNING", "RUST_LOG", "warn"),
            ("LOG_LEVEL", "debug", "RUST_LOG", "debug"),
            ("LOG_LEVEL", "CRITICAL", "RUST_LOG", "error"),
        ] {
            let r = resolve_pairs(&[(legacy, raw)]).unwrap();
            assert_eq!(value(&r, new).as_deref(), Some(want), "{legacy}={raw}");
            assert_eq!(r.notices.len(), 1);
            let notice = &r.notices[0];
            assert_eq!((notice.legacy, notice.new), (legacy, Some(new)));
            let line = notice.to_string();
            assert!(
                line.contains(legacy) && line.contains(new) && line.contains(want),
                "{line}"
            );
        }
    }

    #[test]
    fn the_new_name_wins_and_the_old_one_is_named_as_ignored() {
        let r = resolve_pairs(&[
            ("MAX_CONNECTIONS_PER_IP", "3"),
            ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "7"),
            ("RESULT_TTL_SECS", "600"),
            ("EXAI_WS_RESULT_TTL", "900"),
        ])
        .unwrap();
        assert_eq!(
            value(&r, "EXAI_WS_MAX_CONNECTIONS_PER_IP").as_deref(),
            Some("7")
        );
        // Of two old names for one new name, the first in the table is used.
        assert_eq!(value(&r, "EXAI_RESULT_TTL_SECS").as_deref(), Some("600"));
        let lines: Vec<String> = r.notices.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("MAX_CONNECTIONS_PER_IP=3 ignored")
                    && l.contains("EXAI_WS_MAX_CONNECTIONS_PER_IP=7 is set and wins")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("EXAI_WS_RESULT_TTL=900 ignored: RESULT_TTL_SECS is used")),
            "{lines:?}"
        );
    }

    #[test]
    fn hours_become_a_cron_expression_that_parses() {
        for (hours, want) in [
            (1, "0 0 * * * *"),
            (2, "0 0 */2 * * *"),
            (5, "0 0 */5 * * *"),
            (24, "0 0 0 * * *"),
            (30, "0 0 0 * * *"),
            (48, "0 0 0 */2 * *"),
            (168, "0 0 0 */7 * *"),
            (24 * 40, "0 0 0 1 * *"),
        ] {
            let (cron, how) = hours_to_cron(hours);
            assert_eq!(cron, want, "{hours} h");
            cron::Schedule::from_str(&cron).unwrap_or_else(|e| panic!("{cron}: {e}"));
            assert!(!how.is_empty());
        }
        let (_, how) = hours_to_cron(5);
        assert!(how.contains("4 h"), "{how}");
        let err = resolve_pairs(&[("CLEANUP_INTERVAL_HOURS", "0")]).unwrap_err();
        assert_eq!(err.var, "CLEANUP_INTERVAL_HOURS");
        let err = resolve_pairs(&[("CLEANUP_INTERVAL_HOURS", "daily")]).unwrap_err();
        assert_eq!(err.var, "CLEANUP_INTERVAL_HOURS");
    }

    #[test]
    fn zero_megabytes_meant_no_limit_and_keeps_the_default() {
        let r = resolve_pairs(&[("KIMI_FILES_MAX_SIZE_MB", "0")]).unwrap();
        assert_eq!(value(&r, "EXAI_MAX_UPLOAD_BYTES"), None);
        assert!(r.notices[0].detail.contains("no limit"));
        let err = resolve_pairs(&[("KIMI_FILES_MAX_SIZE_MB", "20MB")]).unwrap_err();
        assert_eq!(err.var, "KIMI_FILES_MAX_SIZE_MB");
        let err = resolve_pairs(&[("LOG_LEVEL", "LOUD")]).unwrap_err();
        assert_eq!(err.var, "LOG_LEVEL");
    }

    #[test]
    fn the_redis_password_goes_into_urls_without_one_and_is_never_shown() {
        let r = resolve_pairs(&[("REDIS_PASSWORD", "p@ss word")]).unwrap();
        assert_eq!(
            value(&r, "REDIS_URL").as_deref(),
            Some("redis://:p%40ss%20word@127.0.0.1:6379")
        );
        let r = resolve_pairs(&[
            ("REDIS_PASSWORD", "s3cret"),
            ("REDIS_URL", "redis://user@h:1/2"),
            ("REDIS_CLUSTER_NODES", "redis://a:1, redis://:other@b:2"),
        ])
        .unwrap();
        assert_eq!(
            value(&r, "REDIS_URL").as_deref(),
            Some("redis://user:s3cret@h:1/2")
        );
        assert_eq!(
            value(&r, "REDIS_CLUSTER_NODES").as_deref(),
            Some("redis://:s3cret@a:1,redis://:other@b:2")
        );
        let r = resolve_pairs(&[
            ("REDIS_PASSWORD", "s3cret"),
            ("REDIS_URL", "unix:///run/redis.sock?db=1"),
        ])
        .unwrap();
        assert_eq!(
            value(&r, "REDIS_URL").as_deref(),
            Some("unix:///run/redis.sock?db=1&pass=s3cret")
        );
        // A URL with its own password wins.
        let r = resolve_pairs(&[
            ("REDIS_PASSWORD", "s3cret"),
            ("REDIS_URL", "redis://:mine@h:1"),
        ])
        .unwrap();
        assert_eq!(value(&r, "REDIS_URL").as_deref(), Some("redis://:mine@h:1"));
        for notice in &r.notices {
            assert!(!notice.to_string().contains("s3cret"), "{notice}");
            assert!(notice.detail.contains("ignored"), "{notice}");
        }
    }

    #[test]
    fn old_names_without_a_meaning_are_noted() {
        let r =
            resolve_pairs(&[("JWT_SECRET_KEY", "hush"), ("SESSION_MAX_CONCURRENT", "5")]).unwrap();
        assert_eq!(r.notices.len(), 2);
        for notice in &r.notices {
            assert_eq!(notice.new, None);
            let line = notice.to_string();
            assert!(line.contains("no meaning here"), "{line}");
            assert!(!line.contains("hush"), "{line}");
        }
    }
}
