//! `exai-call`: one tool call over the daemon's WebSocket protocol, from a shell.
//!
//! ```text
//! EXAI_WS_TOKEN=… exai-call --url ws://127.0.0.1:8079 test_echo '{"text":"hello"}'
//! ```
//!
//! Sends the hello, one `call_tool` in streaming mode, prints `stream_chunk` text to stdout as it
//! arrives and progress to stderr, then the result's text. Exits 0 on a result, 1 on an error
//! result, 2 when the daemon could not be reached or broke the protocol.

use std::process::ExitCode;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Calls one tool through an EXAI daemon and prints the result.
#[derive(Parser, Debug)]
#[command(version, about)]
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
    /// The tool to call, e.g. test_echo, chat, kimi_upload_files.
    tool: String,
    /// The tool's arguments as a JSON object.
    #[arg(default_value = "{}")]
    arguments: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
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
        anyhow::bail!("hello refused: {ack}");
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
    let call = json!({"op": "call_tool", "request_id": request_id, "name": args.tool,
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
                    eprintln!("error {}: {}", err["code"], err["message"]);
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
