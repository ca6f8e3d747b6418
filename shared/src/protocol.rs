//! The daemon's WebSocket messages. `docs/protocol.md` is their reference, and the
//! `protocol_doc` integration test keeps it in step with this module: the ops a client may send
//! ([`ClientOp`]), the ops the daemon sends ([`ServerOp`]), the error codes ([`ErrorCode`]), the
//! close codes ([`CloseCode`]) and the hello refusals ([`HelloError`]) each have an `ALL` list
//! that the compiler checks against the enum, so a new variant cannot be left out of it.
//!
//! Inbound frames are parsed leniently and never panic: unknown fields are ignored (the stdio
//! shim's hello carries `protocolVersion`, `capabilities`, `clientInfo`), optional fields default,
//! and a malformed request becomes a [`RequestError`] carrying whatever `request_id`/`id` could be
//! read, so the error reply can echo them. Outbound frames are [`ServerMessage`]s, tagged by
//! `op`; every reply echoes the request's `request_id` and, for single-frame clients, its `id`
//! ([`ReplyTo`]). Both directions implement `Serialize` and `Deserialize`, so a Rust client (the
//! tests, the benchmark) speaks the protocol with the same types.
//!
//! Job ids of calls are derived here ([`call_job_id`]): per (session, request id) in streaming
//! mode, so a repeated `call_tool` attaches to its job instead of running it twice and two
//! sessions never share one; fresh and unguessable in single-frame mode ([`fresh_call_job_id`]).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::jobs::ToolContent;

/// Defines `ALL`, every variant of a field-less enum, from one list, together with a `match`
/// over the same list that has no wildcard arm: a variant missing from the list is a compile
/// error ("non-exhaustive patterns"), and one listed twice is an unreachable-pattern warning.
macro_rules! every_variant {
    ($ty:ident { $($variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in the order of the list (checked exhaustive at compile time).
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
        }

        const _: () = {
            /// Never called: it only makes the compiler check that the list is exhaustive.
            #[allow(dead_code)]
            fn listed_exhaustively(value: $ty) {
                match value {
                    $($ty::$variant)|+ => {}
                }
            }
        };
    };
}

/// The close codes the daemon sends, with their numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure (used for the idle timeout).
    Normal = 1000,
    /// The daemon is shutting down.
    GoingAway = 1001,
    /// Policy violation: a connection limit (total or per IP) was hit.
    Policy = 1008,
    /// An inbound frame exceeded `EXAI_WS_MAX_BYTES`.
    TooBig = 1009,
    /// The client stopped answering the keepalive pings (the connection cannot be trusted).
    Internal = 1011,
    /// The first frame was not JSON.
    InvalidMessage = 4000,
    /// The first frame was JSON but not a hello.
    MissingHello = 4001,
    /// No hello within the hello timeout, or the client left before sending one.
    HelloTimeout = 4002,
    /// The hello's token was wrong.
    Unauthorized = 4003,
}

every_variant!(CloseCode {
    Normal,
    GoingAway,
    Policy,
    TooBig,
    Internal,
    InvalidMessage,
    MissingHello,
    HelloTimeout,
    Unauthorized,
});

impl CloseCode {
    /// The number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The close code with this number, if the daemon sends it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

/// Normal closure (used for the idle timeout).
pub const CLOSE_NORMAL: u16 = CloseCode::Normal.code();
/// The daemon is shutting down.
pub const CLOSE_GOING_AWAY: u16 = CloseCode::GoingAway.code();
/// Policy violation: a connection limit (total or per IP) was hit.
pub const CLOSE_POLICY: u16 = CloseCode::Policy.code();
/// An inbound frame exceeded `EXAI_WS_MAX_BYTES`.
pub const CLOSE_TOO_BIG: u16 = CloseCode::TooBig.code();
/// The client stopped answering the keepalive pings.
pub const CLOSE_INTERNAL: u16 = CloseCode::Internal.code();
/// The first frame was not JSON.
pub const CLOSE_INVALID_MESSAGE: u16 = CloseCode::InvalidMessage.code();
/// The first frame was JSON but not a hello.
pub const CLOSE_MISSING_HELLO: u16 = CloseCode::MissingHello.code();
/// No hello within the hello timeout, or the client left before sending one.
pub const CLOSE_HELLO_TIMEOUT: u16 = CloseCode::HelloTimeout.code();
/// The hello's token was wrong.
pub const CLOSE_UNAUTHORIZED: u16 = CloseCode::Unauthorized.code();

/// The longest `request_id` accepted, and the longest `id` (its bytes as a string, else its
/// JSON text): a longer one is answered with `VALIDATION_ERROR` and never echoed.
pub const MAX_REQUEST_ID_LEN: usize = 256;
/// The shortest session id a client may choose.
pub const MIN_SESSION_ID_LEN: usize = 3;
/// The longest session id a client may choose.
pub const MAX_SESSION_ID_LEN: usize = 64;
/// The prefix of every tool-call job id.
pub const CALL_JOB_PREFIX: &str = "call-";

/// The error codes of error replies, with their wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is malformed (not an object, no `op`, a field of the wrong type, unknown op).
    InvalidRequest,
    /// The token was wrong.
    Unauthorized,
    /// No such call in this session.
    NotFound,
    /// The call's deadline passed (or a single-frame client's wait ran out).
    Timeout,
    /// The frame is not JSON, or the arguments do not satisfy the tool's schema.
    ValidationError,
    /// A limit was hit (calls in flight per session).
    OverCapacity,
    /// The daemon failed (e.g. Redis refused a command).
    InternalError,
    /// A dependency (Redis) is unreachable.
    ServiceUnavailable,
    /// No tool of that name.
    ToolNotFound,
    /// The tool ran and failed.
    ToolExecutionError,
    /// The tool's provider failed.
    ProviderError,
    /// The message breaks the protocol's sequence.
    ProtocolError,
    /// The call was cancelled.
    Cancelled,
}

every_variant!(ErrorCode {
    InvalidRequest,
    Unauthorized,
    NotFound,
    Timeout,
    ValidationError,
    OverCapacity,
    InternalError,
    ServiceUnavailable,
    ToolNotFound,
    ToolExecutionError,
    ProviderError,
    ProtocolError,
    Cancelled,
});

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::NotFound => "NOT_FOUND",
            Self::Timeout => "TIMEOUT",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::OverCapacity => "OVER_CAPACITY",
            Self::InternalError => "INTERNAL_ERROR",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::ToolNotFound => "TOOL_NOT_FOUND",
            Self::ToolExecutionError => "TOOL_EXECUTION_ERROR",
            Self::ProviderError => "PROVIDER_ERROR",
            Self::ProtocolError => "PROTOCOL_ERROR",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a hello was refused: the `error` of a `hello_ack` with `"ok":false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HelloError {
    /// The token was wrong (the connection is then closed with 4003).
    Unauthorized,
    /// The first frame was JSON but not a hello (the connection is then closed with 4001).
    MissingHello,
}

every_variant!(HelloError {
    Unauthorized,
    MissingHello,
});

impl HelloError {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::MissingHello => "missing_hello",
        }
    }
}

/// The ops a client may send, with their wire names. Any other op is answered with
/// `INVALID_REQUEST` ("Unknown operation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientOp {
    /// `hello`: the first frame of a connection (a second one is a `PROTOCOL_ERROR`).
    Hello,
    /// `list_tools`.
    ListTools,
    /// `call_tool`.
    CallTool,
    /// `tool_call`: the older clients' spelling of `call_tool`.
    ToolCall,
    /// `job_status`.
    JobStatus,
    /// `get_result`.
    GetResult,
    /// `cancel`.
    Cancel,
    /// `ping`.
    Ping,
    /// `health`.
    Health,
    /// `queue_stats`.
    QueueStats,
}

every_variant!(ClientOp {
    Hello,
    ListTools,
    CallTool,
    ToolCall,
    JobStatus,
    GetResult,
    Cancel,
    Ping,
    Health,
    QueueStats,
});

impl ClientOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::ListTools => "list_tools",
            Self::CallTool => "call_tool",
            Self::ToolCall => "tool_call",
            Self::JobStatus => "job_status",
            Self::GetResult => "get_result",
            Self::Cancel => "cancel",
            Self::Ping => "ping",
            Self::Health => "health",
            Self::QueueStats => "queue_stats",
        }
    }

    /// The op with this wire name, if it is one (names are case-sensitive).
    pub fn from_wire(op: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| o.as_str() == op)
    }

    /// Whether this op asks for a tool call (`call_tool` or `tool_call`).
    pub fn is_call(self) -> bool {
        matches!(self, Self::CallTool | Self::ToolCall)
    }
}

/// The ops of the frames the daemon sends: the `op` tag of each [`ServerMessage`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerOp {
    /// `hello_ack`.
    HelloAck,
    /// `list_tools_res`.
    ListToolsRes,
    /// `call_tool_ack`.
    CallToolAck,
    /// `progress`.
    Progress,
    /// `stream_chunk`.
    StreamChunk,
    /// `call_tool_res`.
    CallToolRes,
    /// `job_status_res`.
    JobStatusRes,
    /// `cancelled`.
    Cancelled,
    /// `pong`.
    Pong,
    /// `health_res`.
    HealthRes,
    /// `queue_stats_res`.
    QueueStatsRes,
    /// `error`.
    Error,
}

every_variant!(ServerOp {
    HelloAck,
    ListToolsRes,
    CallToolAck,
    Progress,
    StreamChunk,
    CallToolRes,
    JobStatusRes,
    Cancelled,
    Pong,
    HealthRes,
    QueueStatsRes,
    Error,
});

impl ServerOp {
    /// The wire name (what serde writes as the frame's `op`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HelloAck => "hello_ack",
            Self::ListToolsRes => "list_tools_res",
            Self::CallToolAck => "call_tool_ack",
            Self::Progress => "progress",
            Self::StreamChunk => "stream_chunk",
            Self::CallToolRes => "call_tool_res",
            Self::JobStatusRes => "job_status_res",
            Self::Cancelled => "cancelled",
            Self::Pong => "pong",
            Self::HealthRes => "health_res",
            Self::QueueStatsRes => "queue_stats_res",
            Self::Error => "error",
        }
    }
}

/// The `error` object of an error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// The code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// Structured detail (e.g. the failing path of an argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl WireError {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

// ----- ids ------------------------------------------------------------------------------------

/// Whether a client-chosen session id is acceptable: 3 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_session_id(s: &str) -> bool {
    (MIN_SESSION_ID_LEN..=MAX_SESSION_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A fresh, unguessable session id (32 hex digits).
pub fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A fresh, unguessable resume secret for a new session (32 hex digits, 128 random bits).
pub fn new_resume_secret() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The job id of the call `request_id` of session `session_id` (streaming mode):
/// `call-` + the first 32 hex digits of `sha256(session_id "\n" request_id)`. Deterministic, so a
/// repeated call finds its job; distinct per session, so two sessions never share one.
pub fn call_job_id(session_id: &str, request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(session_id.as_bytes());
    h.update(b"\n");
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(CALL_JOB_PREFIX.len() + 32);
    id.push_str(CALL_JOB_PREFIX);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A fresh, unguessable job id for a single-frame call (its client repeats one `id` on every
/// request, so the id cannot be derived from it).
pub fn fresh_call_job_id() -> String {
    format!("{CALL_JOB_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Whether `s` has the shape of a call job id (`call-` + 32 lowercase hex digits).
pub fn is_call_job_id(s: &str) -> bool {
    s.strip_prefix(CALL_JOB_PREFIX).is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

// ----- inbound --------------------------------------------------------------------------------

/// A string field that tolerates other JSON types by reading them as absent.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// The first frame of a connection. Its `Debug` output never shows the token.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hello {
    /// Always `hello`.
    pub op: String,
    /// The shared token (`EXAI_WS_TOKEN`); a non-string counts as absent.
    #[serde(
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<String>,
    /// The session to resume or name; invalid or absent → the daemon generates one.
    #[serde(
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_id: Option<String>,
    /// The `resume_secret` the `hello_ack` of `session_id` issued: needed to resume a session
    /// that exists; without it (or with a wrong one) the daemon opens a fresh session.
    #[serde(
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub resume_secret: Option<String>,
    /// What the client says it is (kept for logs; never interpreted).
    #[serde(rename = "clientInfo", skip_serializing_if = "Option::is_none")]
    pub client_info: Option<Value>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("op", &self.op)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("session_id", &self.session_id)
            .field(
                "resume_secret",
                &self.resume_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("client_info", &self.client_info)
            .finish()
    }
}

impl Hello {
    /// A hello with a token and an optional session id.
    pub fn new(token: Option<&str>, session_id: Option<&str>) -> Self {
        Self {
            op: "hello".to_owned(),
            token: token.map(str::to_owned),
            session_id: session_id.map(str::to_owned),
            resume_secret: None,
            client_info: None,
        }
    }
}

/// How the first frame of a connection parses.
#[derive(Debug, Clone, PartialEq)]
pub enum HelloFrame {
    /// A hello.
    Hello(Hello),
    /// Not JSON: close 4000.
    NotJson,
    /// JSON, but not an object with `"op":"hello"`: `missing_hello`, close 4001.
    NotHello,
}

/// Parses the first frame of a connection.
pub fn parse_hello(text: &str) -> HelloFrame {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return HelloFrame::NotJson;
    };
    if value.get("op").and_then(Value::as_str) != Some(ClientOp::Hello.as_str()) {
        return HelloFrame::NotHello;
    }
    match serde_json::from_value::<Hello>(value) {
        Ok(h) => HelloFrame::Hello(h),
        Err(_) => HelloFrame::NotHello,
    }
}

/// A request after the hello, with the ids its replies echo.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The `op` as sent.
    pub op: String,
    /// Where replies go.
    pub reply_to: ReplyTo,
    /// What is asked.
    pub request: Request,
}

impl Inbound {
    /// Whether this request is in single-frame mode: `id` without `request_id` (the stdio shim).
    pub fn single_frame(&self) -> bool {
        self.reply_to.request_id.is_none() && self.reply_to.id.is_some()
    }
}

/// The operations of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `list_tools`.
    ListTools,
    /// `call_tool` or `tool_call`.
    CallTool(CallTool),
    /// `job_status`.
    JobStatus,
    /// `get_result`.
    GetResult,
    /// `cancel`.
    Cancel,
    /// `ping`.
    Ping,
    /// `health`.
    Health,
    /// `queue_stats`.
    QueueStats,
    /// A second `hello`.
    Hello,
    /// Anything else (the op as sent).
    Unknown(String),
}

/// The body of a `call_tool` / `tool_call`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallTool {
    /// The tool name as sent (not yet normalised).
    pub name: String,
    /// The arguments (an empty object when absent or null).
    pub arguments: Value,
}

/// The fields of a `call_tool` request, as serde reads them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CallToolFields {
    name: Option<String>,
    tool: Option<ToolRef>,
    arguments: Option<Value>,
}

/// `tool` may be a name or an object with a `name`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolRef {
    Name(String),
    Object {
        #[serde(default)]
        name: Option<String>,
    },
}

/// A request that could not be understood; the reply echoes what could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// The `op`, when it could be read.
    pub op: Option<String>,
    /// Where the reply goes.
    pub reply_to: ReplyTo,
    /// The error to send.
    pub error: WireError,
}

impl RequestError {
    fn new(op: Option<String>, reply_to: ReplyTo, code: ErrorCode, message: String) -> Box<Self> {
        Box::new(Self {
            op,
            reply_to,
            error: WireError::new(code, message),
        })
    }

    /// The reply frame: a `call_tool_res` carrying the error for a call (clients wait for that
    /// op), an `error` frame otherwise.
    pub fn reply(&self) -> ServerMessage {
        let is_call = self
            .op
            .as_deref()
            .and_then(ClientOp::from_wire)
            .is_some_and(ClientOp::is_call);
        if is_call {
            ServerMessage::CallToolRes(CallToolRes::failed(
                self.reply_to.clone(),
                self.error.clone(),
            ))
        } else {
            ServerMessage::Error(ErrorFrame {
                reply_to: self.reply_to.clone(),
                error: self.error.clone(),
            })
        }
    }
}

/// Parses a request frame after the hello. Never panics, whatever `text` holds.
pub fn parse_request(text: &str) -> Result<Inbound, Box<RequestError>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Box::new(RequestError {
            op: None,
            reply_to: ReplyTo::default(),
            error: WireError::new(
                ErrorCode::ValidationError,
                "Invalid JSON: message could not be parsed",
            )
            .with_details(serde_json::json!({ "parse_error": e.to_string() })),
        })
    })?;
    let Value::Object(mut obj) = value else {
        return Err(RequestError::new(
            None,
            ReplyTo::default(),
            ErrorCode::InvalidRequest,
            "Invalid message: not a JSON object".to_owned(),
        ));
    };
    let id = obj.remove("id").filter(|v| !v.is_null());
    let op = obj.remove("op");
    let op = match op {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let id_len = |v: &Value| match v {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    };
    if id.as_ref().is_some_and(|v| id_len(v) > MAX_REQUEST_ID_LEN) {
        return Err(RequestError::new(
            op,
            ReplyTo::default(),
            ErrorCode::ValidationError,
            format!("Invalid message: id is longer than {MAX_REQUEST_ID_LEN} bytes"),
        ));
    }
    let request_id = match obj.remove("request_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID_LEN => Some(s),
        Some(Value::String(_)) => {
            return Err(RequestError::new(
                op,
                ReplyTo {
                    request_id: None,
                    id,
                },
                ErrorCode::ValidationError,
                format!("Invalid message: request_id is longer than {MAX_REQUEST_ID_LEN} bytes"),
            ));
        }
        Some(_) => {
            return Err(RequestError::new(
                op,
                ReplyTo {
                    request_id: None,
                    id,
                },
                ErrorCode::InvalidRequest,
                "Invalid message: request_id must be a string".to_owned(),
            ));
        }
    };
    let reply_to = ReplyTo { request_id, id };
    let Some(op) = op else {
        return Err(RequestError::new(
            None,
            reply_to,
            ErrorCode::InvalidRequest,
            "Invalid message: op is missing or not a string".to_owned(),
        ));
    };
    let Some(known) = ClientOp::from_wire(&op) else {
        return Ok(Inbound {
            reply_to,
            request: Request::Unknown(op.clone()),
            op,
        });
    };
    let request = match known {
        ClientOp::ListTools => Request::ListTools,
        ClientOp::CallTool | ClientOp::ToolCall => {
            let fields: CallToolFields =
                serde_json::from_value(Value::Object(obj)).map_err(|e| {
                    RequestError::new(
                        Some(op.clone()),
                        reply_to.clone(),
                        ErrorCode::InvalidRequest,
                        format!("Invalid message: {e}"),
                    )
                })?;
            let name = fields
                .name
                .filter(|n| !n.trim().is_empty())
                .or(match fields.tool {
                    Some(ToolRef::Name(n)) => Some(n),
                    Some(ToolRef::Object { name }) => name,
                    None => None,
                })
                .filter(|n| !n.trim().is_empty());
            let Some(name) = name else {
                return Err(RequestError::new(
                    Some(op),
                    reply_to,
                    ErrorCode::InvalidRequest,
                    "Invalid message: call_tool needs a non-empty string name (or tool.name)"
                        .to_owned(),
                ));
            };
            let arguments = match fields.arguments {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(v @ Value::Object(_)) => v,
                Some(_) => {
                    return Err(RequestError::new(
                        Some(op),
                        reply_to,
                        ErrorCode::InvalidRequest,
                        "Invalid message: arguments must be an object".to_owned(),
                    ));
                }
            };
            Request::CallTool(CallTool { name, arguments })
        }
        ClientOp::JobStatus => Request::JobStatus,
        ClientOp::GetResult => Request::GetResult,
        ClientOp::Cancel => Request::Cancel,
        ClientOp::Ping => Request::Ping,
        ClientOp::Health => Request::Health,
        ClientOp::QueueStats => Request::QueueStats,
        ClientOp::Hello => Request::Hello,
    };
    Ok(Inbound {
        op,
        reply_to,
        request,
    })
}

// ----- outbound -------------------------------------------------------------------------------

/// The ids a reply echoes: the request's `request_id`, and `id` for single-frame clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The request's `request_id` (in single-frame call replies: the job id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl ReplyTo {
    /// A reply to `request_id`.
    pub fn request(request_id: impl Into<String>) -> Self {
        Self {
            request_id: Some(request_id.into()),
            id: None,
        }
    }
}

/// Every frame the daemon sends, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to the hello.
    HelloAck(HelloAck),
    /// The tool listing.
    ListToolsRes(ListToolsRes),
    /// A call is durable in Redis.
    CallToolAck(CallToolAck),
    /// A call's progress (started, waiting, heartbeat).
    Progress(Progress),
    /// A piece of streamed model output.
    StreamChunk(StreamChunk),
    /// A call's result or error.
    CallToolRes(CallToolRes),
    /// A call's state.
    JobStatusRes(JobStatusRes),
    /// A cancel was carried out.
    Cancelled(Cancelled),
    /// The answer to `ping`.
    Pong(Pong),
    /// The answer to `health`.
    HealthRes(HealthRes),
    /// The answer to `queue_stats`.
    QueueStatsRes(QueueStatsRes),
    /// An error that is not a call's.
    Error(ErrorFrame),
}

impl ServerMessage {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // These types contain only strings, numbers and JSON values: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"op":"error","error":{{"code":"INTERNAL_ERROR","message":"{e}"}}}}"#)
        })
    }

    /// The frame's `op`.
    pub fn op(&self) -> ServerOp {
        match self {
            Self::HelloAck(_) => ServerOp::HelloAck,
            Self::ListToolsRes(_) => ServerOp::ListToolsRes,
            Self::CallToolAck(_) => ServerOp::CallToolAck,
            Self::Progress(_) => ServerOp::Progress,
            Self::StreamChunk(_) => ServerOp::StreamChunk,
            Self::CallToolRes(_) => ServerOp::CallToolRes,
            Self::JobStatusRes(_) => ServerOp::JobStatusRes,
            Self::Cancelled(_) => ServerOp::Cancelled,
            Self::Pong(_) => ServerOp::Pong,
            Self::HealthRes(_) => ServerOp::HealthRes,
            Self::QueueStatsRes(_) => ServerOp::QueueStatsRes,
            Self::Error(_) => ServerOp::Error,
        }
    }

    /// The `request_id` the frame carries, if any.
    pub fn request_id(&self) -> Option<&str> {
        let to = match self {
            Self::HelloAck(_) => return None,
            Self::ListToolsRes(m) => &m.reply_to,
            Self::CallToolAck(m) => &m.reply_to,
            Self::Progress(m) => &m.reply_to,
            Self::StreamChunk(m) => &m.reply_to,
            Self::CallToolRes(m) => &m.reply_to,
            Self::JobStatusRes(m) => &m.reply_to,
            Self::Cancelled(m) => &m.reply_to,
            Self::Pong(m) => &m.reply_to,
            Self::HealthRes(m) => &m.reply_to,
            Self::QueueStatsRes(m) => &m.reply_to,
            Self::Error(m) => &m.reply_to,
        };
        to.request_id.as_deref()
    }
}

/// `hello_ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// Whether the hello was accepted.
    pub ok: bool,
    /// The session (as given, or generated) when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When accepted: the secret that resumes this session (a later hello sends it with
    /// `session_id`). Issued with each new session; a resumed session keeps its secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
    /// Why the hello was refused (a [`HelloError`]: `unauthorized` or `missing_hello`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `list_tools_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListToolsRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// `{name, description, inputSchema}` per tool.
    pub tools: Vec<Value>,
}

/// `call_tool_ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallToolAck {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// Always true (a refused call gets a `call_tool_res` with an error instead).
    pub accepted: bool,
    /// The job id (for `get_result` by job id, and operators).
    pub job_id: String,
    /// Seconds until the call's deadline.
    pub timeout: f64,
    /// The tool (normalised name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// True when the request id had been used before in this session: the call attached to
    /// the existing job instead of creating one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// A human-readable note.
    #[serde(default)]
    pub message: String,
    /// `queued`, `running`, `waiting`, `retrying`, … (the call's state as the daemon sees it).
    #[serde(default)]
    pub state: String,
    /// When (Unix seconds).
    #[serde(default)]
    pub t: f64,
}

/// `stream_chunk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// The text.
    pub chunk: String,
}

/// `call_tool_res`: `outputs`, `result` (the same items) and `text` (joined), or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallToolRes {
    /// The request's ids (single-frame: `id`, and the job id as `request_id`).
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// The content items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<ToolContent>>,
    /// The same items (what the stdio shim reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Vec<ToolContent>>,
    /// The items' texts joined by newlines (what older clients prefer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// The job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The text was cut to keep the frame under 1 MiB; `get_result` returns all of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl CallToolRes {
    /// A successful result.
    pub fn success(reply_to: ReplyTo, outputs: Vec<ToolContent>) -> Self {
        let text = outputs
            .iter()
            .map(|o| o.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            reply_to,
            result: Some(outputs.clone()),
            outputs: Some(outputs),
            text: Some(text),
            error: None,
            job_id: None,
            truncated: false,
        }
    }

    /// A failed call.
    pub fn failed(reply_to: ReplyTo, error: WireError) -> Self {
        Self {
            reply_to,
            outputs: None,
            result: None,
            text: None,
            error: Some(error),
            job_id: None,
            truncated: false,
        }
    }

    /// Sets the job id.
    pub fn with_job_id(mut self, job_id: impl Into<String>) -> Self {
        self.job_id = Some(job_id.into());
        self
    }
}

/// The state of a call as `job_status_res` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Waiting to run (queued, scheduled, or waiting out a retry backoff).
    Queued,
    /// Running on a worker.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error (dead).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Still queued past its deadline: ended without running.
    Expired,
    /// No such call in this session (never made, or expired).
    Unknown,
}

every_variant!(CallState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
    Unknown,
});

/// `job_status_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatusRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// The call's state.
    pub state: CallState,
    /// Attempts started so far.
    #[serde(default)]
    pub attempt: u32,
    /// The job id, when there is a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// A queued job's place in line: 1 for the next job a worker takes. Absent when the job is
    /// not waiting, or deeper than the bounded search (`queue::POSITION_SCAN_MAX` jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelWas {
    /// The job was waiting and is now cancelled.
    Queued,
    /// The job was running; its worker was told to stop.
    Running,
    /// The job had already finished.
    Finished,
}

every_variant!(CancelWas {
    Queued,
    Running,
    Finished,
});

/// `cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// What the cancel found.
    pub was: CancelWas,
    /// The job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// `pong`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
}

/// `health_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// Whether the daemon can serve calls (Redis answered).
    pub ok: bool,
    /// Queues, semaphores, connections, uptime.
    pub health: Value,
}

/// `queue_stats_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatsRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// Counts per state of every queue, by queue name.
    pub queues: Value,
    /// Limit and use of every semaphore, by name.
    pub semaphores: Value,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// What went wrong.
    pub error: WireError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use serde_json::json;

    #[test]
    fn job_ids_are_per_session_and_deterministic() {
        let a = call_job_id("sess-a", "r-1");
        assert_eq!(a, call_job_id("sess-a", "r-1"));
        assert_ne!(a, call_job_id("sess-b", "r-1"));
        assert_ne!(a, call_job_id("sess-a", "r-2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(call_job_id("ab", "c"), call_job_id("a", "bc"));
        assert!(is_call_job_id(&a), "{a}");
        assert!(is_call_job_id(&fresh_call_job_id()));
        assert_ne!(fresh_call_job_id(), fresh_call_job_id());
        assert!(!is_call_job_id("call-xyz"));
        assert!(!is_call_job_id("r-1"));
    }

    #[test]
    fn session_ids() {
        assert!(valid_session_id("abc"));
        assert!(valid_session_id("A-b_9"));
        assert!(!valid_session_id("ab"));
        assert!(!valid_session_id(&"a".repeat(65)));
        assert!(!valid_session_id("a b c"));
        assert!(!valid_session_id("é-é"));
        assert!(valid_session_id(&new_session_id()));
    }

    #[test]
    fn the_shims_hello_with_extra_fields_parses() {
        let text = r#"{"op":"hello","protocolVersion":"2024-11-05","capabilities":{},
            "clientInfo":{"name":"exai-mcp-shim","version":"1.0.0"},"token":"t0k3n"}"#;
        let HelloFrame::Hello(h) = parse_hello(text) else {
            panic!("not a hello")
        };
        assert_eq!(h.token.as_deref(), Some("t0k3n"));
        assert!(
            !format!("{h:?}").contains("t0k3n"),
            "the token never reaches a log line"
        );
        assert_eq!(h.session_id, None);
        assert_eq!(parse_hello("nope"), HelloFrame::NotJson);
        assert_eq!(parse_hello(r#"{"op":"list_tools"}"#), HelloFrame::NotHello);
        assert_eq!(parse_hello("[1,2]"), HelloFrame::NotHello);
        let HelloFrame::Hello(h) = parse_hello(r#"{"op":"hello","token":5,"session_id":[]}"#)
        else {
            panic!("a hello with odd field types is still a hello")
        };
        assert_eq!((h.token, h.session_id), (None, None));
        let HelloFrame::Hello(h) =
            parse_hello(r#"{"op":"hello","session_id":"s-1","resume_secret":"s3cr3t"}"#)
        else {
            panic!("not a hello")
        };
        assert_eq!(h.resume_secret.as_deref(), Some("s3cr3t"));
        assert!(!format!("{h:?}").contains("s3cr3t"), "nor does the secret");
        assert_eq!(new_resume_secret().len(), 32);
        assert_ne!(new_resume_secret(), new_resume_secret());
    }

    #[test]
    fn both_call_shapes_parse() {
        let a = parse_request(
            r#"{"op":"call_tool","request_id":"r-1","name":"chat","arguments":{"prompt":"hi"}}"#,
        )
        .unwrap();
        let b = parse_request(r#"{"op":"tool_call","request_id":"r-1","tool":{"name":"chat"},"arguments":{"prompt":"hi"}}"#).unwrap();
        let c = parse_request(
            r#"{"op":"tool_call","request_id":"r-1","tool":"chat","arguments":{"prompt":"hi"}}"#,
        )
        .unwrap();
        for m in [&a, &b, &c] {
            assert_eq!(
                m.request,
                Request::CallTool(CallTool {
                    name: "chat".into(),
                    arguments: json!({"prompt": "hi"})
                })
            );
            assert!(!m.single_frame());
        }
        let shim = parse_request(r#"{"op":"call_tool","id":"call_1","name":"test_echo"}"#).unwrap();
        assert!(shim.single_frame());
        assert_eq!(shim.reply_to.id, Some(json!("call_1")));
        let Request::CallTool(c) = shim.request else {
            panic!()
        };
        assert_eq!(c.arguments, json!({}));
    }

    #[test]
    fn malformed_requests_say_why_and_echo_what_they_can() {
        let e = parse_request("{nope").unwrap_err();
        assert_eq!(e.error.code, ErrorCode::ValidationError);
        assert_eq!(
            serde_json::to_value(e.reply()).unwrap()["op"],
            json!("error")
        );
        let e = parse_request(r#"{"op":"call_tool","request_id":"r","arguments":[]}"#).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
        let reply = serde_json::to_value(e.reply()).unwrap();
        assert_eq!(reply["op"], "call_tool_res");
        assert_eq!(reply["request_id"], "r");
        let e = parse_request(r#"{"request_id":"r"}"#).unwrap_err();
        assert_eq!(e.reply_to.request_id.as_deref(), Some("r"));
        let e = parse_request(r#"{"op":"ping","request_id":7}"#).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
        let m = parse_request(r#"{"op":"frobnicate","request_id":"x"}"#).unwrap();
        assert_eq!(m.request, Request::Unknown("frobnicate".into()));
    }

    #[test]
    fn ids_longer_than_256_bytes_are_refused_and_not_echoed() {
        let ok = "é".repeat(128);
        let text = json!({"op":"ping","request_id": ok, "id": ok}).to_string();
        assert!(parse_request(&text).is_ok());
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        for text in [
            json!({"op":"ping","id": long}),
            json!({"op":"ping","id": [long]}),
            json!({"op":"ping","request_id": long, "id": 1}),
            json!({"op":"ping","request_id": "é".repeat(129)}),
        ] {
            let e = parse_request(&text.to_string()).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::ValidationError, "{text}");
            assert!(e.reply_to.request_id.is_none(), "{text}");
            assert!(!e.reply().to_json().contains(&long), "{text}");
        }
    }

    #[test]
    fn server_messages_have_the_wire_shape() {
        let res = ServerMessage::CallToolRes(CallToolRes::success(
            ReplyTo {
                request_id: Some("job".into()),
                id: Some(json!("call_1")),
            },
            vec![ToolContent::text("a"), ToolContent::text("b")],
        ));
        let v = serde_json::to_value(&res).unwrap();
        assert_eq!(
            v,
            json!({"op":"call_tool_res","request_id":"job","id":"call_1",
                   "outputs":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
                   "result":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
                   "text":"a\nb"})
        );
        let back: ServerMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, res);
        let err = ServerMessage::Error(ErrorFrame {
            reply_to: ReplyTo::request("r"),
            error: WireError::new(ErrorCode::InvalidRequest, "Unknown operation: x"),
        });
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"op":"error","request_id":"r","error":{"code":"INVALID_REQUEST","message":"Unknown operation: x"}})
        );
        let ack = ServerMessage::HelloAck(HelloAck {
            ok: false,
            session_id: None,
            resume_secret: None,
            error: Some("unauthorized".into()),
        });
        assert_eq!(
            ack.to_json(),
            r#"{"op":"hello_ack","ok":false,"error":"unauthorized"}"#
        );
    }

    /// One frame of each op. The `match` has no wildcard, so a new op needs a sample here.
    fn sample(op: ServerOp) -> ServerMessage {
        let to = || ReplyTo::request("r-1");
        match op {
            ServerOp::HelloAck => ServerMessage::HelloAck(HelloAck {
                ok: true,
                session_id: Some("s-1".into()),
                resume_secret: Some("0123456789abcdef0123456789abcdef".into()),
                error: None,
            }),
            ServerOp::ListToolsRes => ServerMessage::ListToolsRes(ListToolsRes {
                reply_to: to(),
                tools: vec![json!({"name": "test_echo"})],
            }),
            ServerOp::CallToolAck => ServerMessage::CallToolAck(CallToolAck {
                reply_to: to(),
                accepted: true,
                job_id: call_job_id("s-1", "r-1"),
                timeout: 300.0,
                name: Some("test_echo".into()),
                duplicate: false,
            }),
            ServerOp::Progress => ServerMessage::Progress(Progress {
                reply_to: to(),
                message: "Waiting for a worker...".into(),
                state: "queued".into(),
                t: 1.5,
            }),
            ServerOp::StreamChunk => ServerMessage::StreamChunk(StreamChunk {
                reply_to: to(),
                chunk: "Hel".into(),
            }),
            ServerOp::CallToolRes => ServerMessage::CallToolRes(CallToolRes::success(
                to(),
                vec![ToolContent::text("hi")],
            )),
            ServerOp::JobStatusRes => ServerMessage::JobStatusRes(JobStatusRes {
                reply_to: to(),
                state: CallState::Queued,
                attempt: 0,
                job_id: None,
                queue_position: Some(1),
            }),
            ServerOp::Cancelled => ServerMessage::Cancelled(Cancelled {
                reply_to: to(),
                was: CancelWas::Queued,
                job_id: None,
            }),
            ServerOp::Pong => ServerMessage::Pong(Pong { reply_to: to() }),
            ServerOp::HealthRes => ServerMessage::HealthRes(HealthRes {
                reply_to: to(),
                ok: true,
                health: json!({}),
            }),
            ServerOp::QueueStatsRes => ServerMessage::QueueStatsRes(QueueStatsRes {
                reply_to: to(),
                queues: json!({}),
                semaphores: json!({}),
            }),
            ServerOp::Error => ServerMessage::Error(ErrorFrame {
                reply_to: to(),
                error: WireError::new(ErrorCode::InvalidRequest, "Unknown operation: x"),
            }),
        }
    }

    #[test]
    fn every_server_op_is_the_op_its_frame_is_serialized_with() {
        for &op in ServerOp::ALL {
            let msg = sample(op);
            assert_eq!(msg.op(), op);
            let v = serde_json::to_value(&msg).unwrap();
            assert_eq!(v["op"], op.as_str(), "{op:?}");
            assert_eq!(serde_json::from_value::<ServerMessage>(v).unwrap(), msg);
        }
        let names: HashSet<&str> = ServerOp::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), ServerOp::ALL.len());
    }

    #[test]
    fn every_client_op_is_understood_by_the_parser() {
        for &op in ClientOp::ALL {
            assert_eq!(ClientOp::from_wire(op.as_str()), Some(op));
            let text = json!({"op": op.as_str(), "request_id": "r", "name": "test_echo"});
            let parsed = parse_request(&text.to_string()).unwrap();
            assert!(
                !matches!(parsed.request, Request::Unknown(_)),
                "{op:?} parses as an unknown op"
            );
            assert_eq!(
                matches!(parsed.request, Request::CallTool(_)),
                op.is_call(),
                "{op:?}"
            );
        }
        assert_eq!(ClientOp::from_wire("CALL_TOOL"), None);
        assert_eq!(ClientOp::from_wire("rotate_token"), None);
        let names: HashSet<&str> = ClientOp::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), ClientOp::ALL.len());
        // No op is spelled the same in both directions.
        assert!(ServerOp::ALL.iter().all(|o| !names.contains(o.as_str())));
    }

    #[test]
    fn codes_have_distinct_wire_names_and_numbers() {
        for &code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
            assert_eq!(
                serde_json::from_value::<ErrorCode>(json!(code.as_str())).unwrap(),
                code
            );
        }
        let codes: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());

        for &close in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(close.code()), Some(close));
        }
        let numbers: HashSet<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::from_code(1005), None);
        assert_eq!(
            [
                CLOSE_NORMAL,
                CLOSE_POLICY,
                CLOSE_TOO_BIG,
                CLOSE_UNAUTHORIZED
            ],
            [1000, 1008, 1009, 4003]
        );

        let refusals: HashSet<&str> = HelloError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(refusals.len(), HelloError::ALL.len());
        for states in [
            CallState::ALL
                .iter()
                .map(|s| serde_json::to_value(s).unwrap())
                .collect::<Vec<_>>(),
            CancelWas::ALL
                .iter()
                .map(|s| serde_json::to_value(s).unwrap())
                .collect(),
        ] {
            let distinct: HashSet<String> = states.iter().map(Value::to_string).collect();
            assert_eq!(distinct.len(), states.len());
        }
    }
}
