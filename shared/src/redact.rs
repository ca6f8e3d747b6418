//! Redaction of key-like strings in text that came from the other side of a provider call (an
//! error body, a message) before it reaches a client or a job record: `sk-…` tokens, the value
//! after `Bearer`, and the configured secrets themselves (`KIMI_API_KEY`, `GLM_API_KEY`,
//! `SUPABASE_SERVICE_ROLE_KEY`, `EXAI_WS_TOKEN`, `EXAI_ADMIN_TOKEN`), each replaced with
//! [`REDACTED`].
//!
//! The configured secrets are registered once per process by [`crate::config::Config::from_vars`],
//! so every provider error built afterwards is redacted without threading the configuration
//! through each call site.

use std::sync::RwLock;

/// What a redacted string shows.
pub const REDACTED: &str = "[redacted]";

/// The shortest configured secret that is redacted by value (shorter ones would match ordinary
/// words; the start-up checks refuse tokens that short anyway).
const MIN_SECRET_LEN: usize = 8;

/// The shortest run after `sk-` taken for a key (so "sk-learn" in prose stays).
const MIN_SK_TAIL: usize = 16;

/// The shortest value after `Bearer` taken for a credential (so "the bearer of" stays).
const MIN_BEARER_LEN: usize = 8;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds secrets whose values are redacted from now on (blank and very short ones are ignored).
pub fn register_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let mut known = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for secret in secrets {
        let secret = secret.trim();
        if secret.len() >= MIN_SECRET_LEN && !known.iter().any(|k| k == secret) {
            known.push(secret.to_owned());
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    known.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with key-like strings and the registered secrets replaced by [`REDACTED`].
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    {
        let known = SECRETS.read().unwrap_or_else(|e| e.into_inner());
        for secret in known.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
    }
    redact_patterns(&out)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Replaces `sk-<16+ key characters>` and the value after `Bearer ` (case-insensitive).
fn redact_patterns(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let boundary = prev.is_none_or(|p| !is_key_char(p));
        if boundary && rest.starts_with("sk-") {
            let tail = rest[3..]
                .find(|ch: char| !is_key_char(ch))
                .unwrap_or(rest.len() - 3);
            if tail >= MIN_SK_TAIL {
                out.push_str(REDACTED);
                rest = &rest[3 + tail..];
                prev = Some('-');
                continue;
            }
        }
        if boundary
            && rest.len() >= 6
            && rest.is_char_boundary(6)
            && rest[..6].eq_ignore_ascii_case("bearer")
        {
            let after = &rest[6..];
            let spaces = after.len() - after.trim_start_matches([' ', '\t']).len();
            if spaces > 0 {
                let value = &after[spaces..];
                let len = value
                    .find(|ch: char| ch.is_whitespace() || matches!(ch, '"' | '\'' | ',' | ';'))
                    .unwrap_or(value.len());
                if len >= MIN_BEARER_LEN && value[..len] != *REDACTED {
                    out.push_str(&rest[..6 + spaces]);
                    out.push_str(REDACTED);
                    rest = &value[len..];
                    prev = Some(']');
                    continue;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sk_tokens_and_bearer_values_are_redacted() {
        assert_eq!(
            redact("Invalid key sk-abcdefghijklmnop1234, check it"),
            "Invalid key [redacted], check it"
        );
        assert_eq!(
            redact(r#"{"auth":"Bearer eyJhbGciOi.x.y","n":1}"#),
            r#"{"auth":"Bearer [redacted]","n":1}"#
        );
        assert_eq!(
            redact("authorization: bearer   abcdefgh12"),
            "authorization: bearer   [redacted]"
        );
        // Prose and short look-alikes stay.
        assert_eq!(
            redact("uses sk-learn and task-sk-1"),
            "uses sk-learn and task-sk-1"
        );
        assert_eq!(
            redact("risk-abcdefghijklmnopqrstu"),
            "risk-abcdefghijklmnopqrstu"
        );
        assert_eq!(redact("the bearer of news"), "the bearer of news");
        assert_eq!(redact("naïve text ✓"), "naïve text ✓");
    }

    #[test]
    fn registered_secrets_are_redacted_by_value() {
        register_secrets(["unit-test-secret-value-42", "short", "  "]);
        assert_eq!(
            redact("key unit-test-secret-value-42 was refused"),
            "key [redacted] was refused"
        );
        assert_eq!(redact("short stays"), "short stays");
    }
}
