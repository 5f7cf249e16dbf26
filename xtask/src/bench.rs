//! `cargo xtask bench`: end-to-end numbers on the embedded emulator (release builds).
//!
//! - start-up: the emulator until it listens; the host until it serves, with its compiled
//!   guest already cached;
//! - the host's resident memory, idle, consuming 10 channels;
//! - for 1 and 4 queues × concurrency 1 and 16 (per queue), three consumers of 1 KiB messages
//!   in peek-lock that complete every message: (a) the host with a guest that completes every
//!   message, (b) a native Rust handler on amqp-servicebus with the same strategy and settings
//!   (the client's `drain` example), (c) the official Python SDK (`bench_consumer.py`). Each
//!   is measured twice:
//!   - throughput: draining a pre-filled backlog; msgs/s and the CPU time the consumer and
//!     the broker spent per message;
//!   - at the same offered loads for every consumer (`LOADS`): the CPU time the consumer
//!     spent per message, and enqueue→handler latency per message (the sender stamps
//!     `sent-at-us` just before it sends; the handler subtracts it from the wall clock). This
//!     is what a user compares: at a given traffic, what a consumer costs and how long a
//!     message waits; msgs/s alone is bound by the shared cores and the broker;
//! - the emulator against RabbitMQ's AMQP 1.0 plugin, with the same client in generic mode, one
//!   client process per queue, each granting its queue's messages as credit at attach.
//!
//! Every measurement uses a fresh emulator process, is repeated, and is reported as the median
//! with the range of the repeats.
//!
//! Layout: this file has the options, start-up and memory, and the three consumers' runs and
//! tables (one `Bench` drives them all, and each table needs every run of its cell, hence its
//! length); `brokers` has the broker comparison, and `rabbitmq` the RabbitMQ node it starts.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amqp_servicebus::{ClientOptions, Message, ServiceBusClient};
use anyhow::{Context as _, Result, bail};

use crate::procs::{EmulatorProcess, HostProcess, metric, scrape};
use crate::{guests, paths, procs, python};

mod brokers;
mod rabbitmq;

/// Messages drained per throughput run (over all queues).
const THROUGHPUT_MESSAGES: usize = 4000;
/// The offered loads (msgs/s over all queues) and the messages sent at each: both below every
/// consumer's throughput, so that the latency is the path's, not a queue's backlog. At 250
/// msgs/s a consumer is mostly idle (its CPU is mostly waking up); at 1000 it is busy.
const LOADS: [(f64, usize); 2] = [(250.0, 1500), (1000.0, 4000)];
/// Latency samples dropped at the start of a run (connections and links warming up).
const LATENCY_WARMUP: usize = 100;
/// (queues, concurrency per queue).
const CELLS: [(usize, usize); 4] = [(1, 1), (1, 16), (4, 1), (4, 16)];
/// The Python consumer.
const PYTHON_CONSUMER: &str = include_str!("bench_consumer.py");

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs of each measurement; the median is reported.
    pub repeats: usize,
    /// The (queues, concurrency) cells to measure.
    pub cells: Vec<(usize, usize)>,
    /// Only the broker comparison (`--only brokers`), or only the rest (`--only consumers`).
    pub only: Option<Part>,
    /// Messages per handler call of the host (`--batch B`, its `max-batch-size`). With B > 1 the
    /// host runs C ÷ B calls of B messages, so as many messages are in flight as for the others.
    pub batch: usize,
    /// The consumers to measure (`--consumers host,native,python`; all by default).
    pub consumers: Vec<Consumer>,
    /// Another build of the native consumer (`--baseline-drain PATH`, an `examples/drain` built
    /// from another commit), measured in the same runs as (b): before and after a change, on
    /// one machine at one time.
    pub baseline_drain: Option<PathBuf>,
    /// Another build of the host (`--baseline-host DIR`, a directory holding a `messaging-host`
    /// and the `test-guest.wasm` it runs, built from another commit), measured in the same runs
    /// as (a).
    pub baseline_host: Option<PathBuf>,
}

/// A part of the benchmarks, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Start-up, idle memory, and the three consumers.
    Consumers,
    /// The emulator against RabbitMQ.
    Brokers,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            repeats: 3,
            cells: CELLS.to_vec(),
            only: None,
            batch: 1,
            consumers: vec![Consumer::Host, Consumer::Native, Consumer::Python],
            baseline_drain: None,
            baseline_host: None,
        }
    }
}

impl Options {
    /// Parses `cargo xtask bench`'s arguments: `[--repeats N] [--cells QxC,QxC] [--only consumers|brokers]
    /// [--batch B] [--consumers host,native,python] [--baseline-drain PATH] [--baseline-host DIR]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self::default();
        for (flag, value) in crate::flag_values(args)? {
            match flag {
                "--repeats" => {
                    options.repeats = value.parse().ok().filter(|r| *r > 0).with_context(|| {
                        format!("'--repeats' takes a number of runs of at least 1, but got '{value}'")
                    })?;
                }
                "--cells" => {
                    options.cells = value
                        .split(',')
                        .map(|cell| {
                            cell.split_once('x')
                                .and_then(|(q, c)| Some((q.parse().ok()?, c.parse().ok()?)))
                                .filter(|&(q, c): &(usize, usize)| q > 0 && c > 0)
                                .with_context(|| {
                                    format!(
                                        "'--cells' takes <queues>x<concurrency>,… such as 1x16,4x1, but got '{cell}'"
                                    )
                                })
                        })
                        .collect::<Result<_>>()?;
                }
                "--only" => {
                    options.only = Some(match value {
                        "consumers" => Part::Consumers,
                        "brokers" => Part::Brokers,
                        _ => bail!("'--only' takes consumers or brokers, but got '{value}'"),
                    });
                }
                "--batch" => {
                    options.batch = value.parse().ok().filter(|b| *b > 0).with_context(|| {
                        format!("'--batch' takes a number of messages per call of at least 1, but got '{value}'")
                    })?;
                }
                "--consumers" => {
                    options.consumers = value
                        .split(',')
                        .map(|c| match c {
                            "host" => Ok(Consumer::Host),
                            "native" => Ok(Consumer::Native),
                            "python" => Ok(Consumer::Python),
                            other => bail!("'--consumers' takes host, native and python, but got '{other}'"),
                        })
                        .collect::<Result<_>>()?;
                }
                "--baseline-drain" => {
                    let path = PathBuf::from(value);
                    if !path.is_file() {
                        bail!("'--baseline-drain' takes a built drain example, but {} is not a file", path.display());
                    }
                    options.baseline_drain = Some(path);
                }
                "--baseline-host" => {
                    let dir = PathBuf::from(value);
                    for file in [BASELINE_HOST, BASELINE_GUEST] {
                        if !dir.join(file).is_file() {
                            bail!(
                                "'--baseline-host' takes a directory with another build's {BASELINE_HOST} and \
                                 {BASELINE_GUEST}, but {} has no {file}",
                                dir.display()
                            );
                        }
                    }
                    options.baseline_host = Some(dir);
                }
                other => bail!(
                    "'bench' takes --repeats <n>, --cells <QxC,…>, --only <part>, --batch <b>, --consumers <list>, \
                     --baseline-drain <path> and --baseline-host <dir>, but got '{other}'"
                ),
            }
        }
        Ok(options)
    }
}

/// The host binary in a `--baseline-host` directory.
const BASELINE_HOST: &str = "messaging-host";
/// The test guest in a `--baseline-host` directory (built for that host's WIT).
const BASELINE_GUEST: &str = "test-guest.wasm";

/// A consumer of the benchmark's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// (a) `messaging-host` with the test guest.
    Host,
    /// (a0) the `--baseline-host` build of `messaging-host`, with its test guest.
    HostBaseline,
    /// (b) `examples/drain`, this commit's build.
    Native,
    /// (b0) `examples/drain`, the `--baseline-drain` build.
    NativeBaseline,
    /// (c) the official Python SDK.
    Python,
}

impl Consumer {
    fn label(self) -> &'static str {
        match self {
            Consumer::Host => "(a) host + guest",
            Consumer::HostBaseline => "(a0) host + guest, baseline build",
            Consumer::Native => "(b) native Rust",
            Consumer::NativeBaseline => "(b0) native Rust, baseline build",
            Consumer::Python => "(c) Python SDK",
        }
    }
}

/// One run at an offered load.
#[derive(Debug, Clone)]
struct Offered {
    /// Enqueue→handler latencies in µs, after the warm-up.
    latencies: Vec<u64>,
    /// The consumer's CPU time per message, µs.
    consumer_cpu_us: f64,
}

/// A consumer's medians in one cell: for the ratios.
struct Medians {
    consumer: Consumer,
    /// Draining, msgs/s.
    rate: f64,
    /// Draining, CPU µs per message.
    cpu: f64,
    /// At each of [`LOADS`]: CPU µs per message and p99 latency.
    at_loads: Vec<(f64, f64)>,
}

/// One throughput run.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    rate: f64,
    consumer_cpu_us: f64,
    broker_cpu_us: f64,
    peak_rss_mib: Option<f64>,
}

/// Everything one bench run needs: binaries, the guest, the Python venv, a runtime for the
/// Rust client that fills queues.
struct Bench {
    runtime: tokio::runtime::Runtime,
    emulator: PathBuf,
    host: PathBuf,
    drain: PathBuf,
    /// See [`Options::baseline_drain`].
    baseline_drain: Option<PathBuf>,
    /// See [`Options::baseline_host`].
    baseline_host: Option<PathBuf>,
    guest: PathBuf,
    python: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    /// The host's `max-batch-size` (see [`Options::batch`]).
    batch: usize,
}

fn build_release() -> Result<PathBuf> {
    let status = guests::cargo()
        .current_dir(paths::repo_root())
        .args(["build", "--release", "--locked", "-p", "servicebus-emulator", "-p", "host-runtime", "--bins"])
        .args(["-p", "amqp-servicebus", "--example", "drain"])
        .env("CARGO_TARGET_DIR", paths::target_dir())
        .status()?;
    if !status.success() {
        bail!("the release build failed");
    }
    Ok(paths::target_dir().join("release"))
}

/// The emulator's configuration: `queues`, each with a one-minute lock.
fn config(dir: &Path, queues: &[String]) -> Result<PathBuf> {
    let queues: Vec<(&str, &str, u32)> = queues.iter().map(|q| (q.as_str(), "PT1M", 10)).collect();
    let path = dir.join("bench.Config.json");
    procs::write_emulator_config(&path, "bench", &queues)?;
    Ok(path)
}

/// The median and the range of `v`.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// `p`-th percentile (0–100) of sorted samples.
fn percentile(sorted: &[u64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)] as f64
}

fn queue_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("q{i}")).collect()
}

/// Runs the benchmarks and prints Markdown tables for BENCHMARKS.md.
pub fn run(options: Options) -> Result<()> {
    let components = guests::ensure_built()?;
    let release = build_release()?;
    let dir = paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let consumer = dir.join("bench_consumer.py");
    std::fs::write(&consumer, PYTHON_CONSUMER)?;
    let bench = Bench {
        runtime: tokio::runtime::Runtime::new()?,
        emulator: release.join("servicebus-emulator"),
        host: release.join("messaging-host"),
        drain: release.join("examples/drain"),
        baseline_drain: options.baseline_drain.clone(),
        baseline_host: options.baseline_host.clone(),
        guest: components.path("test-guest")?,
        python: python::ensure_venv()?,
        config: config(&dir, &queue_names(10))?,
        dir,
        batch: options.batch,
    };
    let repeats = options.repeats.max(1);
    if options.only != Some(Part::Brokers) {
        let mut consumers = options.consumers.clone();
        if options.baseline_drain.is_some() {
            let after_native = consumers.iter().position(|c| *c == Consumer::Native).map_or(consumers.len(), |i| i + 1);
            consumers.insert(after_native, Consumer::NativeBaseline);
        }
        if options.baseline_host.is_some() {
            let after_host = consumers.iter().position(|c| *c == Consumer::Host).map_or(consumers.len(), |i| i + 1);
            consumers.insert(after_host, Consumer::HostBaseline);
        }
        bench.consumers(repeats, &options.cells, &consumers)?;
    }
    if options.only != Some(Part::Consumers) {
        bench.broker_comparison(repeats, &options.cells)?;
    }
    Ok(())
}

impl Bench {
    /// Start-up, idle memory, and `consumers` in every cell.
    fn consumers(&self, repeats: usize, cells: &[(usize, usize)], consumers: &[Consumer]) -> Result<()> {
        let (emulator_ready, host_ready, idle_rss) = self.start_up()?;
        println!("| Measure | Result |");
        println!("|---|---|");
        println!("| emulator ready (median of 5) | {:.1} ms |", emulator_ready.as_secs_f64() * 1e3);
        println!("| host ready, cached compiled guest (median of 3) | {:.0} ms |", host_ready.as_secs_f64() * 1e3);
        println!("| host idle RSS, 10 channels | {:.1} MB |", idle_rss / 1024.0);
        println!();

        let mut throughput_rows = Vec::new();
        let mut load_rows = Vec::new();
        let mut ratio_rows = Vec::new();
        for &(queues, concurrency) in cells {
            // Repeats go round the consumers, so each one meets the machine's drift alike.
            let mut runs = vec![Vec::new(); consumers.len()];
            let mut offered = vec![vec![Vec::new(); LOADS.len()]; consumers.len()];
            for _ in 0..repeats {
                for (i, &consumer) in consumers.iter().enumerate() {
                    runs[i].push(self.throughput(consumer, queues, concurrency)?);
                    for (l, &(rate, count)) in LOADS.iter().enumerate() {
                        offered[i][l].push(self.offered(consumer, queues, concurrency, rate, count)?);
                    }
                }
            }
            let mut medians = Vec::new();
            for (i, &consumer) in consumers.iter().enumerate() {
                let runs = &runs[i];
                let (rate, lo, hi) = summary(&runs.iter().map(|r| r.rate).collect::<Vec<_>>());
                let consumer_cpu = summary(&runs.iter().map(|r| r.consumer_cpu_us).collect::<Vec<_>>()).0;
                let broker_cpu = summary(&runs.iter().map(|r| r.broker_cpu_us).collect::<Vec<_>>()).0;
                let rss = runs
                    .iter()
                    .filter_map(|r| r.peak_rss_mib)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
                throughput_rows.push(format!(
                    "| {queues} × {concurrency} | {} | **{rate:.0}** ({lo:.0}–{hi:.0}) | {consumer_cpu:.0} | {broker_cpu:.0} | {} |",
                    self.label(consumer),
                    rss.map_or("–".to_string(), |r| format!("{r:.1} MB")),
                ));
                let mut at_loads = Vec::new();
                for (l, &(load, _)) in LOADS.iter().enumerate() {
                    let runs = &offered[i][l];
                    let cpu = summary(&runs.iter().map(|r| r.consumer_cpu_us).collect::<Vec<_>>()).0;
                    let p50 = summary(&runs.iter().map(|r| percentile(&r.latencies, 50)).collect::<Vec<_>>()).0;
                    let p99 = summary(&runs.iter().map(|r| percentile(&r.latencies, 99)).collect::<Vec<_>>()).0;
                    load_rows.push(format!(
                        "| {queues} × {concurrency} | {load:.0} | {} | **{cpu:.0}** | {:.2} ms | **{:.2} ms** |",
                        self.label(consumer),
                        p50 / 1e3,
                        p99 / 1e3,
                    ));
                    at_loads.push((cpu, p99));
                }
                medians.push(Medians { consumer, rate, cpu: consumer_cpu, at_loads });
            }
            let of = |c: Consumer| medians.iter().find(|m| m.consumer == c);
            if let (Some(host), Some(native)) = (of(Consumer::Host), of(Consumer::Native)) {
                let mut row = format!(
                    "| {queues} × {concurrency} | {:.2} | {:.2} |",
                    host.rate / native.rate,
                    host.cpu / native.cpu
                );
                if let Some(python) = of(Consumer::Python) {
                    for (h, p) in host.at_loads.iter().zip(&python.at_loads) {
                        row.push_str(&format!(" {:.1}× | {:.1}× |", p.0 / h.0, p.1 / h.1));
                    }
                }
                ratio_rows.push(row);
            }
        }
        println!(
            "| queues × concurrency | consumer | msgs/s draining (median, range of {repeats}) | consumer CPU µs/msg | broker CPU µs/msg | consumer peak RSS |"
        );
        println!("|---|---|---|---|---|---|");
        throughput_rows.iter().for_each(|r| println!("{r}"));
        println!();
        println!(
            "| queues × concurrency | offered msgs/s | consumer | consumer CPU µs/msg | latency p50 | latency p99 |"
        );
        println!("|---|---|---|---|---|---|");
        load_rows.iter().for_each(|r| println!("{r}"));
        println!();
        if !ratio_rows.is_empty() {
            let loads: String = LOADS
                .iter()
                .map(|(l, _)| format!(" (c) ÷ (a) CPU at {l:.0}/s | (c) ÷ (a) p99 at {l:.0}/s |"))
                .collect();
            println!("| queues × concurrency | (a) ÷ (b) msgs/s | (a) ÷ (b) CPU µs/msg |{loads}");
            println!("|---|---|---|{}", "---|---|".repeat(LOADS.len()));
            ratio_rows.iter().for_each(|r| println!("{r}"));
            println!();
        }
        Ok(())
    }

    /// Emulator ready, host ready with the compiled guest cached, and the host's idle RSS (KiB)
    /// on 10 channels.
    fn start_up(&self) -> Result<(Duration, Duration, f64)> {
        let mut ready = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let e = EmulatorProcess::start(&self.emulator, Some(&self.config), 0)?;
            ready.push(started.elapsed().as_secs_f64());
            e.stop()?;
        }
        let emulator_ready = Duration::from_secs_f64(summary(&ready).0);

        let emu = EmulatorProcess::start(&self.emulator, Some(&self.config), 0)?;
        let toml = self.dir.join("idle.host.toml");
        std::fs::write(
            &toml,
            format!("[guest]\nenv = {{ TEST_GUEST_CHANNELS = \"{}\" }}\n", queue_names(10).join(",")),
        )?;
        let mut host_ready = Vec::new();
        let mut rss_kib = 0.0;
        for i in 0..4 {
            let started = Instant::now();
            let mut host = self.start_host(Consumer::Host, &toml, &emu.connection_string(), "idle.log")?;
            if i > 0 {
                host_ready.push(started.elapsed().as_secs_f64()); // The first start compiled and cached the guest.
            }
            std::thread::sleep(Duration::from_secs(1));
            rss_kib = status_kib(host.pid().context("the host is running")?, "VmRSS")?;
            host.signal("TERM")?;
            host.wait()?;
        }
        Ok((emulator_ready, Duration::from_secs_f64(summary(&host_ready).0), rss_kib))
    }

    /// Sends `total` 1 KiB messages, spread over `queues`, whose data is the test guest's `script`.
    fn fill(&self, client: &ServiceBusClient, queues: &[String], total: usize, script: &str) -> Result<()> {
        self.runtime.block_on(async {
            for (i, queue) in queues.iter().enumerate() {
                let sender = client.sender(queue);
                for chunk in (0..share(total, queues.len(), i)).collect::<Vec<_>>().chunks(100) {
                    sender.send_batch(chunk.iter().map(|_| Message::new(body(script))).collect()).await?;
                }
            }
            anyhow::Ok(())
        })
    }

    /// Sends `total` messages round-robin over `queues` at `rate` msgs/s, each stamped with
    /// `sent-at-us` just before it goes.
    fn paced_send(&self, client: &ServiceBusClient, queues: &[String], rate: f64, total: usize) -> Result<()> {
        self.runtime.block_on(async {
            let senders: Vec<_> = queues.iter().map(|q| client.sender(q)).collect();
            let start = tokio::time::Instant::now();
            for i in 0..total {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
                let message = Message::new(body("latency")).with_property("sent-at-us", now);
                senders[i % senders.len()].send(message).await?;
            }
            anyhow::Ok(())
        })
    }

    /// Starts the release host (or the baseline's, for [`Consumer::HostBaseline`]) on the test
    /// guest, logging to `log` in the bench directory.
    fn start_host(&self, consumer: Consumer, toml: &Path, cs: &str, log: &str) -> Result<HostProcess> {
        match (consumer, &self.baseline_host) {
            (Consumer::HostBaseline, Some(dir)) => HostProcess::start(
                &dir.join(BASELINE_HOST),
                &dir.join(BASELINE_GUEST),
                toml,
                cs,
                &self.dir.join(format!("baseline-{log}")),
            ),
            (Consumer::HostBaseline, None) => bail!("--baseline-host names the baseline build"),
            _ => HostProcess::start(&self.host, &self.guest, toml, cs, &self.dir.join(log)),
        }
    }

    /// A consumer's name in the tables, with the host's batch size when it is not 1.
    fn label(&self, consumer: Consumer) -> String {
        match consumer {
            Consumer::Host | Consumer::HostBaseline if self.batch > 1 => {
                format!("{}, {} messages per call", consumer.label(), self.batch)
            }
            _ => consumer.label().to_string(),
        }
    }

    /// The host's configuration: `concurrency` messages in flight per queue, in calls of
    /// `self.batch` messages.
    fn host_toml(&self, queues: &[String], concurrency: usize) -> Result<PathBuf> {
        let toml = self.dir.join("work.host.toml");
        let calls = concurrency.div_ceil(self.batch).max(1);
        std::fs::write(
            &toml,
            format!(
                "[guest]\nenv = {{ TEST_GUEST_CHANNELS = \"{}\" }}\n[defaults]\nmax-concurrent-calls = {calls}\nmax-batch-size = {}\n",
                queues.join(","),
                self.batch
            ),
        )?;
        Ok(toml)
    }

    /// Starts the native or Python consumer and waits until it says it is ready.
    fn start_consumer(
        &self,
        consumer: Consumer,
        cs: &str,
        queues: &[String],
        count: usize,
        concurrency: usize,
        latency: bool,
    ) -> Result<(Child, std::io::Lines<BufReader<std::process::ChildStdout>>)> {
        let mut cmd = match consumer {
            Consumer::Native => Command::new(&self.drain),
            Consumer::NativeBaseline => {
                Command::new(self.baseline_drain.as_ref().context("--baseline-drain names the baseline build")?)
            }
            Consumer::Python => {
                let mut c = Command::new(&self.python);
                c.arg(self.dir.join("bench_consumer.py"));
                c
            }
            Consumer::Host | Consumer::HostBaseline => unreachable!("the host runs as a HostProcess"),
        };
        cmd.args([cs.to_string(), queues.join(","), count.to_string(), concurrency.to_string()]);
        if latency {
            cmd.arg("latency");
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout is piped")?).lines();
        match lines.next().transpose()? {
            Some(l) if l == "ready" => Ok((child, lines)),
            other => {
                let status = child.wait()?;
                bail!("the {consumer:?} consumer did not start ({status}): {other:?}")
            }
        }
    }

    fn throughput(&self, consumer: Consumer, queues: usize, concurrency: usize) -> Result<Throughput> {
        let queues = queue_names(queues);
        let emu = EmulatorProcess::start(&self.emulator, Some(&self.config), 0)?;
        let broker_pid = emu.pid();
        let client = ServiceBusClient::new(&emu.connection_string(), ClientOptions::default())?;
        self.fill(&client, &queues, THROUGHPUT_MESSAGES, "ok")?;
        match consumer {
            Consumer::Host | Consumer::HostBaseline => {
                let toml = self.host_toml(&queues, concurrency)?;
                let mut host = self.start_host(consumer, &toml, &emu.connection_string(), "work.log")?;
                let pid = host.pid().context("the host is running")?;
                // The host consumes from the moment it is ready: time from the first reading.
                let (t0, done0, cpu0, broker0) =
                    (Instant::now(), completed(&host, &queues)?, cpu_seconds(pid)?, cpu_seconds(broker_pid)?);
                loop {
                    let done = completed(&host, &queues)?;
                    if done >= THROUGHPUT_MESSAGES {
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(300) {
                        bail!("the host completed {done} of {THROUGHPUT_MESSAGES} in 5 minutes");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let (elapsed, cpu, broker) =
                    (t0.elapsed(), cpu_seconds(pid)? - cpu0, cpu_seconds(broker_pid)? - broker0);
                let peak = status_kib(pid, "VmHWM")? / 1024.0;
                host.signal("TERM")?;
                host.wait()?;
                let n = (THROUGHPUT_MESSAGES - done0.min(THROUGHPUT_MESSAGES - 1)) as f64;
                Ok(Throughput {
                    rate: n / elapsed.as_secs_f64(),
                    consumer_cpu_us: cpu * 1e6 / n,
                    broker_cpu_us: broker * 1e6 / n,
                    peak_rss_mib: Some(peak),
                })
            }
            Consumer::Native | Consumer::NativeBaseline | Consumer::Python => {
                let cs = emu.connection_string();
                let (mut child, lines) =
                    self.start_consumer(consumer, &cs, &queues, THROUGHPUT_MESSAGES, concurrency, false)?;
                let broker0 = cpu_seconds(broker_pid)?;
                let last = lines.last().transpose()?.unwrap_or_default();
                let broker = cpu_seconds(broker_pid)? - broker0;
                let status = child.wait()?;
                let (rate, cpu) =
                    parse_result(&last).with_context(|| format!("the {consumer:?} consumer ({status})"))?;
                let n = THROUGHPUT_MESSAGES as f64;
                Ok(Throughput {
                    rate,
                    consumer_cpu_us: cpu * 1e6 / n,
                    broker_cpu_us: broker * 1e6 / n,
                    peak_rss_mib: None,
                })
            }
        }
    }

    /// `count` messages offered at `rate` msgs/s: the enqueue→handler latencies in µs, in the
    /// order the handler saw them, after the warm-up, and the consumer's CPU per message (from
    /// when it is ready until its last completion, as in a throughput run).
    fn offered(
        &self,
        consumer: Consumer,
        queues: usize,
        concurrency: usize,
        rate: f64,
        count: usize,
    ) -> Result<Offered> {
        let queues = queue_names(queues);
        let emu = EmulatorProcess::start(&self.emulator, Some(&self.config), 0)?;
        let cs = emu.connection_string();
        let client = ServiceBusClient::new(&cs, ClientOptions::default())?;
        self.runtime.block_on(client.connect())?;
        let (lines, cpu): (Vec<String>, f64) = match consumer {
            Consumer::Host | Consumer::HostBaseline => {
                let toml = self.host_toml(&queues, concurrency)?;
                let mut host = self.start_host(consumer, &toml, &cs, "latency.log")?;
                let pid = host.pid().context("the host is running")?;
                let cpu0 = cpu_seconds(pid)?;
                self.paced_send(&client, &queues, rate, count)?;
                // Watched through its log, not its metrics: a scrape every few milliseconds
                // would be host CPU that no other consumer pays. Each look rereads the whole
                // log, on the cores being measured, so it looks every 10 ms: the host's idle
                // CPU in that much slack is well under 0.1 µs per message.
                let deadline = Instant::now() + Duration::from_secs(120);
                let handled = || host.log_text().matches("latency-us ").count();
                while handled() < count {
                    if Instant::now() > deadline {
                        bail!(
                            "the host handled {} of {count} messages offered at {rate} msgs/s in 2 minutes",
                            handled()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let cpu = cpu_seconds(pid)? - cpu0;
                while completed(&host, &queues)? < count {
                    if Instant::now() > deadline {
                        bail!("the host completed {} of {count} messages in 2 minutes", completed(&host, &queues)?);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                host.signal("TERM")?;
                host.wait()?;
                (host.log_text().lines().map(String::from).collect(), cpu)
            }
            Consumer::Native | Consumer::NativeBaseline | Consumer::Python => {
                let (mut child, lines) = self.start_consumer(consumer, &cs, &queues, count, concurrency, true)?;
                self.paced_send(&client, &queues, rate, count)?;
                let lines = lines.collect::<Result<Vec<_>, _>>()?;
                let status = child.wait()?;
                if !status.success() {
                    bail!("the {consumer:?} consumer failed ({status})");
                }
                let last = lines.last().map(String::as_str).unwrap_or_default();
                let (_, cpu) = parse_result(last).with_context(|| format!("the {consumer:?} consumer ({status})"))?;
                (lines, cpu)
            }
        };
        let mut latencies: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("latency-us "))
            .map(|v| v.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .context("a latency line")?;
        if latencies.len() != count {
            bail!("the {consumer:?} consumer reported {} latencies for {count} messages", latencies.len());
        }
        latencies.drain(..LATENCY_WARMUP);
        latencies.sort_unstable();
        Ok(Offered { latencies, consumer_cpu_us: cpu * 1e6 / count as f64 })
    }
}

/// How many of `total` messages go to queue `i` of `queues`.
fn share(total: usize, queues: usize, i: usize) -> usize {
    total / queues + usize::from(i < total % queues)
}

/// Messages the host has completed, over `queues`, from its metrics.
fn completed(host: &HostProcess, queues: &[String]) -> Result<usize> {
    let m = scrape(host.metrics)?;
    Ok(queues.iter().map(|q| metric(&m, "messaging_completed_total", q) as usize).sum())
}

/// Parses a consumer's last line, `msgs/s <rate> cpu-s <seconds>`.
fn parse_result(line: &str) -> Result<(f64, f64)> {
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["msgs/s", rate, "cpu-s", cpu] => Ok((rate.parse()?, cpu.parse()?)),
        _ => bail!("expected 'msgs/s <rate> cpu-s <seconds>' as the last line, got {line:?}"),
    }
}

/// The 1 KiB body of a message for the test guest: the script, padded with spaces.
fn body(script: &str) -> Vec<u8> {
    let mut body = script.as_bytes().to_vec();
    body.resize(1024, b' ');
    body
}

/// User + system CPU seconds of process `pid` so far (its threads included).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading process {pid}"))?;
    // After the parenthesised command name, utime and stime are the 12th and 13th fields, in ticks.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 =
        fields.get(11..13).context("a short /proc/pid/stat")?.iter().map(|f| f.parse::<f64>()).sum::<Result<_, _>>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux.
}

/// A `kB` line of /proc/`pid`/status, such as `VmRSS` or `VmHWM`.
fn status_kib(pid: u32, key: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(&format!("{key}:"))).with_context(|| format!("no {key}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;

    #[test]
    fn options_default_to_three_runs_of_every_cell() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.repeats, o.cells, o.only), (3, CELLS.to_vec(), None));
    }

    #[test]
    fn options_take_repeats_and_cells() {
        let o = Options::parse(&args(&["--cells", "1x16,4x1", "--repeats", "5", "--only", "brokers", "--batch", "8"]))
            .unwrap();
        assert_eq!((o.repeats, o.cells, o.only, o.batch), (5, vec![(1, 16), (4, 1)], Some(Part::Brokers), 8));
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let e = |a: &[&str]| Options::parse(&args(a)).unwrap_err().to_string();
        assert!(e(&["--repeats", "0"]).contains("at least 1, but got '0'"));
        assert!(e(&["--cells", "1x16,four"]).contains("but got 'four'"));
        assert!(e(&["--cells", "0x16"]).contains("but got '0x16'"));
        assert!(e(&["--repeats"]).contains("'--repeats' needs a value"));
        assert!(e(&["--batch", "0"]).contains("'--batch' takes a number of messages per call of at least 1"));
        assert!(e(&["--fast", "1"]).contains("but got '--fast'"));
        assert!(e(&["--only", "all"]).contains("consumers or brokers, but got 'all'"));
        let empty = tempfile::tempdir().unwrap();
        let dir = empty.path().to_str().unwrap();
        assert!(e(&["--baseline-host", dir]).contains("has no messaging-host"), "{}", e(&["--baseline-host", dir]));
        std::fs::write(empty.path().join(BASELINE_HOST), "").unwrap();
        assert!(e(&["--baseline-host", dir]).contains("has no test-guest.wasm"));
        std::fs::write(empty.path().join(BASELINE_GUEST), "").unwrap();
        assert_eq!(
            Options::parse(&args(&["--baseline-host", dir])).unwrap().baseline_host.as_deref(),
            Some(empty.path())
        );
    }

    #[test]
    fn results_and_statistics() {
        assert_eq!(parse_result("msgs/s 1234.5 cpu-s 0.25").unwrap(), (1234.5, 0.25));
        assert!(parse_result("ready").is_err());
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!((0..4).map(|i| share(4002, 4, i)).collect::<Vec<_>>(), [1001, 1001, 1000, 1000]);
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&sorted, 50), percentile(&sorted, 99)), (51.0, 100.0));
    }
}
