//! An emulator with the queues a test needs, and a client for it.

use std::time::Duration;

use amqp_servicebus::{ClientOptions, RetryPolicy, ServiceBusClient};
use servicebus_emulator::{Config, Emulator, QueueConfig, QueueProperties};

pub(crate) fn queue(name: &str) -> QueueConfig {
    QueueConfig { name: name.into(), properties: QueueProperties::default() }
}

pub(crate) fn queue_with_lock(name: &str, lock: Duration) -> QueueConfig {
    QueueConfig { name: name.into(), properties: QueueProperties { lock_duration: lock, ..QueueProperties::default() } }
}

/// A queue that requires sessions, with a lock of `lock`.
pub(crate) fn session_queue(name: &str, lock: Duration) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        properties: QueueProperties { lock_duration: lock, requires_session: true, ..QueueProperties::default() },
    }
}

pub(crate) async fn emulator(queues: Vec<QueueConfig>) -> Emulator {
    Emulator::builder()
        .config(Config { queues, ..Config::default() })
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .expect("the emulator starts")
}

/// Fast retries, so recovery tests take milliseconds.
pub(crate) fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy { max_retries: 8, initial_backoff: Duration::from_millis(20), ..RetryPolicy::default() },
        operation_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

pub(crate) fn client(emulator: &Emulator) -> ServiceBusClient {
    ServiceBusClient::new(&emulator.connection_string(), options()).unwrap()
}

pub(crate) const WAIT: Duration = Duration::from_secs(5);
