//! The HTTP client of the Streamable HTTP upstreams: rmcp's reqwest client, with one correction.
//!
//! A server that has forgotten a session must answer 404, and rmcp then initialises a new
//! session and sends the request again. Some servers answer 400 with a JSON-RPC error that has
//! no id instead (the reference server does: "Bad Request: No valid session ID provided"); rmcp
//! cannot route that error to the request, which then never completes. [`SessionAware`] reads
//! such an answer to a request that carried a session id as the expired session it means.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, JsonRpcError, JsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use sse_stream::{Error as SseError, Sse};

/// rmcp's reqwest client, reading an id-less error to a request with a session as an expired
/// session (see the module docs).
#[derive(Clone)]
pub(crate) struct SessionAware(reqwest_mcp::Client);

impl SessionAware {
    /// A client that follows no redirects (a redirected POST could lose its body, a
    /// cross-origin one would carry the session and the configured headers elsewhere).
    pub(crate) fn new() -> anyhow::Result<Self> {
        let client = reqwest_mcp::Client::builder()
            .redirect(reqwest_mcp::redirect::Policy::none())
            .build()?;
        Ok(Self(client))
    }
}

type PostResult = Result<
    StreamableHttpPostResponse,
    StreamableHttpError<<reqwest_mcp::Client as StreamableHttpClient>::Error>,
>;

/// An id-less JSON-RPC error answering a request that carried a session: the session is gone.
fn expired_if_forgotten(attached: bool, response: PostResult) -> PostResult {
    match response {
        Ok(StreamableHttpPostResponse::Json(
            JsonRpcMessage::Error(JsonRpcError {
                id: None, error, ..
            }),
            _,
        )) if attached => {
            tracing::debug!(error = %error.message, "the server no longer knows the session");
            Err(StreamableHttpError::SessionExpired)
        }
        other => other,
    }
}

impl StreamableHttpClient for SessionAware {
    type Error = <reqwest_mcp::Client as StreamableHttpClient>::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> PostResult {
        let attached = session_id.is_some();
        let response = self
            .0
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await;
        expired_if_forgotten(attached, response)
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> PostResult {
        let attached = session_id.is_some();
        let response = self
            .0
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await;
        expired_if_forgotten(attached, response)
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
