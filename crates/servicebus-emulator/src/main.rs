//! `servicebus-emulator`: run the emulator from the command line.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use servicebus_emulator::{Config, Emulator, Keys};

/// mimalloc, without transparent huge pages: every message is a few allocations of a kilobyte
/// or more, which glibc's allocator serves slowly (it consolidates its small-chunk bins before
/// each one). In an A/B at 4 queues × 16 (100,000 messages) it cut the emulator's CPU per
/// message from 28 to 24–25 µs, for 0.5 MB more idle RSS (BENCHMARKS.md). With huge pages on,
/// idle RSS grew from 7.6 to 13.5 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An Azure Service Bus emulator: AMQP 1.0, accepted by the official SDKs.
///
/// Connect with:
/// Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A Config.json in the schema of Microsoft's emulator; without it, the demo's queues
    /// (orders, payments, review).
    #[arg(long, env = "SERVICEBUS_EMULATOR_CONFIG")]
    config: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The plain AMQP port; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 5672)]
    port: u16,
    /// A PEM certificate chain: also listen with TLS (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The TLS port; 0 picks a free one.
    #[arg(long, default_value_t = 5671)]
    tls_port: u16,
    /// Also serve AMQP over WebSockets (ws://HOST:PORT/$servicebus/websocket) on this port;
    /// 0 picks a free one.
    #[arg(long)]
    ws_port: Option<u16>,
    /// Also serve AMQP over WebSockets with TLS (wss://, as Azure on 443) on this port, with the
    /// certificate of --tls-cert; 0 picks a free one.
    #[arg(long, requires = "tls_cert")]
    wss_port: Option<u16>,
    /// A shared access key, NAME=VALUE (every right) or NAME=VALUE:RIGHTS (Manage, Send, Listen,
    /// comma-separated); repeat for more. Default: the config's SharedAccessPolicies, else
    /// RootManageSharedAccessKey=SAS_KEY_VALUE.
    #[arg(long = "key", value_name = "NAME=VALUE[:RIGHTS]")]
    keys: Vec<String>,
    /// The management endpoint's port (GET /health, and the administration REST API; HTTPS
    /// too with --tls-cert); 0 picks a free one.
    #[arg(long, default_value_t = 5300)]
    management_port: u16,
    /// Serve no management endpoint.
    #[arg(long, conflicts_with = "management_port")]
    no_management: bool,
    /// The largest message accepted, in bytes.
    #[arg(long, default_value_t = servicebus_emulator::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// The most all entities' messages may take together: bytes, or with a unit (KiB, MiB, GiB,
    /// KB, MB, GB). Past it, sends are refused (amqp:resource-limit-exceeded), never the process.
    #[arg(long, value_parser = parse_size, default_value = "2GiB")]
    max_memory: u64,
    /// Keep what the emulator acknowledges in this directory (made if missing), and take it
    /// back at start: messages in every state, delivery counts, session state. Without it,
    /// everything is in memory and gone when the process ends.
    #[arg(long, env = "SERVICEBUS_EMULATOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// With --data-dir: when writes are synced to disk. always: each send or settlement alone;
    /// batch: many at once, each acknowledged only after its sync (group commit); never:
    /// acknowledged once written to the OS (survives the process, not the machine).
    #[arg(long, default_value = "batch", requires = "data_dir")]
    fsync: servicebus_emulator::Fsync,
    /// Log level (error, warn, info, debug, trace), or a tracing filter; RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log_level.clone());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid log level {filter:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    // Listen for signals before anything else: a SIGTERM sent as soon as the process says it
    // is ready must shut it down gracefully, not kill it with the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let mut builder = Emulator::builder();
    if !args.keys.is_empty() {
        let mut keys = Keys::empty();
        for k in &args.keys {
            let (name, value, rights) =
                servicebus_emulator::auth::parse_key_spec(k).map_err(|e| anyhow::anyhow!("--key {k:?}: {e}"))?;
            keys = keys.with_rights(name, value, rights);
        }
        builder = builder.keys(keys);
    }
    let mut builder = builder
        .config(config)
        .bind(SocketAddr::new(args.host, args.port))
        .max_message_size(args.max_message_size)
        .max_memory(args.max_memory);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        builder = builder.tls(cert, key, SocketAddr::new(args.host, args.tls_port));
    }
    if !args.no_management {
        builder = builder.management(SocketAddr::new(args.host, args.management_port));
    }
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(dir).fsync(args.fsync);
    }
    if let Some(port) = args.ws_port {
        builder = builder.websocket(SocketAddr::new(args.host, port));
    }
    if let Some(port) = args.wss_port {
        builder = builder.websocket_tls(SocketAddr::new(args.host, port));
    }
    let emulator = builder.start().await.context("starting the emulator")?;
    println!("servicebus-emulator listening on amqp://{}", emulator.local_addr());
    if let Some(tls) = emulator.tls_addr() {
        println!("servicebus-emulator listening on amqps://{tls}");
    }
    if let Some(ws) = emulator.ws_addr() {
        println!("servicebus-emulator listening on ws://{ws}{}", amqp_ws::PATH);
    }
    if let Some(wss) = emulator.wss_addr() {
        println!("servicebus-emulator listening on wss://{wss}{}", amqp_ws::PATH);
    }
    if let Some(m) = emulator.management_addr() {
        println!("servicebus-emulator management endpoint on http://{m}/health");
    }
    println!("connection string: {}", emulator.connection_string());
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // A fault to test clients with: every connection ends as a network failure would.
            _ = usr1.recv() => {
                let dropped = emulator.drop_connections();
                tracing::warn!(dropped, "SIGUSR1: dropped every connection without closing it");
            }
        }
    }
    eprintln!("shutting down");
    emulator.shutdown().await;
    Ok(())
}

/// `2GiB`, `512MiB`, `100MB`, `65536`: a size in bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("unknown unit in {text:?}: use bytes, or KiB, MiB, GiB, KB, MB, GB")),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a size: write e.g. 512MiB or 2GiB"))?;
    n.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("2 furlongs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999GiB").unwrap_err().contains("too large"));
    }
}
