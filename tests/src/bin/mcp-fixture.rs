//! `mcp-fixture`: a small stdio MCP server for the upstream faults the reference server lacks —
//! slow calls to kill it (or its worker) in the middle of, one tool with side effects and one
//! without, and a record of every call it started.
//!
//! Tools (`ms`: how long the call takes, default 0; `once`: only the first call of the tool that
//! the log records takes that long, later ones answer at once):
//! - `slow-write` — not read-only, not idempotent (a side effect: it appends to the log);
//! - `slow-read` — read-only and idempotent;
//! - `fail` — answers with a tool error (`isError: true`).
//!
//! Environment: `FIXTURE_LOG`, a file to which each call appends `<tool> <pid>` as it starts;
//! `FIXTURE_PID_FILE`, a file to which the process appends its pid at start.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};

fn append(var: &str, line: &str) {
    if let Some(path) = std::env::var_os(var) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the fixture's file");
        writeln!(file, "{line}").expect("write the fixture's file");
    }
}

struct Fixture;

fn tool(name: &'static str, description: &'static str, read_only: bool) -> Tool {
    let schema: Map<String, Value> = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "ms": {"type": "integer", "minimum": 0, "maximum": 600000},
            "once": {"type": "boolean"}
        },
        "additionalProperties": false
    }))
    .expect("a schema object");
    let mut annotations = ToolAnnotations::new();
    annotations.read_only_hint = Some(read_only);
    annotations.destructive_hint = Some(false);
    annotations.idempotent_hint = Some(read_only);
    annotations.open_world_hint = Some(false);
    Tool::new(name, description, Arc::new(schema)).annotate(annotations)
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("mcp-fixture", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![
            tool("slow-write", "Appends to the fixture's log, slowly", false),
            tool("slow-read", "Reads nothing, slowly", true),
            tool("fail", "Fails as a tool does (isError)", true),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if name == "fail" {
            return Ok(CallToolResult::error(vec![ContentBlock::text("it failed")]).into());
        }
        if name != "slow-write" && name != "slow-read" {
            return Err(ErrorData::invalid_params(format!("no tool {name}"), None));
        }
        let arg = |key: &str| request.arguments.as_ref().and_then(|a| a.get(key)).cloned();
        let once = arg("once").and_then(|v| v.as_bool()).unwrap_or(false);
        let earlier = std::env::var_os("FIXTURE_LOG")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|log| log.lines().any(|l| l.starts_with(&format!("{name} "))));
        append("FIXTURE_LOG", &format!("{name} {}", std::process::id()));
        let ms = if once && earlier {
            0
        } else {
            arg("ms").and_then(|v| v.as_u64()).unwrap_or(0)
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = context.ct.cancelled() => {
                append("FIXTURE_LOG", &format!("cancelled {name}"));
                return Err(ErrorData::internal_error("cancelled", None));
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("{name} done"))]).into())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    append("FIXTURE_PID_FILE", &std::process::id().to_string());
    let running = Fixture.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
