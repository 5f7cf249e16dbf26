//! An emulator, a host running a guest on it, and a client to drive and observe them.

use std::path::PathBuf;
use std::time::Duration;

use amqp_servicebus::{ClientOptions, ConnectionString, Message, RetryPolicy, ServiceBusClient};
use host_runtime::config::HostConfig;
use host_runtime::engine::EngineSettings;
use host_runtime::{Host, HostOptions};
use servicebus_emulator::{Config, Emulator, QueueConfig, QueueProperties};

pub(crate) fn guest(name: &str) -> PathBuf {
    xtask::guests::ensure_built().expect("the guests build").path(name).expect("the guest exists")
}

pub(crate) fn queue(name: &str) -> QueueConfig {
    QueueConfig { name: name.into(), properties: QueueProperties::default() }
}

pub(crate) fn queue_with(name: &str, lock: Duration, max_delivery_count: u32) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        properties: QueueProperties { lock_duration: lock, max_delivery_count, ..Default::default() },
    }
}

/// A queue that requires sessions, with a 5 s lock.
pub(crate) fn session_queue(name: &str, max_delivery_count: u32) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        properties: QueueProperties {
            requires_session: true,
            lock_duration: Duration::from_secs(5),
            max_delivery_count,
            ..QueueProperties::default()
        },
    }
}

pub(crate) async fn emulator(queues: Vec<QueueConfig>) -> Emulator {
    // Logs with RUST_LOG (shown for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    Emulator::builder()
        .config(Config { queues, ..Config::default() })
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .expect("the emulator starts")
}

pub(crate) fn client_options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy { max_retries: 8, initial_backoff: Duration::from_millis(20), ..RetryPolicy::default() },
        operation_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

pub(crate) fn client(emu: &Emulator) -> ServiceBusClient {
    ServiceBusClient::new(&emu.connection_string(), client_options()).unwrap()
}

pub(crate) fn options(emu: &Emulator, component: PathBuf, config: HostConfig) -> HostOptions {
    HostOptions {
        component,
        connection: ConnectionString::parse(&emu.connection_string()).unwrap(),
        config,
        engine: EngineSettings { max_memory: 32 << 20, max_instances: 200, cache_dir: None },
        client: client_options(),
    }
}

/// Starts a host with the scripted test guest consuming `channels`.
pub(crate) async fn test_host(emu: &Emulator, channels: &str, extra_toml: &str) -> Host {
    let toml = format!(
        "[guest]\nallowed-targets = [\"reports\", \"elsewhere\"]\nenv = {{ TEST_GUEST_CHANNELS = \"{channels}\" }}\n{extra_toml}"
    );
    let config = HostConfig::parse(&toml, "host.toml").unwrap();
    Host::start(options(emu, guest("test-guest"), config)).await.expect("the host starts")
}

/// Starts a host with the scripted guest of the December 2024 revision (`test-handler`)
/// receiving from `channels`.
pub(crate) async fn handler_host(emu: &Emulator, channels: &[&str], extra_toml: &str) -> Host {
    let toml =
        format!("[guest]\nchannels = {channels:?}\nallowed-targets = [\"reports\", \"elsewhere\"]\n{extra_toml}");
    let config = HostConfig::parse(&toml, "host.toml").unwrap();
    Host::start(options(emu, guest("test-handler"), config)).await.expect("the host starts")
}

/// Sends a script for `test-handler` to `queue`; it reports to `reports` (its `report-to`
/// metadata), correlated by message-id.
pub(crate) async fn send_handler_script(c: &ServiceBusClient, queue: &str, id: &str, script: &str) {
    c.sender(queue).send(handler_script(id, script)).await.unwrap();
}

/// A script for `test-handler`, reporting to `reports` under `id`.
pub(crate) fn handler_script(id: &str, script: &str) -> Message {
    let mut m = Message::new(script.to_string());
    m.message_id = Some(id.into());
    m.application_properties.insert("report-to".into(), amqp_servicebus::SimpleValue::String("reports".into()));
    m
}

/// Sends a script to `queue`; the guest reports to `reports`, correlated by message-id.
pub(crate) async fn send_script(c: &ServiceBusClient, queue: &str, id: &str, script: &str) {
    let mut m = Message::new(script.to_string());
    m.message_id = Some(id.into());
    m.reply_to = Some("reports".into());
    c.sender(queue).send(m).await.unwrap();
}

/// The guest's reports, read from the `reports` queue by one receiver; reports for other
/// messages are kept until asked for.
pub(crate) struct Reports {
    receiver: amqp_servicebus::Receiver,
    seen: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl Reports {
    pub(crate) fn new(c: &ServiceBusClient) -> Self {
        Self { receiver: c.receiver("reports"), seen: std::sync::Mutex::new(Vec::new()) }
    }

    /// Waits for the (first) report for message `id`: its lines.
    pub(crate) async fn get(&self, id: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            {
                let mut seen = self.seen.lock().unwrap();
                if let Some(i) = seen.iter().position(|(c, _)| c == id) {
                    return seen.remove(i).1;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<String> = self.seen.lock().unwrap().iter().map(|(c, l)| format!("{c}: {l:?}")).collect();
                panic!("no report for {id}; reports seen and not yet asked for: {seen:?}");
            }
            for m in self.receiver.receive(10, Duration::from_millis(500)).await.unwrap() {
                self.receiver.complete(&m).await.unwrap();
                let lines = String::from_utf8(m.body.to_vec()).unwrap().lines().map(String::from).collect();
                self.seen.lock().unwrap().push((m.correlation_id.clone().unwrap_or_default(), lines));
            }
        }
    }
}

/// Waits until `check` holds, polling.
pub(crate) async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
