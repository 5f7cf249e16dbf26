//! Starting an emulator with the queues a test needs.

use std::time::Duration;

use servicebus_emulator::{Config, Emulator, QueueConfig, QueueProperties};

/// A queue with default properties.
pub(crate) fn queue(name: &str) -> QueueConfig {
    QueueConfig { name: name.into(), properties: QueueProperties::default() }
}

/// A queue with a lock duration and max delivery count.
pub(crate) fn queue_with(name: &str, lock: Duration, max_delivery_count: u32) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        properties: QueueProperties { lock_duration: lock, max_delivery_count, ..QueueProperties::default() },
    }
}

/// A queue that requires sessions, with a lock duration and max delivery count.
pub(crate) fn session_queue(name: &str, lock: Duration, max_delivery_count: u32) -> QueueConfig {
    let mut queue = queue_with(name, lock, max_delivery_count);
    queue.properties.requires_session = true;
    queue
}

/// `config` with the entities of `tests/moving.json` added: duplicate detection, forwarding
/// chains and loops, and small quotas, in Microsoft's `Config.json` schema.
pub(crate) fn with_moving_entities(mut config: Config) -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moving.json");
    let moving = Config::from_file(std::path::Path::new(path)).expect("tests/moving.json loads");
    assert!(moving.warnings.is_empty(), "{:?}", moving.warnings);
    config.queues.extend(moving.queues);
    config.topics.extend(moving.topics);
    config
}

/// The connection string of the administration client for a management endpoint: HTTPS at
/// `addr`, with the default key (the SDKs' administration clients take the endpoint's host
/// and port from `Endpoint`).
pub(crate) fn admin_connection_string(addr: std::net::SocketAddr) -> String {
    use servicebus_emulator::auth::{DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE};
    format!("Endpoint=sb://{addr};SharedAccessKeyName={DEFAULT_KEY_NAME};SharedAccessKey={DEFAULT_KEY_VALUE}")
}

/// Starts an emulator on 127.0.0.1:0 with these queues.
pub(crate) async fn start(queues: Vec<QueueConfig>) -> Emulator {
    let config = Config { queues, ..Config::default() };
    Emulator::builder().config(config).bind("127.0.0.1:0".parse().unwrap()).start().await.expect("the emulator starts")
}
