//! The tool registry: every tool a client may call, with its description, its JSON input schema,
//! and what running it needs (a provider and the semaphores that bound it).
//!
//! The daemon lists the tools (`list_tools`) and validates every call's arguments against the
//! tool's schema before anything is enqueued; the worker looks the same names up to execute.
//! The names are stable wire names (docs/protocol.md, "Tools"); a trailing `_EXAI-WS`, `-EXAI-WS`,
//! `_EXAI_WS` or `-EXAI_WS` that some clients append is stripped by [`normalize_name`].
//!
//! Validation uses compiled JSON-schema validators ([`Tool::validate`]), built once per process.
//! [`doc`] renders the registry for people: each tool's arguments, and docs/tools.md.

pub mod doc;

use std::sync::LazyLock;

use serde_json::{Value, json};

use crate::providers::moonshot::{FILE_ID_PATTERN, PURPOSE_FILE_EXTRACT, PURPOSES};

/// The suffixes some clients append to tool names; one trailing occurrence is stripped.
pub const NAME_SUFFIXES: [&str; 4] = ["_EXAI-WS", "-EXAI-WS", "_EXAI_WS", "-EXAI_WS"];

/// `chat`: one chat completion on the model's provider.
pub const CHAT: &str = "chat";
/// `kimi_upload_files`: upload files under the allowed roots to Moonshot.
pub const KIMI_UPLOAD_FILES: &str = "kimi_upload_files";
/// `kimi_upload_bytes`: upload inline bytes to Moonshot.
pub const KIMI_UPLOAD_BYTES: &str = "kimi_upload_bytes";
/// `kimi_chat_with_files`: ask a Kimi model about uploaded files.
pub const KIMI_CHAT_WITH_FILES: &str = "kimi_chat_with_files";
/// `kimi_download_file`: read an uploaded file back from Supabase Storage.
pub const KIMI_DOWNLOAD_FILE: &str = "kimi_download_file";
/// `kimi_manage_files`: list, delete and clean up uploaded files.
pub const KIMI_MANAGE_FILES: &str = "kimi_manage_files";
/// `test_echo`: returns its arguments; no provider, no semaphore.
pub const TEST_ECHO: &str = "test_echo";

/// The model `chat` uses when the call names none.
pub const DEFAULT_CHAT_MODEL: &str = "kimi-k2-0905-preview";
/// The model `kimi_chat_with_files` uses when the call names none.
pub const DEFAULT_FILES_MODEL: &str = "kimi-k2-0905-preview";
/// The longest `test_echo` may be asked to take (`delay_ms`).
pub const ECHO_MAX_DELAY_MS: u64 = 60_000;
/// The name of the semaphore every provider call holds besides its provider's.
pub const GLOBAL_SEMAPHORE: &str = "global";

/// A model provider; each has its own fleet-wide semaphore of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Moonshot (Kimi): models `kimi-*` and `moonshot-*`.
    Kimi,
    /// Zhipu GLM: models `glm-*`.
    Glm,
}

impl Provider {
    /// The provider's name, which is also its semaphore's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kimi => "kimi",
            Self::Glm => "glm",
        }
    }

    /// The provider serving `model`, by prefix (case-insensitive); `None` for an unknown family.
    pub fn for_model(model: &str) -> Option<Self> {
        let m = model.trim().to_ascii_lowercase();
        if m.starts_with("kimi-") || m.starts_with("moonshot-") {
            Some(Self::Kimi)
        } else if m.starts_with("glm-") {
            Some(Self::Glm)
        } else {
            None
        }
    }
}

/// A tool's MCP annotations: hints for a client about what calling it does (MCP
/// `ToolAnnotations`; every field is set, so a client's defaults never apply). Hints, not
/// guarantees: a client trusts them as far as it trusts this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    /// `readOnlyHint`: the call changes nothing (a provider may still be billed).
    pub read_only: bool,
    /// `destructiveHint`: the call may remove or overwrite something.
    pub destructive: bool,
    /// `idempotentHint`: calling again with the same arguments has no further effect.
    pub idempotent: bool,
    /// `openWorldHint`: the call reaches outside the deployment (a model provider).
    pub open_world: bool,
}

impl Hints {
    /// Reads only, from a model provider (chat).
    const PROVIDER_READ: Self = Self {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: true,
    };
    /// Reads only, inside the deployment.
    const LOCAL_READ: Self = Self {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    };

    /// The hints as MCP `annotations`.
    pub fn to_json(self) -> Value {
        json!({
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        })
    }
}

/// What a tool needs from the fleet to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing: no provider, no semaphore.
    Nothing,
    /// Always this provider.
    Provider(Provider),
    /// The provider of the `model` argument, else of the given default model.
    ModelProvider(&'static str),
}

/// One registered tool.
pub struct Tool {
    /// The wire name.
    pub name: &'static str,
    /// What it does, for `list_tools`.
    pub description: &'static str,
    /// The JSON schema its `arguments` must satisfy (`inputSchema` in `list_tools`).
    pub input_schema: Value,
    /// Arguments of a typical call, for docs/tools.md (a test checks they satisfy the schema).
    pub example: Value,
    /// The JSON schema of its result, for tools whose result is one JSON object
    /// (`outputSchema` in `list_tools`; MCP clients get it as `structuredContent` too).
    pub output_schema: Option<Value>,
    /// What calling it does, for MCP clients (`annotations` in `list_tools`).
    pub hints: Hints,
    needs: Needs,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

/// Why a call's arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid arguments for {tool}: {path}: {message}")]
pub struct ArgumentError {
    /// The tool.
    pub tool: String,
    /// The JSON pointer of the first failing value (`""` is the arguments object itself).
    pub path: String,
    /// What is wrong there.
    pub message: String,
    /// Every failure found, as `(path, message)`, the first one included (at most 10).
    pub all: Vec<(String, String)>,
}

/// The most validation failures reported for one call.
const MAX_REPORTED_ERRORS: usize = 10;

impl Tool {
    fn new(
        name: &'static str,
        description: &'static str,
        schema: Value,
        example: Value,
        hints: Hints,
        needs: Needs,
    ) -> Self {
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("the input schema of tool `{name}` is invalid: {e}"));
        Self {
            name,
            description,
            input_schema: schema,
            example,
            output_schema: None,
            hints,
            needs,
            validator,
        }
    }

    /// The same tool with an output schema.
    fn with_output(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Checks `arguments` against the input schema; the error names the failing path.
    pub fn validate(&self, arguments: &Value) -> Result<(), ArgumentError> {
        check(&self.validator, self.name, arguments)
    }

    /// The provider a call with these (valid) arguments runs on, if any.
    pub fn provider(&self, arguments: &Value) -> Option<Provider> {
        match self.needs {
            Needs::Nothing => None,
            Needs::Provider(p) => Some(p),
            Needs::ModelProvider(default) => {
                let model = arguments
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or(default);
                Provider::for_model(model).or_else(|| Provider::for_model(default))
            }
        }
    }

    /// The semaphores a call with these arguments holds while it runs: `global` plus its
    /// provider's, or none for a tool that calls no provider.
    pub fn semaphores(&self, arguments: &Value) -> Vec<&'static str> {
        match self.provider(arguments) {
            Some(p) => vec![GLOBAL_SEMAPHORE, p.as_str()],
            None => Vec::new(),
        }
    }

    /// The tool as `list_tools` (and MCP `tools/list`) shows it: `{name, description,
    /// inputSchema, annotations}`, and `outputSchema` when it has one.
    pub fn listing(&self) -> Value {
        let mut listing = json!({
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
            "annotations": self.hints.to_json(),
        });
        if let Some(output) = &self.output_schema {
            listing["outputSchema"] = output.clone();
        }
        listing
    }
}

/// Checks `arguments` of tool `name` with its compiled input schema; the error names the first
/// failing path and lists up to ten failures.
pub fn check(
    validator: &jsonschema::Validator,
    name: &str,
    arguments: &Value,
) -> Result<(), ArgumentError> {
    let all: Vec<(String, String)> = validator
        .iter_errors(arguments)
        .take(MAX_REPORTED_ERRORS)
        .map(|e| {
            let path = e.instance_path().to_string();
            (path, e.to_string())
        })
        .collect();
    match all.first() {
        None => Ok(()),
        Some((path, message)) => Err(ArgumentError {
            tool: name.to_owned(),
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.clone()
            },
            message: message.clone(),
            all,
        }),
    }
}

/// Strips one trailing `_EXAI-WS` / `-EXAI-WS` / `_EXAI_WS` / `-EXAI_WS` and surrounding
/// whitespace from a client's tool name.
pub fn normalize_name(name: &str) -> &str {
    let name = name.trim();
    NAME_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The tool called `name` (normalised first), if it exists.
pub fn find(name: &str) -> Option<&'static Tool> {
    let name = normalize_name(name);
    TOOLS.iter().find(|t| t.name == name)
}

/// Every registered tool, in listing order.
pub fn all() -> &'static [Tool] {
    &TOOLS
}

/// The most tools [`closest`] names.
const MAX_CLOSEST: usize = 3;

/// The registered tools whose names are close to `name` (a name that is no tool), closest
/// first: the ones fewest edits away, when that is within a quarter of its length (at least
/// two edits), and one more edit; else the ones that contain it. Empty when none is close.
pub fn closest(name: &str) -> Vec<&'static str> {
    closest_in(name, TOOLS.iter().map(|t| t.name))
}

/// [`closest`] among `names` (the registered tools and the upstream MCP tools, say).
pub fn closest_in<'a>(name: &str, names: impl Iterator<Item = &'a str> + Clone) -> Vec<&'a str> {
    let wanted = normalize_name(name).to_ascii_lowercase();
    let limit = (wanted.chars().count() / 4).max(2);
    let mut near: Vec<(usize, &'a str)> = names
        .clone()
        .map(|n| (strsim::levenshtein(&wanted, n), n))
        .filter(|(distance, _)| *distance <= limit)
        .collect();
    near.sort();
    if let Some(&(best, _)) = near.first() {
        near.retain(|(distance, _)| *distance <= best + 1);
    } else if wanted.len() >= 3 {
        near = names
            .filter(|n| n.contains(wanted.as_str()))
            .map(|n| (0, n))
            .collect();
        near.sort();
    }
    near.into_iter().take(MAX_CLOSEST).map(|(_, n)| n).collect()
}

/// The pattern every `model` argument must match: a known provider family. No inline flags such
/// as `(?i)`: MCP clients validate arguments against these schemas with ECMA/Python regex
/// engines, which reject them.
const MODEL_PATTERN: &str = "^(kimi|moonshot|glm)-[A-Za-z0-9._-]+$";
const KIMI_MODEL_PATTERN: &str = "^(kimi|moonshot)-[A-Za-z0-9._-]+$";

/// The schema of one Moonshot file id: only what can be one URL path segment as it is
/// ([`FILE_ID_PATTERN`]), so `.`, `..` or `a/b` never reach a provider URL.
fn file_id_schema(description: &str) -> Value {
    json!({"type": "string", "pattern": FILE_ID_PATTERN, "minLength": 1, "maxLength": 128,
           "description": description})
}

/// The schema of an upload's `purpose`: exactly what Moonshot accepts on upload, so a purpose it
/// would refuse (such as the original tool's `assistants`) is refused before anything is enqueued.
fn purpose_schema() -> Value {
    json!({"type": "string", "enum": PURPOSES, "default": PURPOSE_FILE_EXTRACT,
           "description": "Moonshot file purpose; file-extract makes the text readable by chat."})
}

static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    vec![
        Tool::new(
            CHAT,
            "One chat completion on the model's provider (kimi-*/moonshot-* models run on \
             Moonshot, glm-* on GLM). Streams the answer while it is generated.",
            json!({
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "minLength": 1, "maxLength": 100000,
                               "description": "The user message."},
                    "model": {"type": "string", "pattern": MODEL_PATTERN, "maxLength": 100,
                              "default": DEFAULT_CHAT_MODEL,
                              "description": "kimi-*, moonshot-* or glm-* model name."},
                    "temperature": {"type": "number", "minimum": 0.0, "maximum": 1.0,
                                    "description": "Sampling temperature (the provider's default when absent)."},
                    "system_prompt": {"type": "string", "maxLength": 100000,
                                      "description": "A system message sent before the prompt."},
                    "file_ids": {"type": "array", "items": file_id_schema("A Moonshot file id."),
                                 "maxItems": 50,
                                 "description": "Moonshot file ids whose text is added to the context."}
                }
            }),
            json!({"prompt": "Summarise the plot of Hamlet in two sentences."}),
            Hints::PROVIDER_READ,
            Needs::ModelProvider(DEFAULT_CHAT_MODEL),
        ),
        Tool::new(
            KIMI_UPLOAD_FILES,
            "Upload files (paths under the daemon's allowed roots) to Moonshot; returns per \
             file {filename, file_id, sha256, size_bytes, deduplicated, storage_status}.",
            json!({
                "type": "object",
                "required": ["files"],
                "additionalProperties": false,
                "properties": {
                    "files": {"type": "array", "minItems": 1, "maxItems": 100,
                              "items": {"type": "string", "minLength": 1, "maxLength": 4096},
                              "description": "Absolute paths of files beneath one of the daemon's upload roots (EXAI_UPLOAD_ROOTS), as plain strings."},
                    "purpose": purpose_schema()
                }
            }),
            json!({"files": ["/srv/exai/uploads/report.pdf"]}),
            Hints {
                read_only: false,
                destructive: false,
                idempotent: true,
                open_world: true,
            },
            Needs::Provider(Provider::Kimi),
        ),
        Tool::new(
            KIMI_UPLOAD_BYTES,
            "Upload one file sent inline (base64) to Moonshot, for clients not on the \
             daemon's machine; returns {filename, file_id, sha256, size_bytes, deduplicated, \
             storage_status}.",
            json!({
                "type": "object",
                "required": ["filename", "content_base64"],
                "additionalProperties": false,
                "properties": {
                    "filename": {"type": "string", "minLength": 1, "maxLength": 255,
                                 "description": "The file's name (no directory)."},
                    "content_base64": {"type": "string", "minLength": 1,
                                       "description": "The file's bytes, base64 (at most EXAI_MAX_UPLOAD_BYTES once decoded)."},
                    "purpose": purpose_schema()
                }
            }),
            json!({"filename": "notes.txt", "content_base64": "aGVsbG8gd29ybGQK"}),
            Hints {
                read_only: false,
                destructive: false,
                idempotent: true,
                open_world: true,
            },
            Needs::Provider(Provider::Kimi),
        ),
        Tool::new(
            KIMI_CHAT_WITH_FILES,
            "Ask a Kimi model about uploaded files: fetches each file's extracted text and \
             sends it with the prompt.",
            json!({
                "type": "object",
                "required": ["prompt", "file_ids"],
                "additionalProperties": false,
                "properties": {
                    "prompt": {"type": "string", "minLength": 1, "maxLength": 100000,
                               "description": "The question about the files."},
                    "file_ids": {"type": "array", "minItems": 1, "maxItems": 50,
                                 "items": file_id_schema("A Moonshot file id."),
                                 "description": "Moonshot file ids (from kimi_upload_files or kimi_upload_bytes)."},
                    "model": {"type": "string", "pattern": KIMI_MODEL_PATTERN, "maxLength": 100,
                              "default": DEFAULT_FILES_MODEL,
                              "description": "kimi-* or moonshot-* model name."},
                    "temperature": {"type": "number", "minimum": 0.0, "maximum": 1.0,
                                    "default": 0.3, "description": "Sampling temperature."}
                }
            }),
            json!({"prompt": "What are the main findings?", "file_ids": ["d2k8f3a1b9c7"]}),
            Hints::PROVIDER_READ,
            Needs::Provider(Provider::Kimi),
        ),
        Tool::new(
            KIMI_DOWNLOAD_FILE,
            "Read an uploaded file back from Supabase Storage (the durable copy), by Moonshot \
             file_id or sha256; returns JSON {file_id, filename, sha256, size_bytes, \
             content_base64}.",
            json!({
                "type": "object",
                "additionalProperties": false,
                "anyOf": [{"required": ["file_id"]}, {"required": ["sha256"]}],
                "properties": {
                    "file_id": file_id_schema("The Moonshot file id."),
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                               "description": "The SHA-256 of the file's bytes, 64 lowercase hex digits."}
                }
            }),
            json!({"file_id": "d2k8f3a1b9c7"}),
            Hints::LOCAL_READ,
            Needs::Nothing,
        )
        .with_output(json!({
            "type": "object",
            "properties": {
                "file_id": {"type": "string"},
                "filename": {"type": "string"},
                "sha256": {"type": "string"},
                "size_bytes": {"type": "integer"},
                "content_base64": {"type": "string"}
            }
        })),
        Tool::new(
            KIMI_MANAGE_FILES,
            "Manage uploaded files: list, delete (file_id), cleanup_orphaned, cleanup_expired; \
             dry_run reports without removing.",
            json!({
                "type": "object",
                "required": ["operation"],
                "additionalProperties": false,
                "properties": {
                    "operation": {"type": "string",
                                  "enum": ["list", "delete", "cleanup_orphaned", "cleanup_expired"],
                                  "description": "What to do; all but list need EXAI_CLIENT_FILE_ADMIN."},
                    "file_id": file_id_schema("The Moonshot file id to delete (operation delete)."),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100,
                              "description": "The most files list returns."},
                    "dry_run": {"type": "boolean", "default": false,
                                "description": "Report what would be removed, remove nothing."}
                },
                "if": {"properties": {"operation": {"const": "delete"}}},
                "then": {"required": ["file_id"]}
            }),
            json!({"operation": "list", "limit": 20}),
            Hints {
                read_only: false,
                destructive: true,
                idempotent: true,
                open_world: true,
            },
            Needs::Provider(Provider::Kimi),
        ),
        Tool::new(
            TEST_ECHO,
            "Return the arguments as JSON text, after delay_ms milliseconds if given (the job \
             checks cancellation while it waits). No provider, no semaphore: for health \
             checks, chaos tests and benchmarks.",
            json!({
                "type": "object",
                "additionalProperties": true,
                "properties": {
                    "delay_ms": {"type": "integer", "minimum": 0, "maximum": ECHO_MAX_DELAY_MS,
                                 "description": "Milliseconds to wait before answering."}
                }
            }),
            json!({"text": "hello"}),
            Hints::LOCAL_READ,
            Needs::Nothing,
        )
        // The result is the arguments object itself.
        .with_output(json!({"type": "object", "additionalProperties": true})),
    ]
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seven_tools_of_the_protocol_are_registered_and_their_schemas_compile() {
        let names: Vec<&str> = all().iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                CHAT,
                KIMI_UPLOAD_FILES,
                KIMI_UPLOAD_BYTES,
                KIMI_CHAT_WITH_FILES,
                KIMI_DOWNLOAD_FILE,
                KIMI_MANAGE_FILES,
                TEST_ECHO
            ]
        );
        for t in all() {
            let l = t.listing();
            assert_eq!(l["name"], t.name);
            assert_eq!(l["inputSchema"]["type"], "object");
            assert!(l["annotations"]["readOnlyHint"].is_boolean(), "{}", t.name);
            if let Some(output) = &t.output_schema {
                // MCP (2025-11-25) requires an object schema for structured results.
                assert_eq!(output["type"], "object", "{}", t.name);
                jsonschema::validator_for(output).unwrap();
            }
        }
        assert!(find(TEST_ECHO).unwrap().hints.read_only);
        assert!(find(KIMI_MANAGE_FILES).unwrap().hints.destructive);
    }

    #[test]
    fn suffixes_are_stripped_once() {
        assert_eq!(normalize_name("chat_EXAI-WS"), "chat");
        assert_eq!(normalize_name("chat-EXAI-WS"), "chat");
        assert_eq!(normalize_name("chat_EXAI_WS"), "chat");
        assert_eq!(normalize_name("chat-EXAI_WS"), "chat");
        assert_eq!(normalize_name(" test_echo "), "test_echo");
        assert_eq!(normalize_name("chat_EXAI-WS_EXAI-WS"), "chat_EXAI-WS");
        assert!(find("test_echo-EXAI_WS").is_some());
        assert!(find("nope").is_none());
    }

    #[test]
    fn the_closest_names_are_a_few_edits_away_or_contain_the_name() {
        assert_eq!(closest("kimi_upload_file"), [KIMI_UPLOAD_FILES]);
        assert_eq!(closest("test-echo"), [TEST_ECHO]);
        assert_eq!(closest("Chat"), [CHAT]);
        assert_eq!(closest("upload"), [KIMI_UPLOAD_BYTES, KIMI_UPLOAD_FILES]);
        assert!(closest("list_tools").is_empty());
        assert!(closest("zzz").is_empty());
    }

    #[test]
    fn every_example_satisfies_its_schema() {
        for t in all() {
            assert!(t.example.is_object(), "{}", t.name);
            if let Err(e) = t.validate(&t.example) {
                panic!("the example of {} is refused: {e}", t.name);
            }
        }
    }

    #[test]
    fn chat_runs_on_the_models_provider() {
        let chat = find(CHAT).unwrap();
        let p = |args: Value| chat.provider(&args);
        assert_eq!(p(json!({"prompt": "x"})), Some(Provider::Kimi));
        assert_eq!(
            p(json!({"prompt": "x", "model": "moonshot-v1-8k"})),
            Some(Provider::Kimi)
        );
        assert_eq!(
            p(json!({"prompt": "x", "model": "glm-4.5"})),
            Some(Provider::Glm)
        );
        assert_eq!(
            chat.semaphores(&json!({"prompt": "x", "model": "GLM-4.5"})),
            ["global", "glm"]
        );
        let echo = find(TEST_ECHO).unwrap();
        assert!(echo.semaphores(&json!({})).is_empty());
    }

    #[test]
    fn validation_names_the_failing_path() {
        let chat = find(CHAT).unwrap();
        assert!(chat.validate(&json!({"prompt": "hi"})).is_ok());
        let err = chat
            .validate(&json!({"prompt": "hi", "temperature": "hot"}))
            .unwrap_err();
        assert_eq!(err.path, "/temperature");
        let err = chat.validate(&json!({})).unwrap_err();
        assert_eq!(err.path, "/");
        assert!(err.message.contains("prompt"), "{}", err.message);
        let err = chat
            .validate(&json!({"prompt": "hi", "model": "gpt-4o"}))
            .unwrap_err();
        assert_eq!(err.path, "/model");

        let manage = find(KIMI_MANAGE_FILES).unwrap();
        assert!(manage.validate(&json!({"operation": "list"})).is_ok());
        assert!(manage.validate(&json!({"operation": "delete"})).is_err());
        assert!(
            manage
                .validate(&json!({"operation": "delete", "file_id": "f"}))
                .is_ok()
        );
        let download = find(KIMI_DOWNLOAD_FILE).unwrap();
        assert!(download.validate(&json!({})).is_err());
        assert!(download.validate(&json!({"file_id": "abc"})).is_ok());
        let long = "a".repeat(129);
        for bad in [".", "..", "a/b", long.as_str()] {
            assert_eq!(
                download
                    .validate(&json!({"file_id": bad}))
                    .unwrap_err()
                    .path,
                "/file_id",
                "{bad:?}"
            );
            assert_eq!(
                manage
                    .validate(&json!({"operation": "delete", "file_id": bad}))
                    .unwrap_err()
                    .path,
                "/file_id"
            );
            let with_files = find(KIMI_CHAT_WITH_FILES).unwrap();
            assert_eq!(
                with_files
                    .validate(&json!({"prompt": "p", "file_ids": ["ok", bad]}))
                    .unwrap_err()
                    .path,
                "/file_ids/1"
            );
            assert_eq!(
                chat.validate(&json!({"prompt": "p", "file_ids": [bad]}))
                    .unwrap_err()
                    .path,
                "/file_ids/0"
            );
        }

        let upload = find(KIMI_UPLOAD_BYTES).unwrap();
        let args = |purpose: &str| json!({"filename": "a.txt", "content_base64": "YQ==", "purpose": purpose});
        for accepted in PURPOSES {
            assert!(upload.validate(&args(accepted)).is_ok(), "{accepted}");
        }
        assert_eq!(
            upload.validate(&args("assistants")).unwrap_err().path,
            "/purpose"
        );
        let files = find(KIMI_UPLOAD_FILES).unwrap();
        assert_eq!(
            files
                .validate(&json!({"files": ["/a"], "purpose": "assistants"}))
                .unwrap_err()
                .path,
            "/purpose"
        );

        let echo = find(TEST_ECHO).unwrap();
        assert!(echo.validate(&json!({"anything": [1, 2]})).is_ok());
        assert_eq!(
            echo.validate(&json!({"delay_ms": 60001})).unwrap_err().path,
            "/delay_ms"
        );
        assert!(echo.validate(&json!("not an object")).is_err());
    }
}
