//! A RabbitMQ node for `cargo xtask bench`'s broker comparison: Debian's `rabbitmq-server`
//! with its AMQP 1.0 plugin, on a free loopback port, with its state in a directory of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A RabbitMQ node with the AMQP 1.0 plugin, on loopback, with its state in `dir`.
pub(crate) struct RabbitMq {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RabbitMq {
    /// Starts RabbitMQ if `rabbitmq-server` is installed (Debian package); `None` otherwise.
    pub(crate) fn start(dir: &Path) -> Result<Option<Self>> {
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

    pub(crate) fn connection_string(&self) -> String {
        format!(
            "Endpoint=sb://127.0.0.1:{};SharedAccessKeyName=guest;SharedAccessKey=guest;UseDevelopmentEmulator=true",
            self.port
        )
    }

    /// The process listening on its port (the Erlang VM, `beam.smp`, run as the rabbitmq user
    /// by the `rabbitmq-server` script), for its CPU time.
    pub(crate) fn pid(&self) -> Result<u32> {
        let out = Command::new("ss").args(["-ltnpH", &format!("sport = :{}", self.port)]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("pid=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .with_context(|| format!("no process listens on RabbitMQ's port {} (ss printed {text:?})", self.port))
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", "xtask-bench@localhost", "stop"])
            .envs(Self::env(&self.dir, self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
