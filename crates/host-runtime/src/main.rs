//! `messaging-host`: run a wasi:messaging guest on Azure Service Bus.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use amqp_servicebus::{ClientOptions, ConnectionString};
use anyhow::{Context as _, Result, bail};
use clap::Parser;
use host_runtime::config::{HostConfig, parse_duration};
use host_runtime::engine::EngineSettings;
use host_runtime::{Host, HostOptions};

/// Runs a wasi:messaging guest component against Azure Service Bus (or its emulator).
///
/// The connection comes from --connection-string, SERVICEBUS_CONNECTION_STRING, host.toml's
/// connection-string, or SERVICE_BUS_NAMESPACE + SERVICE_BUS_POLICY_NAME + SERVICE_BUS_POLICY_KEY.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The guest component (.wasm, built for wasm32-wasip2).
    component: PathBuf,
    /// The Service Bus connection string.
    #[arg(long, env = "SERVICEBUS_CONNECTION_STRING", hide_env_values = true)]
    connection_string: Option<String>,
    /// host.toml: connections, channel options, the guest's allow-list, environment and settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A channel (queue, or topic/Subscriptions/subscription) for the guest to receive from;
    /// repeat it for more. Adds to the channels of host.toml's `[guest]` table.
    #[arg(long = "channel", value_name = "NAME")]
    channels: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Where compiled guests are cached (default: $XDG_CACHE_HOME/messaging-host or ~/.cache/messaging-host).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Memory cap of one guest instance, in MiB (host.toml's `[guest]` max-memory-mib wins).
    #[arg(long, default_value_t = 64, value_parser = parse_memory_mib)]
    max_memory_mib: u64,
    /// How long in-flight handlers may run after SIGINT/SIGTERM before they are stopped.
    #[arg(long, default_value = "30s")]
    grace_period: String,
    /// Logs for people (`text`), or one JSON object a line (`json`), with the fields of the
    /// spans an event is in (a handler call's trace_id, span_id, messaging attributes).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "MESSAGING_HOST_LOG_FORMAT")]
    log_format: LogFormat,
    /// Threads that run handler calls and the AMQP connection (default: one per core). Fewer
    /// threads than cores spend less CPU per message where the host shares a small machine
    /// (BENCHMARKS.md): a thread that wakes another to share the work costs more than it saves.
    #[arg(long, env = "MESSAGING_HOST_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let mib: u64 = text.parse().map_err(|_| format!("{text:?} is not a whole number of MiB"))?;
    if host_runtime::config::MAX_MEMORY_MIB.contains(&mib) {
        Ok(mib)
    } else {
        Err(host_runtime::config::memory_range_message(mib))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(true).flatten_event(true).init(),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = match runtime.build() {
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
    let mut signals = Signals::install()?;
    let grace = parse_duration(&args.grace_period).map_err(|e| anyhow::anyhow!("--grace-period: {e}"))?;
    let mut config = match &args.config {
        Some(path) => HostConfig::from_file(path)?,
        None => HostConfig::default(),
    };
    config.guest.channels.extend(args.channels.iter().cloned());
    let connection = match args.connection_string.as_deref().or(config.connection_string.as_deref()) {
        Some(cs) => ConnectionString::parse(cs).context("the connection string")?,
        None => match ConnectionString::from_variables(|k| std::env::var(k).ok())? {
            Some(c) => c,
            None => bail!(
                "no connection: pass --connection-string, set SERVICEBUS_CONNECTION_STRING, put connection-string in \
                 host.toml, or set SERVICE_BUS_NAMESPACE, SERVICE_BUS_POLICY_NAME and SERVICE_BUS_POLICY_KEY"
            ),
        },
    };
    let max_memory_mib = config.guest.max_memory_mib.unwrap_or(args.max_memory_mib);
    let cache_dir = args.cache_dir.clone().or_else(default_cache_dir);
    let engine = EngineSettings { max_memory: (max_memory_mib as usize) << 20, cache_dir, ..EngineSettings::default() };
    let started = std::time::Instant::now();
    let prepare = Host::prepare(HostOptions {
        component: args.component.clone(),
        connection,
        config,
        engine,
        client: ClientOptions::default(),
    });
    let prepared = tokio::select! {
        biased;
        // Nothing was received yet, so there is nothing to settle.
        () = signals.recv() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
        prepared = prepare => prepared.with_context(|| format!("starting {}", args.component.display()))?,
    };
    // A signal the runtime has not passed on yet still stops the host before it serves.
    if signals.arrived() {
        tracing::info!("stopped during start-up");
        return Ok(());
    }
    let host = prepared.serve();
    tracing::info!(
        ready_in = ?started.elapsed(),
        compiled_from_cache = host.from_cache,
        channels = ?host.channels().into_iter().map(|c| c.0).collect::<Vec<_>>(),
        "host ready"
    );
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let (bound, task) = host_runtime::metrics::start(addr, host.metrics())
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!("metrics at http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    signals.recv().await;
    tracing::info!("stopping: no new messages; in-flight handlers have {grace:?} (a second signal exits at once)");
    let shutdown = host.shutdown(grace);
    tokio::pin!(shutdown);
    tokio::select! {
        report = &mut shutdown => {
            tracing::info!(drained = report.drained, "stopped");
            Ok(())
        }
        () = signals.recv() => {
            eprintln!("second signal: exiting now; unsettled messages return to their queues when their locks expire");
            std::process::exit(130);
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("messaging-host"))
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from start-up.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// Set by the signal handler itself, at once: the runtime passes a signal on to `recv`
    /// only when its driver next runs, which may be after start-up has gone on.
    arrived: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let arrived = Arc::new(AtomicBool::new(false));
        for (number, name) in [(signal_hook::consts::SIGTERM, "SIGTERM"), (signal_hook::consts::SIGINT, "SIGINT")] {
            signal_hook::flag::register(number, arrived.clone())
                .with_context(|| format!("installing the {name} flag"))?;
        }
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(Self { term, int, arrived })
    }

    /// Whether a SIGTERM or SIGINT has arrived since start-up.
    fn arrived(&self) -> bool {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Waits for the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
