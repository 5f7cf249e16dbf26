//! Real processes for the demo and the end-to-end suite: the emulator and host binaries.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{guests, paths};

/// Writes an emulator `Config.json` (Microsoft's schema) to `path`: one namespace with these
/// queues, each (name, lock duration such as `PT30S`, max delivery count).
pub fn write_emulator_config(path: &Path, namespace: &str, queues: &[(&str, &str, u32)]) -> Result<()> {
    let queues: Vec<serde_json::Value> = queues.iter().map(|&(q, lock, mdc)| queue_json(q, lock, mdc, false)).collect();
    write_emulator_config_json(path, namespace, queues)
}

/// One queue of a `Config.json`: its name, lock duration (`PT30S`), max delivery count, and
/// whether it requires sessions.
pub fn queue_json(name: &str, lock: &str, max_delivery_count: u32, requires_session: bool) -> serde_json::Value {
    serde_json::json!({ "Name": name, "Properties": {
        "LockDuration": lock, "MaxDeliveryCount": max_delivery_count, "RequiresSession": requires_session,
    } })
}

/// Writes an emulator `Config.json` to `path`: one namespace with these queues ([`queue_json`]).
pub fn write_emulator_config_json(path: &Path, namespace: &str, queues: Vec<serde_json::Value>) -> Result<()> {
    write_namespace_config(path, namespace, queues, Vec::new())
}

/// One topic of a `Config.json`, with subscriptions of `(name, lock duration, max delivery
/// count)` that take every message.
pub fn topic_json(name: &str, subscriptions: &[(&str, &str, u32)]) -> serde_json::Value {
    let subscriptions: Vec<serde_json::Value> = subscriptions
        .iter()
        .map(|&(s, lock, mdc)| {
            serde_json::json!({ "Name": s, "Properties": { "LockDuration": lock, "MaxDeliveryCount": mdc }, "Rules": [] })
        })
        .collect();
    serde_json::json!({ "Name": name, "Properties": {}, "Subscriptions": subscriptions })
}

/// Writes an emulator `Config.json` to `path`: one namespace with these queues ([`queue_json`])
/// and topics ([`topic_json`]).
pub fn write_namespace_config(
    path: &Path,
    namespace: &str,
    queues: Vec<serde_json::Value>,
    topics: Vec<serde_json::Value>,
) -> Result<()> {
    let doc = serde_json::json!({ "UserConfig": { "Namespaces": [ { "Name": namespace, "Queues": queues, "Topics": topics } ], "Logging": { "Type": "Console" } } });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))
}

/// Builds the emulator and host binaries (debug) and returns their paths.
///
/// Features are resolved for the whole workspace, as `cargo test --workspace` resolves them:
/// after the tests, the binaries they built are these, and nothing is compiled again
/// (`-p servicebus-emulator -p host-runtime` unified fewer features, and rebuilt six crates,
/// 45 s to 3 minutes).
pub fn build_binaries() -> Result<(PathBuf, PathBuf)> {
    let status = guests::cargo()
        .current_dir(paths::repo_root())
        .args([
            "build",
            "--quiet",
            "--locked",
            "--workspace",
            "--bin",
            "servicebus-emulator",
            "--bin",
            "messaging-host",
        ])
        .env("CARGO_TARGET_DIR", paths::target_dir())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the emulator and host binaries failed ({status})");
    }
    let dir = paths::target_dir().join("debug");
    Ok((dir.join("servicebus-emulator"), dir.join("messaging-host")))
}

/// A free port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running emulator process.
pub struct EmulatorProcess {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl EmulatorProcess {
    /// Starts the emulator binary with a `Config.json` on `port` (0 = any), waiting until it listens.
    pub fn start(binary: &Path, config: Option<&Path>, port: u16) -> Result<Self> {
        Self::start_with(binary, config, port, &[])
    }

    /// [`Self::start`] with more arguments (`--data-dir DIR`, ...).
    pub fn start_with(binary: &Path, config: Option<&Path>, port: u16, extra: &[&std::ffi::OsStr]) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(extra);
        // Its management endpoint on a free port too, not 5300: also when it restarts on a
        // port it had before.
        cmd.args(["--port", &port.to_string(), "--management-port", "0", "--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let Some(addr) = first.strip_prefix("servicebus-emulator listening on amqp://") else {
            let _ = child.kill();
            bail!("the emulator did not start: {first:?}");
        };
        let port = addr.rsplit(':').next().unwrap_or_default().parse().context("the emulator's port")?;
        // Keep reading its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, port })
    }

    /// The connection string for it.
    pub fn connection_string(&self) -> String {
        format!(
            "Endpoint=sb://127.0.0.1:{};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true",
            self.port
        )
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `USR1`: drop every connection).
    pub fn signal(&self, name: &str) -> Result<()> {
        signal(&self.child, name)
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(mut self) -> Result<()> {
        signal(&self.child, "TERM")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running host process.
pub struct HostProcess {
    child: Option<Child>,
    /// Its metrics endpoint.
    pub metrics: SocketAddr,
    /// Where its log goes.
    pub log: PathBuf,
}

impl HostProcess {
    /// Starts the host binary on `component` with a `host.toml`, and waits until it serves metrics.
    pub fn start(binary: &Path, component: &Path, config: &Path, connection_string: &str, log: &Path) -> Result<Self> {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg(component)
            .arg("--config")
            .arg(config)
            .args(["--metrics-addr", &metrics.to_string(), "--grace-period", "20s", "--cache-dir"])
            .arg(paths::target_dir().join("host-cache"))
            .env("SERVICEBUS_CONNECTION_STRING", connection_string)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut host = Self { child: Some(child), metrics, log: log.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while scrape(metrics).is_err() {
            if let Some(status) = host.exited() {
                bail!("the host exited ({status}) before it was ready; its log:\n{}", host.log_text());
            }
            if Instant::now() > deadline {
                bail!("the host was not ready within 60 s; its log:\n{}", host.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(host)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The host's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        match &self.child {
            Some(c) => signal(c, name),
            None => Ok(()),
        }
    }

    /// Its exit status, if it has exited (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for it to exit; returns whether it exited with status 0.
    pub fn wait(&mut self) -> Result<bool> {
        match self.child.take() {
            Some(mut c) => Ok(c.wait()?.success()),
            None => Ok(true),
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, name: &str) -> Result<()> {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status()?;
    if !status.success() {
        bail!("kill -{name} {} failed", child.id());
    }
    Ok(())
}

/// The host's metrics, as `(name, channel) → value`.
pub fn scrape(addr: SocketAddr) -> Result<Vec<(String, String, f64)>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (name, labels) = key.split_once('{')?;
            let channel = labels.split("channel=\"").nth(1)?.split('"').next()?;
            Some((name.to_string(), channel.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// One metric of one channel (0 when absent).
pub fn metric(metrics: &[(String, String, f64)], name: &str, channel: &str) -> f64 {
    metrics.iter().find(|(n, c, _)| n == name && c == channel).map(|(_, _, v)| *v).unwrap_or(0.0)
}
