//! Fair share of the `tool_calls` queue across sessions or tenants: which fairness key a call
//! gets (`EXAI_FAIRNESS_KEY`) and the keys' weights (`EXAI_FAIRNESS_WEIGHTS`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The longest `tenant` a hello may name (bytes).
pub const MAX_TENANT_LEN: usize = 64;

/// The largest weight a fairness key may have.
pub const MAX_FAIRNESS_WEIGHT: u32 = 1000;

/// What a call's fairness key is (`EXAI_FAIRNESS_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FairnessKey {
    /// `session` (the default): the hello's `tenant` when it names one, else the session id.
    Session,
    /// `tenant`: the hello's `tenant` only; sessions without one share the key `""`.
    Tenant,
    /// `none`: no key; calls wait in one FIFO list.
    None,
}

impl FromStr for FairnessKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "session" => Ok(Self::Session),
            "tenant" => Ok(Self::Tenant),
            "none" => Ok(Self::None),
            other => Err(format!(
                "expected `session`, `tenant` or `none`, got `{other}`"
            )),
        }
    }
}

impl fmt::Display for FairnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Session => "session",
            Self::Tenant => "tenant",
            Self::None => "none",
        })
    }
}

impl FairnessKey {
    /// The fairness key of a call of session `session_id` whose hello named `tenant`; `None`
    /// when calls are not keyed.
    pub fn key_of<'a>(&self, session_id: &'a str, tenant: Option<&'a str>) -> Option<&'a str> {
        match self {
            Self::Session => Some(tenant.unwrap_or(session_id)),
            Self::Tenant => Some(tenant.unwrap_or("")),
            Self::None => None,
        }
    }
}

/// The weights of fairness keys (`EXAI_FAIRNESS_WEIGHTS`, `key=3,other=2`); a key not listed
/// weighs 1. A key of weight w gives up to w calls per turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FairnessWeights(BTreeMap<String, u32>);

impl FairnessWeights {
    /// The weight of key `key` (1 when not listed).
    pub fn of(&self, key: &str) -> u32 {
        self.0.get(key).copied().unwrap_or(1)
    }

    /// Whether no key has a weight of its own.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for FairnessWeights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, weight) = item
                .rsplit_once('=')
                .ok_or_else(|| format!("`{item}` is not `key=weight`"))?;
            let key = key.trim();
            if key.len() > MAX_TENANT_LEN.max(crate::protocol::MAX_SESSION_ID_LEN) {
                return Err(format!("key `{key}` is too long"));
            }
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{item}`: the weight must be a whole number"))?;
            if !(1..=MAX_FAIRNESS_WEIGHT).contains(&weight) {
                return Err(format!(
                    "`{item}`: the weight must be from 1 to {MAX_FAIRNESS_WEIGHT}"
                ));
            }
            if out.insert(key.to_owned(), weight).is_some() {
                return Err(format!("key `{key}` is listed twice"));
            }
        }
        Ok(Self(out))
    }
}

impl fmt::Display for FairnessWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(k, w)| format!("{k}={w}")).collect();
        f.write_str(&items.join(","))
    }
}

/// Fair share settings of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FairnessConfig {
    /// `EXAI_FAIRNESS_KEY` (`session`).
    pub key: FairnessKey,
    /// `EXAI_FAIRNESS_WEIGHTS` (empty: every key weighs 1).
    pub weights: FairnessWeights,
}

impl Default for FairnessConfig {
    fn default() -> Self {
        Self {
            key: FairnessKey::Session,
            weights: FairnessWeights::default(),
        }
    }
}

/// Whether `tenant` is a valid hello `tenant`: 1 to [`MAX_TENANT_LEN`] bytes of ASCII
/// letters, digits, `-`, `_`, `.`, `:` and `@`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_LEN
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_default_to_one() {
        let w: FairnessWeights = "a=3, b=2,".parse().unwrap();
        assert_eq!((w.of("a"), w.of("b"), w.of("c")), (3, 2, 1));
        assert_eq!(w.to_string(), "a=3,b=2");
        assert!("a".parse::<FairnessWeights>().is_err());
        assert!("a=0".parse::<FairnessWeights>().is_err());
        assert!("a=1001".parse::<FairnessWeights>().is_err());
        assert!("a=1,a=2".parse::<FairnessWeights>().is_err());
        assert!("".parse::<FairnessWeights>().unwrap().is_empty());
    }

    #[test]
    fn the_key_follows_the_choice() {
        let s = FairnessKey::Session;
        assert_eq!(s.key_of("sess", None), Some("sess"));
        assert_eq!(s.key_of("sess", Some("acme")), Some("acme"));
        assert_eq!(FairnessKey::Tenant.key_of("sess", None), Some(""));
        assert_eq!(FairnessKey::None.key_of("sess", Some("acme")), None);
        assert_eq!("TENANT".parse::<FairnessKey>(), Ok(FairnessKey::Tenant));
        assert!("user".parse::<FairnessKey>().is_err());
    }

    #[test]
    fn tenants_are_bounded_and_plain() {
        assert!(valid_tenant("acme-1.eu@x"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a b"));
        assert!(!valid_tenant(&"a".repeat(MAX_TENANT_LEN + 1)));
    }
}
