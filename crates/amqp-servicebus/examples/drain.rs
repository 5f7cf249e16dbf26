//! Drains a queue the way `messaging-host` consumes one, without the Wasm: concurrency
//! permits first, one receive for as many messages as there are free permits, a task per
//! message that completes it. Prints messages per second. `cargo xtask bench` uses it as the
//! native baseline.
//!
//! ```text
//! cargo run --release -p amqp-servicebus --example drain -- '<connection string>' <queue> <count> <concurrency> [generic]
//! ```
//! `generic` uses the generic AMQP 1.0 dialect (SASL PLAIN, addresses as given, settlement on the
//! link), for brokers such as RabbitMQ.

#![allow(clippy::print_stdout)] // An example program.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amqp_servicebus::{ClientOptions, ServiceBusClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cs, queue, count, concurrency, generic) = match args.as_slice() {
        [cs, q, n, c] => (cs, q, n, c, false),
        [cs, q, n, c, g] if g == "generic" => (cs, q, n, c, true),
        _ => anyhow::bail!("usage: drain <connection string> <queue> <count> <concurrency> [generic]"),
    };
    let (count, concurrency): (usize, usize) = (count.parse()?, concurrency.parse()?);
    let dialect = if generic { amqp_servicebus::Dialect::GenericAmqp } else { amqp_servicebus::Dialect::ServiceBus };
    let client = ServiceBusClient::new(cs, ClientOptions { dialect, ..ClientOptions::default() })?;
    let receiver = Arc::new(client.receiver(queue));
    client.connect().await?; // Connect before timing.
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    while done.load(Ordering::Relaxed) < count {
        let mut free = vec![permits.clone().acquire_owned().await?];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            free.push(p);
        }
        for m in receiver.receive(free.len(), Duration::from_millis(200)).await? {
            let permit = free.pop().expect("one permit per message");
            let (receiver, done) = (receiver.clone(), done.clone());
            tasks.spawn(async move {
                receiver.complete(&m).await?;
                done.fetch_add(1, Ordering::Relaxed);
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
    println!("{}", count as f64 / started.elapsed().as_secs_f64());
    Ok(())
}
