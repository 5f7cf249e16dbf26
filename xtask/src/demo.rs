//! `cargo xtask run`: the demo. Builds everything, starts the emulator (unless
//! SERVICEBUS_CONNECTION_STRING names a namespace), sends orders that take every
//! path of the sample guest, runs the host with a live per-queue view, and prints a
//! summary when the traffic is processed (or keeps going with `--follow`).

use std::io::Write as _;
use std::time::{Duration, Instant};

use amqp_servicebus::{ClientOptions, Message, ServiceBusClient};
use anyhow::{Context as _, Result, bail};

use crate::procs::{self, EmulatorProcess, HostProcess, metric, scrape};
use crate::{guests, paths};

/// The demo's orders, by kind.
pub struct Traffic {
    /// Valid orders: completed, with a payment request sent.
    pub valid: usize,
    /// Orders flagged for review: redirected to `review`.
    pub review: usize,
    /// Orders that fail once: abandoned, then completed on redelivery.
    pub transient: usize,
    /// Invalid payloads: dead-lettered with reason `InvalidOrder`.
    pub invalid: usize,
}

impl Traffic {
    /// The standard mix.
    pub const DEMO: Traffic = Traffic { valid: 20, review: 5, transient: 5, invalid: 5 };

    /// Every order, as message bodies, interleaved.
    pub fn orders(&self) -> Vec<String> {
        let mut out = Vec::new();
        let n = self.valid.max(self.review).max(self.transient).max(self.invalid);
        for i in 0..n {
            if i < self.valid {
                out.push(format!(r#"{{"id":"o-{i}","customer":"c{i}","amount_cents":{}}}"#, 100 + i));
            }
            if i < self.review {
                out.push(format!(r#"{{"id":"r-{i}","customer":"c{i}","amount_cents":{},"review":true}}"#, 5000 + i));
            }
            if i < self.transient {
                out.push(format!(
                    r#"{{"id":"t-{i}","customer":"c{i}","amount_cents":{},"transient_failure":true}}"#,
                    300 + i
                ));
            }
            if i < self.invalid {
                out.push(format!("not an order #{i}"));
            }
        }
        out
    }

    /// Orders in all.
    pub fn total(&self) -> usize {
        self.valid + self.review + self.transient + self.invalid
    }
}

/// Sends the orders to `orders`.
pub async fn send_orders(client: &ServiceBusClient, traffic: &Traffic) -> Result<()> {
    let sender = client.sender("orders");
    let messages: Vec<Message> = traffic
        .orders()
        .into_iter()
        .map(|b| {
            let mut m = Message::new(b);
            m.content_type = Some("application/json".into());
            m
        })
        .collect();
    sender.send_batch(messages).await.context("sending the demo orders")?;
    Ok(())
}

/// Whether the host has processed all of `traffic`, by its metrics.
pub fn processed(metrics: &[(String, String, f64)], traffic: &Traffic) -> bool {
    let o = |n: &str| metric(metrics, n, "orders") as usize;
    let settled = o("messaging_completed_total") + o("messaging_redirected_total") + o("messaging_dead_lettered_total");
    let payments = metric(metrics, "messaging_completed_total", "payments") as usize;
    settled >= traffic.total() && payments >= traffic.valid + traffic.transient
}

/// `cargo xtask run [--follow]`.
pub fn run(follow: bool) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    println!("== building the guests and binaries");
    let components = guests::ensure_built()?;
    let (emulator_bin, host_bin) = procs::build_binaries()?;
    let (emulator, cs) = match std::env::var("SERVICEBUS_CONNECTION_STRING") {
        Ok(cs) if !cs.is_empty() => {
            println!(
                "== using the namespace in SERVICEBUS_CONNECTION_STRING (it needs queues orders, payments, review)"
            );
            (None, cs)
        }
        _ => {
            let started = Instant::now();
            let e = EmulatorProcess::start(&emulator_bin, None, 0)?;
            println!(
                "== emulator listening on 127.0.0.1:{} (ready in {:?}); queues: orders, payments, review",
                e.port,
                started.elapsed()
            );
            let cs = e.connection_string();
            (Some(e), cs)
        }
    };
    let dir = paths::target_dir().join("demo");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("host.toml");
    std::fs::write(&config, "[guest]\nallowed-targets = [\"review\"]\n\n[defaults]\nhandler-timeout = \"30s\"\n")?;
    let client = ServiceBusClient::new(&cs, ClientOptions::default())?;
    let traffic = Traffic::DEMO;
    runtime.block_on(send_orders(&client, &traffic))?;
    println!(
        "== sent {} orders: {} valid, {} for review, {} failing once, {} invalid",
        traffic.total(),
        traffic.valid,
        traffic.review,
        traffic.transient,
        traffic.invalid
    );
    println!("== starting the host with guests/sample-guest");
    let started = Instant::now();
    let mut host =
        HostProcess::start(&host_bin, &components.path("sample-guest")?, &config, &cs, &dir.join("host.log"))?;
    narrate(&host.log_text(), started.elapsed());

    let mut last = (Instant::now(), 0.0);
    let mut done_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let metrics = scrape(host.metrics).context("reading the host's metrics")?;
        let received: f64 =
            ["orders", "payments"].iter().map(|q| metric(&metrics, "messaging_received_total", q)).sum();
        let rate = (received - last.1) / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), received);
        for q in ["orders", "payments"] {
            let m = |n: &str| metric(&metrics, n, q) as u64;
            println!(
                "  {q:<9} received {:>4}  completed {:>4}  abandoned {:>3}  redirected {:>3}  dead-lettered {:>3}  in flight {:>3}  | {rate:>7.1} msgs/s",
                m("messaging_received_total"),
                m("messaging_completed_total"),
                m("messaging_abandoned_total"),
                m("messaging_redirected_total"),
                m("messaging_dead_lettered_total"),
                m("messaging_in_flight"),
            );
        }
        let _ = std::io::stdout().flush();
        if processed(&metrics, &traffic) && done_at.is_none() {
            done_at = Some(started.elapsed());
            if !follow {
                break;
            }
            println!("== the demo traffic is processed; --follow: running until Ctrl-C");
        }
        if started.elapsed() > Duration::from_secs(300) && done_at.is_none() {
            bail!("the demo traffic was not processed within 5 minutes; host log: {}", host.log.display());
        }
    }
    let took = done_at.unwrap_or_default();
    println!("== processed in {took:?}; stopping the host (SIGTERM)");
    host.signal("TERM")?;
    if !host.wait()? {
        bail!("the host did not exit cleanly; its log: {}", host.log.display());
    }
    runtime.block_on(summary(&client, &traffic))?;
    if let Some(e) = emulator {
        e.stop()?;
    }
    Ok(())
}

fn narrate(log: &str, ready_in: Duration) {
    let plain = strip_ansi(log);
    for line in plain.lines() {
        if let Some(i) = line.find("configure() returned") {
            println!("  configure() → {}", &line[i + "configure() returned".len()..].trim());
        }
        if line.contains("worker starting") {
            let channel = line.split("channel=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("?");
            println!("  channel {channel} → worker (peek-lock; a fresh instance per delivery)");
        }
    }
    println!(
        "  host ready in {ready_in:?}: handler(message) → connect(\"default\") → send / Complete / Abandon / Redirect / DeadLetter"
    );
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads the queues back and prints what happened to the orders.
async fn summary(client: &ServiceBusClient, traffic: &Traffic) -> Result<()> {
    let review = client.receiver("review").peek(1, 1000).await?;
    let dead = client.receiver("orders/$DeadLetterQueue").peek(1, 1000).await?;
    let orders_left = client.receiver("orders").peek(1, 1000).await?;
    println!("== summary");
    println!(
        "  completed:     {} orders ({} of them after one abandon and a retry)",
        traffic.valid + traffic.transient,
        traffic.transient
    );
    println!("  redirected:    {} orders, now on the review queue: {}", traffic.review, review.len());
    let reasons: Vec<&str> = dead.iter().filter_map(|m| m.dead_letter_reason()).collect();
    println!("  dead-lettered: {} orders, reasons {:?}", dead.len(), reasons);
    println!("  payments:      {} requested and completed", traffic.valid + traffic.transient);
    println!("  left on orders: {}", orders_left.len());
    if review.len() < traffic.review || dead.len() < traffic.invalid || !orders_left.is_empty() {
        bail!(
            "the queues do not add up: review {}, dead-lettered {}, left {}",
            review.len(),
            dead.len(),
            orders_left.len()
        );
    }
    Ok(())
}
