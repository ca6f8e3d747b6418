//! The query parameters of the admin API, read so that a bad one is a 400 naming it and what it
//! accepts — `invalid parameter `limit`: expected an integer 0 to 1000, got `abc`` — as the
//! CLI's errors do, never the deserializer's own words. Every endpoint declares the names it
//! takes; any other name is a 400 listing them.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use exai_shared::queue::JobState;

use super::ApiError;

/// The query string of one request, by name (each name at most once).
#[derive(Debug, Default)]
pub(crate) struct Params(BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::parse(parts.uri.query().unwrap_or(""))
    }
}

impl Params {
    /// The parameters of query string `query` (URL-encoded, `+` as space).
    pub(crate) fn parse(query: &str) -> Result<Self, ApiError> {
        let mut out = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).ok_or_else(|| {
                ApiError::bad_request("the query string is not valid URL encoding")
            })?;
            let value = decode(value).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid parameter `{name}`: its value is not valid URL encoding"
                ))
            })?;
            if out.insert(name.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!(
                    "invalid parameter `{name}`: given more than once"
                )));
            }
        }
        Ok(Self(out))
    }

    /// Refuses any parameter not in `known` (with the list of those the endpoint takes).
    pub(crate) fn only(&self, known: &[&str]) -> Result<&Self, ApiError> {
        if let Some(name) = self.0.keys().find(|n| !known.contains(&n.as_str())) {
            let takes = if known.is_empty() {
                "this endpoint takes none".to_owned()
            } else {
                format!(
                    "this endpoint takes {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{name}`: {takes}"
            )));
        }
        Ok(self)
    }

    /// The raw value of `name`, if given.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Integer parameter `name` in `min..=max`, `default` when absent.
    pub(crate) fn int(
        &self,
        name: &str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Result<u64, ApiError> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        raw.trim()
            .parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid parameter `{name}`: expected an integer {min} to {max}, got `{}`",
                    shown(raw)
                ))
            })
    }

    /// Parameter `state`: a job state (`default` when absent).
    pub(crate) fn state(&self, default: JobState) -> Result<JobState, ApiError> {
        Ok(self.opt_state()?.unwrap_or(default))
    }

    /// Parameter `state` when given: a job state.
    pub(crate) fn opt_state(&self) -> Result<Option<JobState>, ApiError> {
        self.get("state").map(parse_state).transpose()
    }

    /// Text parameter `name`: 1 to `max` characters, required.
    pub(crate) fn text(&self, name: &str, max: usize) -> Result<&str, ApiError> {
        let expected = || format!("expected text of 1 to {max} characters");
        match self.get(name) {
            None => Err(ApiError::bad_request(format!(
                "missing parameter `{name}`: {}",
                expected()
            ))),
            Some(v) if v.is_empty() || v.chars().count() > max => {
                Err(ApiError::bad_request(format!(
                    "invalid parameter `{name}`: {}, got {} characters",
                    expected(),
                    v.chars().count()
                )))
            }
            Some(v) => Ok(v),
        }
    }
}

/// A job state named `s`, or a 400 naming `state` and the states.
pub(crate) fn parse_state(s: &str) -> Result<JobState, ApiError> {
    JobState::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid parameter `state`: expected one of {}, got `{}`",
            JobState::ALL.map(JobState::as_str).join(", "),
            shown(s)
        ))
    })
}

/// A value as an error message shows it: cut to 64 characters, control characters replaced.
fn shown(v: &str) -> String {
    let mut out: String = v
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if v.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// `s` URL-decoded (`%XX` and `+`), or `None` when it is not valid encoding or not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        r.expect_err("an error").message
    }

    #[test]
    fn integers_out_of_range_or_not_integers_name_the_parameter_and_its_range() {
        let p = Params::parse("limit=abc&offset=-1&minutes=1441&ok=5").unwrap();
        assert_eq!(
            error(p.int("limit", 0, 1000, 50)),
            "invalid parameter `limit`: expected an integer 0 to 1000, got `abc`"
        );
        assert!(error(p.int("offset", 0, 10, 0)).contains("`offset`"));
        assert!(error(p.int("minutes", 1, 1440, 60)).contains("1 to 1440"));
        assert_eq!(p.int("ok", 0, 10, 1).unwrap(), 5);
        assert_eq!(p.int("absent", 0, 10, 7).unwrap(), 7);
    }

    #[test]
    fn the_state_defaults_and_an_unknown_one_lists_the_states() {
        let none = Params::parse("").unwrap();
        assert_eq!(none.state(JobState::Queued).unwrap(), JobState::Queued);
        let p = Params::parse("state=cancelled").unwrap();
        assert_eq!(p.state(JobState::Queued).unwrap(), JobState::Cancelled);
        let bad = Params::parse("state=exploded").unwrap();
        let e = error(bad.state(JobState::Queued));
        assert!(e.starts_with("invalid parameter `state`"), "{e}");
        assert!(e.contains("cancelled") && e.contains("`exploded`"), "{e}");
    }

    #[test]
    fn encoding_duplicates_and_unknown_names_are_refused_by_name() {
        let p = Params::parse("q=a+b%20c%2Bd&state=dead").unwrap();
        assert_eq!(p.get("q"), Some("a b c+d"));
        assert!(p.only(&["q", "state"]).is_ok());
        let e = error(p.only(&["q"]));
        assert!(
            e.contains("unknown parameter `state`") && e.contains("`q`"),
            "{e}"
        );
        assert!(error(Params::parse("limit=1&limit=2")).contains("`limit`"));
        assert!(error(Params::parse("q=%zz")).contains("`q`"));
        assert!(error(p.text("missing", 10)).contains("missing parameter `missing`"));
        let long = Params::parse(&format!("q={}", "x".repeat(300))).unwrap();
        assert!(error(long.text("q", 256)).contains("1 to 256"));
    }
}
