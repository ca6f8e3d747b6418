//! `exai-sim`: the Moonshot + Supabase Storage emulator (see the `exai_tests::sim` module docs
//! for the routes, the control API and the fault semantics).
//!
//! Prints `exai-sim listening on http://HOST:PORT` as its first stdout line (useful with
//! `--port 0`), then serves until SIGINT or SIGTERM. Point the stack at it with
//! `KIMI_API_URL=http://HOST:PORT/v1`, `SUPABASE_URL=http://HOST:PORT` and the key as both
//! `KIMI_API_KEY` and `SUPABASE_SERVICE_ROLE_KEY`.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use exai_shared::config::LogFormat;
use exai_tests::sim::{self, SimConfig};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "exai-sim",
    about = "Local emulator of the Moonshot (Kimi) API and Supabase Storage, with fault injection"
)]
struct Args {
    /// The port to listen on; 0 picks a free one (printed on the first stdout line).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The bearer key every provider request must carry (Moonshot key and Supabase service key).
    #[arg(long, env = "EXAI_SIM_KEY")]
    key: String,
    /// Also require Supabase's gateway `apikey` header (equal to the key).
    #[arg(long)]
    require_apikey: bool,
    /// A Supabase bucket to create (private) at start-up and on reset; repeatable.
    #[arg(long = "bucket")]
    buckets: Vec<String>,
    /// How long each chat completion takes before answering, in ms.
    #[arg(long, default_value_t = 0)]
    chat_latency_ms: u64,
    /// The pause between streamed chat chunks, in ms.
    #[arg(long, default_value_t = 0)]
    stream_chunk_delay_ms: u64,
    /// Refuse chat completions beyond this many in flight with a 429 (0: no limit).
    #[arg(long, default_value_t = 0)]
    chat_max_concurrency: u64,
    /// Moonshot: most files per account.
    #[arg(long, default_value_t = sim::config::MOONSHOT_MAX_FILES)]
    max_files: u64,
    /// Moonshot: largest file, in bytes.
    #[arg(long, default_value_t = sim::config::MOONSHOT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Moonshot: largest total of all files, in bytes.
    #[arg(long, default_value_t = sim::config::MOONSHOT_MAX_TOTAL_BYTES)]
    max_total_bytes: u64,
    /// Supabase: largest object, in bytes (a bucket's own limit may be lower).
    #[arg(long, default_value_t = sim::config::STORAGE_MAX_OBJECT_BYTES)]
    storage_max_bytes: u64,
    /// A further Moonshot API key accepted on /v1 (its own account, tier and bill); repeatable.
    #[arg(long = "moonshot-key")]
    moonshot_keys: Vec<String>,
    /// The tier of every Moonshot key: a preset (tier0 … tier5, unlimited) or JSON such as
    /// '{"concurrency":4,"rpm":120,"tpm":40000}' (default: unlimited).
    #[arg(long, value_parser = parse_tier)]
    tier: Option<sim::tiers::Tier>,
    /// The tier of one key, as KEY=TIER (TIER as for --tier); repeatable.
    #[arg(long = "key-tier", value_parser = parse_key_tier)]
    key_tiers: Vec<(String, sim::tiers::Tier)>,
    /// The models listed and accepted, comma-separated (default: Kimi and GLM models).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
}

fn parse_tier(text: &str) -> Result<sim::tiers::Tier, String> {
    sim::tiers::Tier::parse(text)
}

fn parse_key_tier(text: &str) -> Result<(String, sim::tiers::Tier), String> {
    let (key, tier) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=TIER"))?;
    Ok((key.to_owned(), sim::tiers::Tier::parse(tier)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    exai_shared::telemetry::init(LogFormat::Human);
    let mut config = SimConfig::new(args.key);
    config.require_apikey = args.require_apikey;
    config.buckets = args.buckets;
    config.moonshot_keys = args.moonshot_keys;
    let t = &mut config.tunables;
    t.chat_latency_ms = args.chat_latency_ms;
    t.stream_chunk_delay_ms = args.stream_chunk_delay_ms;
    t.chat_max_concurrency = (args.chat_max_concurrency > 0).then_some(args.chat_max_concurrency);
    t.max_files = args.max_files;
    t.max_file_bytes = args.max_file_bytes;
    t.max_total_bytes = args.max_total_bytes;
    t.storage_max_bytes = args.storage_max_bytes;
    t.tier = args.tier;
    t.tiers = args.key_tiers.into_iter().collect();
    if let Some(models) = args.models {
        t.models = models;
    }

    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("bind {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "exai-sim listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "exai-sim listening");
    let shutdown = exai_shared::shutdown::on_signal();
    sim::serve(listener, config, shutdown.cancelled_owned()).await?;
    tracing::info!("exai-sim stopped");
    Ok(())
}
