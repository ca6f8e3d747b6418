//! `exai-call`: one tool call over the daemon's WebSocket protocol, from a shell, or the list of
//! the daemon's tools.
//!
//! ```text
//! EXAI_WS_TOKEN=… exai-call --url ws://127.0.0.1:8079 test_echo '{"text":"hello"}'
//! exai-call --list
//! ```
//!
//! Sends the hello, one `call_tool` in streaming mode, prints `stream_chunk` text to stdout as it
//! arrives and progress to stderr, then the result's text. `--list` (or the tool name
//! `list_tools`) sends the `list_tools` op instead and prints each tool with its arguments
//! (`--json`: the daemon's answer as it is). Exits 0 on a result, 1 on an error result, 2 when
//! the daemon could not be reached, refused the hello or broke the protocol.
//!
//! The URL and token come from the flags, else the environment (`EXAI_WS_URL`,
//! `EXAI_WS_TOKEN`), else the settings file of a stack `scripts/up` started (`data/run/env` in
//! the current directory or a parent, or `EXAI_RUN_ENV`).

use std::process::ExitCode;

use clap::Parser;
use exai_shared::config::run_env;
use exai_shared::protocol::HelloDetail;
use exai_shared::tools::doc;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The flags. The command's name and description are set here rather than taken from the
/// crate's, which are the daemon's.
#[derive(Parser, Debug)]
#[command(
    name = "exai-call",
    version,
    about = "Call one tool through an EXAI daemon and print its result, or list the daemon's \
             tools (--list). The URL and token of a stack scripts/up started are read from its \
             data/run/env.",
    long_about = None
)]
struct Args {
    /// The daemon's WebSocket URL.
    #[arg(long, env = "EXAI_WS_URL", default_value = "ws://127.0.0.1:8079")]
    url: String,
    /// The daemon's token (EXAI_WS_TOKEN).
    #[arg(long, env = "EXAI_WS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Resume this session (to collect a result with the same --request-id after a disconnect);
    /// needs the session's --resume-secret.
    #[arg(long)]
    session_id: Option<String>,
    /// The resume secret the session's first call printed (`session … resume-secret …`).
    #[arg(long, requires = "session_id")]
    resume_secret: Option<String>,
    /// The call's request id (default: a fresh one).
    #[arg(long)]
    request_id: Option<String>,
    /// Print every frame received, as JSON lines, instead of the text.
    #[arg(long)]
    raw: bool,
    /// List the daemon's tools with their arguments instead of calling one.
    #[arg(long, conflicts_with_all = ["tool", "arguments"])]
    list: bool,
    /// With --list: print the daemon's answer (`list_tools_res`) as JSON.
    #[arg(long, requires = "list")]
    json: bool,
    /// The tool to call, e.g. test_echo, chat, kimi_upload_files (`list_tools`: as --list).
    #[arg(required_unless_present = "list")]
    tool: Option<String>,
    /// The tool's arguments as a JSON object.
    #[arg(default_value = "{}")]
    arguments: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // The settings of a stack scripts/up started, before the flags read the environment.
    match run_env::load() {
        Ok(Some(file)) => {
            if let Some(warning) = file.warning() {
                eprintln!("exai-call: {warning}");
            }
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("exai-call: {e}");
            return ExitCode::from(2);
        }
    }
    let args = Args::parse();
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exai-call: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let list = args.list || args.tool.as_deref() == Some("list_tools");
    let arguments: Value = serde_json::from_str(&args.arguments)
        .map_err(|e| anyhow::anyhow!("the arguments are not JSON: {e}"))?;
    anyhow::ensure!(arguments.is_object(), "the arguments must be a JSON object");
    let (mut ws, _) = tokio_tungstenite::connect_async(args.url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.url))?;

    let mut hello = json!({"op": "hello", "clientInfo": {"name": "exai-call"}});
    if let Some(token) = &args.token {
        hello["token"] = json!(token);
    }
    if let Some(session) = &args.session_id {
        hello["session_id"] = json!(session);
    }
    if let Some(secret) = &args.resume_secret {
        hello["resume_secret"] = json!(secret);
    }
    ws.send(Message::text(hello.to_string())).await?;
    let ack = next_json(&mut ws).await?;
    if ack.get("ok") != Some(&Value::Bool(true)) {
        anyhow::bail!("{}", hello_refused(&ack, args.token.is_some()));
    }
    if list {
        return list_tools(&mut ws, args.json).await;
    }
    let session = ack["session_id"].as_str().unwrap_or_default().to_owned();
    let secret = ack["resume_secret"].as_str().unwrap_or_default();
    eprintln!("session {session} resume-secret {secret}");
    if let Some(asked) = &args.session_id
        && *asked != session
    {
        eprintln!("exai-call: session {asked} was not resumed (wrong or missing --resume-secret)");
    }

    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(|| format!("call-{}", uuid_like()));
    let tool = args.tool.as_deref().unwrap_or_default();
    let call = json!({"op": "call_tool", "request_id": request_id, "name": tool,
        "arguments": arguments});
    ws.send(Message::text(call.to_string())).await?;

    let mut streamed = false;
    loop {
        let frame = next_json(&mut ws).await?;
        if args.raw {
            println!("{frame}");
        }
        match frame["op"].as_str().unwrap_or_default() {
            "call_tool_ack" => eprintln!("accepted as job {}", frame["job_id"]),
            "progress" if !args.raw => eprintln!("… {}", frame["message"].as_str().unwrap_or("")),
            "stream_chunk" if !args.raw => {
                streamed = true;
                print!("{}", frame["chunk"].as_str().unwrap_or(""));
                std::io::Write::flush(&mut std::io::stdout())?;
            }
            "call_tool_res" => {
                if let Some(err) = frame.get("error").filter(|e| !e.is_null()) {
                    eprintln!(
                        "error {}: {}",
                        err["code"],
                        err["message"].as_str().unwrap_or_default()
                    );
                    if err["code"] == "TOOL_NOT_FOUND" {
                        eprintln!("(exai-call --list shows the tools and their arguments)");
                    }
                    return Ok(ExitCode::from(1));
                }
                // Streamed output was printed as it came; the result repeats it.
                if streamed {
                    println!();
                } else if !args.raw {
                    println!("{}", frame["text"].as_str().unwrap_or_default());
                }
                let _ = ws.close(None).await;
                return Ok(ExitCode::SUCCESS);
            }
            "error" => {
                eprintln!("error: {frame}");
                return Ok(ExitCode::from(1));
            }
            _ => {}
        }
    }
}

/// What to tell the user about a refused hello: which token problem it was and what to do.
fn hello_refused(ack: &Value, sent_token: bool) -> String {
    const FIX: &str = "set EXAI_WS_TOKEN (or pass --token) to the daemon's token; for a stack \
                       scripts/up started, run exai-call under its directory (it reads \
                       data/run/env) or load it: set -a; . data/run/env; set +a";
    let error = ack["error"].as_str().unwrap_or_default();
    if error != "unauthorized" {
        return format!("the daemon refused the hello: {ack}");
    }
    // A daemon older than the `detail` field: what was sent tells the case apart.
    let detail = ack["detail"]
        .as_str()
        .and_then(HelloDetail::from_wire)
        .unwrap_or(if sent_token {
            HelloDetail::TokenWrong
        } else {
            HelloDetail::TokenMissing
        });
    match detail {
        HelloDetail::TokenMissing => {
            format!("the daemon requires a token and none was sent: {FIX}")
        }
        HelloDetail::TokenWrong => format!(
            "the daemon refused the token (it is not the daemon's; scripts/up makes a new one at \
             each start unless EXAI_WS_TOKEN is set): {FIX}"
        ),
    }
}

/// `--list`: sends `list_tools` and prints the answer, as JSON or one block per tool.
async fn list_tools<S>(ws: &mut S, as_json: bool) -> anyhow::Result<ExitCode>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    ws.send(Message::text(
        json!({"op": "list_tools", "request_id": "list"}).to_string(),
    ))
    .await?;
    let answer = loop {
        let frame = next_json(ws).await?;
        match frame["op"].as_str().unwrap_or_default() {
            "list_tools_res" => break frame,
            "error" => anyhow::bail!("the daemon answered list_tools with {frame}"),
            _ => {}
        }
    };
    let _ = SinkExt::close(ws).await;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let tools = answer["tools"].as_array().cloned().unwrap_or_default();
    print!("{}", tools_text(&tools));
    Ok(ExitCode::SUCCESS)
}

/// The tools of a `list_tools_res` for people: per tool its name and description, then one
/// aligned line per argument (name, type, required, constraints) and the schema's rules.
fn tools_text(tools: &[Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (i, tool) in tools.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let name = tool["name"].as_str().unwrap_or_default();
        let _ = writeln!(out, "{name}");
        let _ = writeln!(
            out,
            "  {}",
            tool["description"].as_str().unwrap_or_default()
        );
        let schema = &tool["inputSchema"];
        let args = doc::arguments(schema);
        let width = |f: fn(&doc::Argument) -> usize| args.iter().map(f).max().unwrap_or(0);
        let (wn, wk) = (width(|a| a.name.len()), width(|a| a.kind.len()));
        for a in &args {
            let required = match a.required {
                "yes" => "required",
                "no" => "optional",
                other => other,
            };
            let line = format!(
                "    {:wn$}  {:wk$}  {:9}  {}",
                a.name, a.kind, required, a.description
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for rule in doc::rules(schema) {
            let _ = writeln!(out, "    {rule}");
        }
    }
    out
}

/// The next text frame as JSON, skipping pings; an error when the socket closes.
async fn next_json<S>(ws: &mut S) -> anyhow::Result<Value>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => anyhow::bail!("the daemon closed the connection: {frame:?}"),
            _ => {}
        }
    }
    anyhow::bail!("the connection ended")
}

/// A request id unique enough for one shell: time and process id.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}
