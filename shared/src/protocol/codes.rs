//! The codes of the protocol: close codes, error codes, the ops each side sends, hello
//! refusals, and the error every reply can carry ([`WireError`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// An upstream MCP call stopped mid-way (its worker or its server went away) and its tool is
    /// not idempotent, so it was not run again: it may or may not have taken effect.
    Interrupted,
    /// The session has spent its token budget (`EXAI_SESSION_TOKEN_BUDGET`): its new provider
    /// calls are refused.
    BudgetExceeded,
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
    Interrupted,
    BudgetExceeded,
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
            Self::Interrupted => "INTERRUPTED",
            Self::BudgetExceeded => "BUDGET_EXCEEDED",
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
    /// The hello's `tenant` is not a valid tenant (the connection is then closed with 4000).
    InvalidTenant,
}

every_variant!(HelloError {
    Unauthorized,
    MissingHello,
    InvalidTenant,
});

impl HelloError {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::MissingHello => "missing_hello",
            Self::InvalidTenant => "invalid_tenant",
        }
    }
}

/// Which token problem refused a hello: the `detail` of a `hello_ack` whose `error` is
/// `unauthorized` (the close code is 4003 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HelloDetail {
    /// The daemon requires a token and the hello carried none (or one that is not a string).
    TokenMissing,
    /// The hello carried a token that is not the daemon's.
    TokenWrong,
}

every_variant!(HelloDetail {
    TokenMissing,
    TokenWrong,
});

impl HelloDetail {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenMissing => "token_missing",
            Self::TokenWrong => "token_wrong",
        }
    }

    /// The detail with this wire string, if it is one.
    pub fn from_wire(detail: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|d| d.as_str() == detail)
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
