//! What clients send: the hello and the requests, parsed leniently.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::*;

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
    /// The tenant the session's calls belong to, for fair share (`EXAI_FAIRNESS_KEY`): 1 to 64
    /// ASCII letters, digits, `-`, `_`, `.`, `:`, `@`; a non-string counts as absent.
    #[serde(
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant: Option<String>,
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
            .field("tenant", &self.tenant)
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
            tenant: None,
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
