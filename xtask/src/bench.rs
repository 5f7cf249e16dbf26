//! `cargo xtask bench`: end-to-end numbers on the embedded emulator (release builds).
//!
//! - start-up: the emulator until it listens; the host until it serves, with its compiled
//!   guest already cached;
//! - the host's resident memory, idle, consuming 10 channels;
//! - drain throughput of 1 KiB messages from a pre-filled queue, each received in peek-lock
//!   and completed, by (a) the host with a guest that completes every message, (b) a native
//!   Rust handler on amqp-servicebus with the same settings (16 concurrent, batch 1, no
//!   prefetch), (c) the official Python SDK.
//!
//! Each measurement uses a fresh emulator process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use amqp_servicebus::{ClientOptions, Message, ServiceBusClient};
use anyhow::{Context as _, Result, bail};

use crate::procs::{EmulatorProcess, HostProcess, metric, scrape};
use crate::{guests, paths, python};

const MESSAGES: usize = 5000;
const CONCURRENCY: usize = 16;

fn build_release() -> Result<(PathBuf, PathBuf)> {
    let status = guests::cargo()
        .current_dir(paths::repo_root())
        .args(["build", "--release", "--locked", "-p", "servicebus-emulator", "-p", "host-runtime", "--bins"])
        .env("CARGO_TARGET_DIR", paths::target_dir())
        .status()?;
    if !status.success() {
        bail!("the release build failed");
    }
    let dir = paths::target_dir().join("release");
    Ok((dir.join("servicebus-emulator"), dir.join("messaging-host")))
}

fn config(dir: &Path, queues: &[&str]) -> Result<PathBuf> {
    let queues: Vec<_> = queues
        .iter()
        .map(|q| serde_json::json!({"Name": q, "Properties": {"LockDuration": "PT1M", "MaxDeliveryCount": 10}}))
        .collect();
    let doc = serde_json::json!({"UserConfig": {"Namespaces": [{"Name": "bench", "Queues": queues, "Topics": []}], "Logging": {"Type": "Console"}}});
    let path = dir.join("bench.Config.json");
    std::fs::write(&path, serde_json::to_string(&doc)?)?;
    Ok(path)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the benchmarks and prints a Markdown table for BENCHMARKS.md.
pub fn run() -> Result<()> {
    let components = guests::ensure_built()?;
    let test_guest = components.path("test-guest")?;
    let (emulator_bin, host_bin) = build_release()?;
    let dir = paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let channels: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    let mut queues: Vec<&str> = channels.iter().map(String::as_str).collect();
    queues.push("work");
    let cfg = config(&dir, &queues)?;

    // Start-up of the emulator.
    let mut ready = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let e = EmulatorProcess::start(&emulator_bin, Some(&cfg), 0)?;
        ready.push(started.elapsed());
        e.stop()?;
    }
    let emulator_ready = median(ready);

    // Host start-up with the compiled guest cached, and its idle memory on 10 channels.
    let emu = EmulatorProcess::start(&emulator_bin, Some(&cfg), 0)?;
    let toml = dir.join("idle.host.toml");
    std::fs::write(&toml, format!("[guest]\nenv = {{ TEST_GUEST_CHANNELS = \"{}\" }}\n", channels.join(",")))?;
    let mut host_ready = Vec::new();
    let mut rss_kib = 0;
    for i in 0..4 {
        let started = Instant::now();
        let mut host =
            HostProcess::start(&host_bin, &test_guest, &toml, &emu.connection_string(), &dir.join("idle.log"))?;
        if i > 0 {
            host_ready.push(started.elapsed()); // The first start compiled and cached the guest.
        }
        std::thread::sleep(Duration::from_secs(1));
        rss_kib = rss_of(&host)?;
        host.signal("TERM")?;
        host.wait()?;
    }
    drop(emu);
    let host_ready = median(host_ready);

    let host = throughput_host(&runtime, &emulator_bin, &host_bin, &test_guest, &cfg, &dir)?;
    let native = throughput_native(&runtime, &emulator_bin, &cfg)?;
    let python = throughput_python(&runtime, &emulator_bin, &cfg)?;
    let brokers = broker_comparison(&runtime, &emulator_bin, &cfg, &dir)?;

    println!("| Measure | Result |");
    println!("|---|---|");
    println!("| emulator ready (median of 5) | {:.1} ms |", emulator_ready.as_secs_f64() * 1e3);
    println!("| host ready, cached compiled guest (median of 3) | {:.0} ms |", host_ready.as_secs_f64() * 1e3);
    println!("| host idle RSS, 10 channels | {:.1} MB |", rss_kib as f64 / 1024.0);
    println!("| (a) host + completing guest, 1 queue, 16 concurrent | {host:.0} msgs/s |");
    println!("| (b) native Rust handler, same settings | {native:.0} msgs/s |");
    println!("| (c) Python SDK (azure-servicebus 7.15), receive + complete | {python:.0} msgs/s |");
    println!("| (a) ÷ (b) | {:.2} |", host / native);
    println!("| (a) ÷ (c) | {:.1}× |", host / python);
    match brokers {
        Some((emulator, rabbit)) => {
            println!("| emulator, generic AMQP mode (SASL PLAIN, link settlement) | {emulator:.0} msgs/s |");
            println!("| RabbitMQ AMQP 1.0 plugin, same client and settings | {rabbit:.0} msgs/s |");
            println!("| emulator ÷ RabbitMQ | {:.1}× |", emulator / rabbit);
        }
        None => println!(
            "| emulator ÷ RabbitMQ | not measured: rabbitmq-server is not installed (apt-get install rabbitmq-server) |"
        ),
    }
    Ok(())
}

fn rss_of(host: &HostProcess) -> Result<u64> {
    let pid = host.pid().context("the host is running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn fill(runtime: &tokio::runtime::Runtime, cs: &str, script: &str) -> Result<ServiceBusClient> {
    let client = ServiceBusClient::new(cs, ClientOptions::default())?;
    runtime.block_on(async {
        let sender = client.sender("work");
        let mut body = script.as_bytes().to_vec();
        body.resize(1024, b' ');
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
            sender.send_batch(chunk.iter().map(|_| Message::new(body.clone())).collect()).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(client)
}

fn throughput_host(
    runtime: &tokio::runtime::Runtime,
    emulator: &Path,
    host_bin: &Path,
    guest: &Path,
    cfg: &Path,
    dir: &Path,
) -> Result<f64> {
    let emu = EmulatorProcess::start(emulator, Some(cfg), 0)?;
    let _client = fill(runtime, &emu.connection_string(), "ok;note:")?;
    let toml = dir.join("work.host.toml");
    std::fs::write(
        &toml,
        format!(
            "[guest]\nenv = {{ TEST_GUEST_CHANNELS = \"work\" }}\n[defaults]\nmax-concurrent-calls = {CONCURRENCY}\n"
        ),
    )?;
    let mut host = HostProcess::start(host_bin, guest, &toml, &emu.connection_string(), &dir.join("work.log"))?;
    let started = Instant::now();
    loop {
        let done = metric(&scrape(host.metrics)?, "messaging_completed_total", "work") as usize;
        if done >= MESSAGES {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the host completed {done} of {MESSAGES} in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    host.signal("TERM")?;
    host.wait()?;
    Ok(rate)
}

fn throughput_native(runtime: &tokio::runtime::Runtime, emulator: &Path, cfg: &Path) -> Result<f64> {
    // A release build of the client's `drain` example: the host's strategy without the Wasm.
    let status = guests::cargo()
        .current_dir(paths::repo_root())
        .args(["build", "--release", "--locked", "-p", "amqp-servicebus", "--example", "drain"])
        .env("CARGO_TARGET_DIR", paths::target_dir())
        .status()?;
    if !status.success() {
        bail!("building the drain example failed");
    }
    let emu = EmulatorProcess::start(emulator, Some(cfg), 0)?;
    let _client = fill(runtime, &emu.connection_string(), "native")?;
    let out = Command::new(paths::target_dir().join("release/examples/drain"))
        .args([emu.connection_string(), "work".into(), MESSAGES.to_string(), CONCURRENCY.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("the native drain failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn throughput_python(runtime: &tokio::runtime::Runtime, emulator: &Path, cfg: &Path) -> Result<f64> {
    let python = python::ensure_venv()?;
    let emu = EmulatorProcess::start(emulator, Some(cfg), 0)?;
    let _client = fill(runtime, &emu.connection_string(), "python")?;
    let script = format!(
        r#"
import sys, time
from azure.servicebus import ServiceBusClient
with ServiceBusClient.from_connection_string(sys.argv[1]) as c:
    with c.get_queue_receiver("work", max_wait_time=5) as r:
        r.peek_messages(max_message_count=1)
        done, start = 0, time.time()
        while done < {MESSAGES}:
            for m in r.receive_messages(max_message_count=100, max_wait_time=5):
                r.complete_message(m)
                done += 1
        print({MESSAGES} / (time.time() - start))
"#
    );
    let out = Command::new(python).args(["-c", &script, &emu.connection_string()]).output()?;
    if !out.status.success() {
        bail!("the Python benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A RabbitMQ node with the AMQP 1.0 plugin, on loopback, with its state in `dir`.
struct RabbitMq {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl RabbitMq {
    /// Starts RabbitMQ if `rabbitmq-server` is installed (Debian package); `None` otherwise.
    fn start(dir: &Path) -> Result<Option<Self>> {
        if Command::new("sh").args(["-c", "command -v rabbitmq-server"]).output()?.stdout.is_empty() {
            return Ok(None);
        }
        let dir = dir.join("rabbitmq");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_amqp1_0].\n")?;
        // Started as root, the server drops to the rabbitmq user: it must own its directories.
        let _ = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&dir).status();
        let port = crate::procs::free_port()?;
        let child = Command::new("rabbitmq-server")
            .envs(Self::env(&dir, port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting rabbitmq-server")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("RabbitMQ did not listen within 60 s; its logs are in {}", dir.join("log").display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Some(Self { child, port, dir }))
    }

    fn env(dir: &Path, port: u16) -> Vec<(&'static str, String)> {
        let d = dir.display();
        vec![
            ("HOME", d.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODENAME", "xtask-bench@localhost".into()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", (port + 1).to_string()),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
            ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{d}/log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/enabled_plugins")),
            ("RABBITMQ_FEATURE_FLAGS_FILE", format!("{d}/feature_flags")),
        ]
    }

    fn connection_string(&self) -> String {
        format!(
            "Endpoint=sb://127.0.0.1:{};SharedAccessKeyName=guest;SharedAccessKey=guest;UseDevelopmentEmulator=true",
            self.port
        )
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", "xtask-bench@localhost", "stop"])
            .envs(Self::env(&self.dir, self.port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills `queue` with 1 KiB messages and drains it with the release `drain` example, in the
/// generic AMQP 1.0 dialect (SASL PLAIN, link settlement).
fn generic_throughput(runtime: &tokio::runtime::Runtime, cs: &str, queue: &str) -> Result<f64> {
    let options = ClientOptions { dialect: amqp_servicebus::Dialect::GenericAmqp, ..ClientOptions::default() };
    let client = ServiceBusClient::new(cs, options)?;
    runtime.block_on(async {
        let sender = client.sender(queue);
        for _ in 0..MESSAGES {
            sender.send(Message::new(vec![b'x'; 1024])).await?;
        }
        anyhow::Ok(())
    })?;
    let out = Command::new(paths::target_dir().join("release/examples/drain"))
        .args([cs.to_string(), queue.to_string(), MESSAGES.to_string(), CONCURRENCY.to_string(), "generic".into()])
        .output()?;
    if !out.status.success() {
        bail!("drain against {queue} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The emulator against RabbitMQ's AMQP 1.0 plugin, same client in generic mode.
fn broker_comparison(
    runtime: &tokio::runtime::Runtime,
    emulator: &Path,
    cfg: &Path,
    dir: &Path,
) -> Result<Option<(f64, f64)>> {
    let Some(rabbit) = RabbitMq::start(dir)? else {
        return Ok(None);
    };
    let rabbit_rate = generic_throughput(runtime, &rabbit.connection_string(), "/queue/work")?;
    drop(rabbit);
    let emu = EmulatorProcess::start(emulator, Some(cfg), 0)?;
    let emulator_rate = generic_throughput(runtime, &emu.connection_string(), "work")?;
    Ok(Some((emulator_rate, rabbit_rate)))
}
