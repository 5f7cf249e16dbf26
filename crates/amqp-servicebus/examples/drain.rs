//! Drains queues the way `messaging-host` consumes them, without the Wasm: per queue,
//! concurrency permits first, one receive for as many messages as there are free permits, a
//! task per message that completes it. `cargo xtask bench` uses it as the native baseline.
//!
//! ```text
//! cargo run --release -p amqp-servicebus --example drain -- '<connection string>' <queue,queue,…> <count> <concurrency> [generic] [latency] [prefetch=N]
//! ```
//! It stops after `count` completions over all queues, with `concurrency` calls in flight per
//! queue, and prints `msgs/s <rate> cpu-s <CPU seconds this process used meanwhile>`.
//!
//! - `generic` uses the generic AMQP 1.0 dialect (SASL PLAIN, addresses as given, settlement
//!   on the link), for brokers such as RabbitMQ.
//! - `latency` also prints `latency-us <n>` per message, when it is handled: now minus the
//!   `sent-at-us` application property (microseconds since the Unix epoch) set by the sender.
//! - `prefetch=N` keeps N messages requested ahead of the receives (the receiver's
//!   `prefetch`), instead of granting credit per receive.

#![allow(clippy::print_stdout)] // An example program.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amqp_servicebus::{ClientOptions, ReceivedMessage, Receiver, ReceiverOptions, ServiceBusClient, SimpleValue};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cs, queues, count, concurrency, flags @ ..] = args.as_slice() else {
        anyhow::bail!(
            "usage: drain <connection string> <queue,queue,…> <count> <concurrency> [generic] [latency] [prefetch=N]"
        );
    };
    let (count, concurrency): (usize, usize) = (count.parse()?, concurrency.parse()?);
    let generic = flags.iter().any(|f| f == "generic");
    let latency = flags.iter().any(|f| f == "latency");
    let mut prefetch = 0;
    for f in flags.iter().filter(|f| *f != "generic" && *f != "latency") {
        match f.strip_prefix("prefetch=").map(str::parse) {
            Some(Ok(n)) => prefetch = n,
            _ => anyhow::bail!("unknown flag {f:?}: expected generic, latency or prefetch=<messages>"),
        }
    }
    let options = ReceiverOptions { prefetch, ..ReceiverOptions::default() };
    let dialect = if generic { amqp_servicebus::Dialect::GenericAmqp } else { amqp_servicebus::Dialect::ServiceBus };
    let client = ServiceBusClient::new(cs, ClientOptions { dialect, ..ClientOptions::default() })?;
    client.connect().await?; // Connect before timing.
    println!("ready");
    let done = Arc::new(AtomicUsize::new(0));
    // When the last message was completed, and the CPU used by then: the loops may still be
    // waiting in a receive after that, which is not part of the work.
    let finished = Arc::new(std::sync::OnceLock::new());
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let mut queues: tokio::task::JoinSet<anyhow::Result<()>> = queues
        .split(',')
        .map(|q| {
            drain_queue(
                Arc::new(client.receiver_with(q, options.clone())),
                count,
                concurrency,
                latency,
                done.clone(),
                finished.clone(),
            )
        })
        .collect();
    while let Some(r) = queues.join_next().await {
        r??;
    }
    let (end, end_cpu) = finished.get().copied().unwrap_or_else(|| (Instant::now(), cpu_seconds()));
    println!("msgs/s {} cpu-s {}", count as f64 / (end - started).as_secs_f64(), end_cpu - cpu);
    Ok(())
}

/// Receives from one queue and completes what it gets until `done` reaches `count`.
async fn drain_queue(
    receiver: Arc<Receiver>,
    count: usize,
    concurrency: usize,
    latency: bool,
    done: Arc<AtomicUsize>,
    finished: Arc<std::sync::OnceLock<(Instant, f64)>>,
) -> anyhow::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    while done.load(Ordering::Relaxed) < count {
        let mut free = vec![permits.clone().acquire_owned().await?];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            free.push(p);
        }
        for m in receiver.receive(free.len(), Duration::from_millis(200)).await? {
            let permit = free.pop().expect("one permit per message");
            let (receiver, done, finished) = (receiver.clone(), done.clone(), finished.clone());
            tasks.spawn(async move {
                if latency {
                    println!("latency-us {}", latency_us(&m)?);
                }
                receiver.complete(&m).await?;
                if done.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    let _ = finished.set((Instant::now(), cpu_seconds()));
                }
                drop(permit);
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn latency_us(m: &ReceivedMessage) -> anyhow::Result<u64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
    match m.application_properties.get("sent-at-us") {
        Some(SimpleValue::Long(sent)) => Ok(now.saturating_sub(*sent as u64)),
        other => anyhow::bail!("the message has no sent-at-us property of type long: {other:?}"),
    }
}

/// User + system CPU time of this process, from /proc/self/stat (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux.
}
