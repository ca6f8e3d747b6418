//! The upstream MCP servers file (`EXAI_MCP_SERVERS`): the JSON shape MCP clients already use.
//!
//! Either top-level object is read: `mcpServers` (Claude Desktop and Code, Cursor) or `servers`
//! (VS Code); both may be present, with distinct names. Each entry is a stdio server
//! (`command`, `args`, `env`, `cwd`) or a Streamable HTTP one (`url`, `headers`); `type`
//! (`stdio`, `http`, `streamable-http`) may say which, else `command` or `url` does. Keys a
//! client uses that mean nothing here (`inputs`, `envFile`, …) are ignored; `"disabled": true`
//! skips an entry. Ours: `prefix`, what the server's tool names are shown under (default
//! `<name>__`).
//!
//! `${VAR}`, `${VAR:-default}` and `${env:VAR}` in `command`, `args`, `env`, `cwd`, `url` and
//! `headers` are replaced from the worker's environment; an unset variable without a default
//! is an error, as is VS Code's `${input:…}` (nobody is there to ask).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// `EXAI_MCP_<NAME>_MAX_INFLIGHT` when it is unset.
pub const DEFAULT_MAX_INFLIGHT: u32 = 8;

/// The longest server name.
pub const MAX_NAME_LEN: usize = 64;

/// The environment a stdio server inherits from the worker, besides its own `env`: what a shell
/// needs to find and run a program, nothing that could hold a secret (as the MCP SDKs do).
pub const INHERITED_ENV: [&str; 8] = [
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR",
];

/// One upstream MCP server.
#[derive(Clone)]
pub struct UpstreamServer {
    /// Its name in the file (letters, digits, `_`, `-`).
    pub name: String,
    /// What its tools' names are shown under (`<name>__` unless the entry sets `prefix`).
    pub prefix: String,
    /// How to reach it.
    pub transport: Transport,
    /// `EXAI_MCP_<NAME>_MAX_INFLIGHT` ([`DEFAULT_MAX_INFLIGHT`]): its calls in flight, fleet-wide.
    pub max_inflight: u32,
}

impl UpstreamServer {
    /// The leased semaphore that bounds its calls in flight across the fleet: `mcp.<name>`.
    pub fn semaphore(&self) -> String {
        semaphore_name(&self.name)
    }

    /// The variable that sets its limit: `EXAI_MCP_<NAME>_MAX_INFLIGHT` (upper case, `-` as `_`).
    pub fn limit_var(&self) -> String {
        limit_var(&self.name)
    }
}

impl std::fmt::Debug for UpstreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamServer")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("transport", &self.transport)
            .field("max_inflight", &self.max_inflight)
            .finish()
    }
}

/// The semaphore of upstream `name`.
pub fn semaphore_name(name: &str) -> String {
    format!("mcp.{name}")
}

/// The limit variable of upstream `name`.
pub fn limit_var(name: &str) -> String {
    format!(
        "EXAI_MCP_{}_MAX_INFLIGHT",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// How an upstream is reached.
#[derive(Clone)]
pub enum Transport {
    /// A child process the worker starts, speaking MCP on its stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its environment besides [`INHERITED_ENV`] (values may be secrets).
        env: BTreeMap<String, SecretString>,
        /// Its working directory (the worker's when unset).
        cwd: Option<PathBuf>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The endpoint's URL.
        url: String,
        /// Headers sent with every request (values may be secrets, e.g. `Authorization`).
        headers: BTreeMap<String, SecretString>,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdio {
                command, args, env, ..
            } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            Self::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", url)
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Transport {
    /// `stdio` or `http`, for logs and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdio { .. } => "stdio",
            Self::Http { .. } => "http",
        }
    }

    /// The stdio server's environment: [`INHERITED_ENV`] from `lookup`, then its own `env`.
    pub fn child_env(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let Self::Stdio { env, .. } = self else {
            return Vec::new();
        };
        let mut out: BTreeMap<String, String> = INHERITED_ENV
            .iter()
            .filter_map(|k| lookup(k).map(|v| ((*k).to_owned(), v)))
            .collect();
        for (k, v) in env {
            out.insert(k.clone(), v.expose_secret().to_owned());
        }
        out.into_iter().collect()
    }
}

/// The file as written.
#[derive(Deserialize)]
struct File {
    #[serde(rename = "mcpServers", default)]
    mcp_servers: BTreeMap<String, Entry>,
    #[serde(default)]
    servers: BTreeMap<String, Entry>,
}

/// One entry as written.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    prefix: Option<String>,
    #[serde(default)]
    disabled: bool,
}

/// Reads and checks the file at `path`; `lookup` reads the environment (for `${VAR}` and the
/// limits). The error says what is wrong and where.
pub fn load(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<UpstreamServer>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, lookup).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses and checks a servers file's text.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<UpstreamServer>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not a servers file: {e}"))?;
    let mut out: Vec<UpstreamServer> = Vec::new();
    for (name, entry) in file.mcp_servers.into_iter().chain(file.servers) {
        if entry.disabled {
            continue;
        }
        if out.iter().any(|s| s.name == name) {
            return Err(format!(
                "server `{name}` is named in both `mcpServers` and `servers`"
            ));
        }
        let server = server(&name, entry, lookup).map_err(|e| format!("server `{name}`: {e}"))?;
        out.push(server);
    }
    let mut prefixes: Vec<&str> = out.iter().map(|s| s.prefix.as_str()).collect();
    prefixes.sort_unstable();
    if let Some(w) = prefixes.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("two servers share the prefix `{}`", w[0]));
    }
    Ok(out)
}

fn server(
    name: &str,
    entry: Entry,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<UpstreamServer, String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Err(format!(
            "the name must be 1 to {MAX_NAME_LEN} letters, digits, `_` or `-`"
        ));
    }
    let prefix = entry.prefix.unwrap_or_else(|| format!("{name}__"));
    if prefix.len() > MAX_NAME_LEN
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "`prefix` must be at most {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`"
        ));
    }
    let x = |field: &str, s: &str| expand(s, lookup).map_err(|e| format!("`{field}`: {e}"));
    let kind = match (entry.kind.as_deref(), &entry.command, &entry.url) {
        (Some("stdio"), ..) | (None, Some(_), None) => "stdio",
        (Some("http" | "streamable-http" | "streamableHttp"), ..) | (None, None, Some(_)) => "http",
        (Some("sse"), ..) => {
            return Err(
                "the legacy SSE transport is not supported; use the server's Streamable HTTP \
                 endpoint (`\"type\": \"http\"`)"
                    .to_owned(),
            );
        }
        (Some(other), ..) => {
            return Err(format!(
                "unknown `type` `{other}` (expected `stdio` or `http`)"
            ));
        }
        (None, Some(_), Some(_)) => {
            return Err("has both `command` and `url`; set `type`".to_owned());
        }
        (None, None, None) => return Err("needs `command` (stdio) or `url` (http)".to_owned()),
    };
    let transport = if kind == "stdio" {
        let command = entry
            .command
            .as_deref()
            .ok_or("a stdio server needs `command`")?;
        Transport::Stdio {
            command: x("command", command)?,
            args: entry
                .args
                .iter()
                .map(|a| x("args", a))
                .collect::<Result<_, _>>()?,
            env: entry
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), SecretString::from(x("env", v)?))))
                .collect::<Result<_, String>>()?,
            cwd: entry
                .cwd
                .as_deref()
                .map(|c| x("cwd", c).map(PathBuf::from))
                .transpose()?,
        }
    } else {
        let url = x(
            "url",
            entry.url.as_deref().ok_or("an http server needs `url`")?,
        )?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "`url` must be an http:// or https:// URL, got `{url}`"
            ));
        }
        Transport::Http {
            url,
            headers: entry
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), SecretString::from(x("headers", v)?))))
                .collect::<Result<_, String>>()?,
        }
    };
    let var = limit_var(name);
    let max_inflight = match lookup(&var).as_deref().map(str::trim) {
        None | Some("") => DEFAULT_MAX_INFLIGHT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{var}: `{raw}` is not a number greater than zero")),
        },
    };
    Ok(UpstreamServer {
        name: name.to_owned(),
        prefix,
        transport,
        max_inflight,
    })
}

/// Replaces `${VAR}`, `${VAR:-default}` and `${env:VAR}` in `s`.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{s}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.starts_with("input:") {
            return Err(format!(
                "`${{{inner}}}` asks for input, which a worker cannot; use an environment variable"
            ));
        }
        let name = name.strip_prefix("env:").unwrap_or(name);
        let value = lookup(name)
            .filter(|v| !v.is_empty())
            .or_else(|| default.map(str::to_owned))
            .ok_or_else(|| format!("`${{{inner}}}`: {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("t0k".to_owned()),
            "PATH" => Some("/usr/bin".to_owned()),
            "EXAI_MCP_REMOTE_API_MAX_INFLIGHT" => Some("3".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn reads_both_shapes_with_expansion_and_limits() {
        let servers = parse(
            r#"{"mcpServers": {"everything": {"command": "npx", "args": ["-y", "${PKG:-server-everything}"],
                                "env": {"KEY": "${env:TOKEN}"}}},
                "servers": {"remote-api": {"type": "http", "url": "http://127.0.0.1:1/mcp",
                            "headers": {"Authorization": "Bearer ${TOKEN}"}, "prefix": "r."}},
                "inputs": []}"#,
            &env,
        )
        .unwrap();
        assert_eq!(servers.len(), 2);
        let ev = &servers[0];
        assert_eq!(
            (ev.name.as_str(), ev.prefix.as_str()),
            ("everything", "everything__")
        );
        assert_eq!(ev.max_inflight, DEFAULT_MAX_INFLIGHT);
        assert_eq!(ev.semaphore(), "mcp.everything");
        let Transport::Stdio { args, .. } = &ev.transport else {
            panic!("stdio expected")
        };
        assert_eq!(args, &["-y", "server-everything"]);
        let child = ev.transport.child_env(&env);
        assert!(child.contains(&("KEY".to_owned(), "t0k".to_owned())));
        assert!(child.contains(&("PATH".to_owned(), "/usr/bin".to_owned())));
        assert!(
            !format!("{ev:?}").contains("t0k"),
            "secrets stay out of Debug"
        );
        let remote = &servers[1];
        assert_eq!((remote.prefix.as_str(), remote.max_inflight), ("r.", 3));
        let Transport::Http { headers, .. } = &remote.transport else {
            panic!("http expected")
        };
        assert_eq!(headers["Authorization"].expose_secret(), "Bearer t0k");
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let refused = |text: &str| parse(text, &env).unwrap_err();
        assert!(
            refused(r#"{"mcpServers": {"a": {"type": "sse", "url": "http://x/sse"}}}"#)
                .contains("SSE")
        );
        assert!(
            refused(r#"{"mcpServers": {"a": {"command": "x", "env": {"K": "${NOPE}"}}}}"#)
                .contains("NOPE is not set")
        );
        assert!(
            refused(r#"{"servers": {"a": {"command": "x", "args": ["${input:key}"]}}}"#)
                .contains("input")
        );
        assert!(refused(r#"{"mcpServers": {"a b": {"command": "x"}}}"#).contains("name"));
        assert!(refused(r#"{"mcpServers": {"a": {}}}"#).contains("needs `command`"));
        assert!(refused(r#"{"mcpServers": {"a": {"url": "ftp://x"}}}"#).contains("http://"));
        assert!(
            refused(
                r#"{"mcpServers": {"a": {"command": "x"}}, "servers": {"a": {"command": "y"}}}"#
            )
            .contains("both")
        );
        assert!(refused(r#"{"mcpServers": {"a": {"command": "x", "prefix": "p"}, "b": {"command": "y", "prefix": "p"}}}"#).contains("prefix"));
        assert!(refused("[1]").contains("not a servers file"));
        let zero = |name: &str| (name == "EXAI_MCP_A_MAX_INFLIGHT").then(|| "0".to_owned());
        assert!(
            parse(r#"{"mcpServers": {"a": {"command": "x"}}}"#, &zero)
                .unwrap_err()
                .contains("EXAI_MCP_A_MAX_INFLIGHT")
        );
        assert!(
            parse(
                r#"{"mcpServers": {"a": {"command": "x", "disabled": true}}}"#,
                &env
            )
            .unwrap()
            .is_empty()
        );
    }
}
