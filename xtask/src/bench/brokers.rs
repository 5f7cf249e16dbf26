//! The emulator against RabbitMQ: the broker comparison of `cargo xtask bench`.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use amqp_servicebus::{ClientOptions, Dialect, Message, ServiceBusClient};
use anyhow::{Context as _, Result, bail};

use super::rabbitmq::RabbitMq;
use super::{Bench, THROUGHPUT_MESSAGES, cpu_seconds, parse_result, queue_names, share, summary};
use crate::procs::EmulatorProcess;

impl Bench {
    /// The emulator against RabbitMQ's AMQP 1.0 plugin: the same release `drain` in the
    /// generic dialect (SASL PLAIN, link settlement), one process per queue, in the cells asked for.
    pub(super) fn broker_comparison(&self, repeats: usize, cells: &[(usize, usize)]) -> Result<()> {
        let rabbit = RabbitMq::start(&self.dir)?;
        if rabbit.is_none() {
            println!("RabbitMQ not measured: rabbitmq-server is not installed (apt-get install rabbitmq-server).");
        }
        println!(
            "| queues × concurrency | broker | msgs/s (median, range of {repeats}) | broker CPU µs/msg | client CPU µs/msg |"
        );
        println!("|---|---|---|---|---|");
        let mut run = 0;
        for &(queues, concurrency) in cells {
            let mut medians = Vec::new();
            for broker in
                ["emulator", "emulator --fsync batch", "emulator --fsync always", "emulator --fsync never", "RabbitMQ"]
            {
                let mut rates = Vec::new();
                let mut cpus = Vec::new();
                let mut clients = Vec::new();
                for _ in 0..repeats {
                    run += 1;
                    let (rate, cpu, client) = match (broker, &rabbit) {
                        ("emulator", _) => {
                            let emu = EmulatorProcess::start(&self.emulator, Some(&self.config), 0)?;
                            self.generic_run(&emu.connection_string(), &queue_names(queues), concurrency, emu.pid())?
                        }
                        (durable, _) if durable.starts_with("emulator --fsync") => {
                            // Durable: a fresh data directory per run, on the target's disk.
                            let dir = self.dir.join(format!("data-{run}"));
                            let _ = std::fs::remove_dir_all(&dir);
                            let policy = durable.rsplit(' ').next().unwrap_or("batch");
                            let args =
                                [OsStr::new("--data-dir"), dir.as_os_str(), OsStr::new("--fsync"), OsStr::new(policy)];
                            let emu = EmulatorProcess::start_with(&self.emulator, Some(&self.config), 0, &args)?;
                            let result = self.generic_run(
                                &emu.connection_string(),
                                &queue_names(queues),
                                concurrency,
                                emu.pid(),
                            );
                            drop(emu);
                            let _ = std::fs::remove_dir_all(&dir);
                            result?
                        }
                        (_, Some(r)) => {
                            let names: Vec<_> = (0..queues).map(|i| format!("/queue/bench-{run}-{i}")).collect();
                            self.generic_run(&r.connection_string(), &names, concurrency, r.pid()?)?
                        }
                        (_, None) => continue,
                    };
                    rates.push(rate);
                    cpus.push(cpu);
                    clients.push(client);
                }
                if rates.is_empty() {
                    continue;
                }
                let (rate, lo, hi) = summary(&rates);
                println!(
                    "| {queues} × {concurrency} | {broker} | **{rate:.0}** ({lo:.0}–{hi:.0}) | {:.0} | {:.0} |",
                    summary(&cpus).0,
                    summary(&clients).0
                );
                medians.push(rate);
            }
            if let [emulator, batch, always, never, ..] = medians[..] {
                println!(
                    "| {queues} × {concurrency} | durable ÷ in memory | batch **{:.2}×**, always {:.2}×, never {:.2}× | | |",
                    batch / emulator,
                    always / emulator,
                    never / emulator
                );
            }
            if let [emulator, .., rabbit] = medians[..]
                && medians.len() == 5
            {
                println!("| {queues} × {concurrency} | emulator ÷ RabbitMQ | **{:.2}×** | | |", emulator / rabbit);
            }
        }
        Ok(())
    }

    /// Fills `queues` through the generic dialect and drains them with `drain … generic`:
    /// msgs/s, and the broker's and the client's CPU µs per message while draining.
    fn generic_run(&self, cs: &str, queues: &[String], concurrency: usize, broker_pid: u32) -> Result<(f64, f64, f64)> {
        let options = ClientOptions { dialect: Dialect::GenericAmqp, ..ClientOptions::default() };
        let client = ServiceBusClient::new(cs, options)?;
        self.runtime.block_on(async {
            for (i, queue) in queues.iter().enumerate() {
                let sender = client.sender(queue);
                for _ in 0..share(THROUGHPUT_MESSAGES, queues.len(), i) {
                    sender.send(Message::new(vec![b'x'; 1024])).await?;
                }
            }
            anyhow::Ok(())
        })?;
        // One client process per queue: with one process for all queues, the client's own
        // pipeline (fe2o3's connection, session and link tasks) is what bounds the run.
        // Each grants its queue's whole share as credit once, at attach: credit granted again
        // while transfers are on their way trips a defect of fe2o3's receiver against brokers
        // that send flow frames, as RabbitMQ does (BENCHMARKS.md), and the link is lost.
        let mut drains = Vec::new();
        for (i, queue) in queues.iter().enumerate() {
            let share = share(THROUGHPUT_MESSAGES, queues.len(), i);
            let mut child = Command::new(&self.drain)
                .args([
                    cs,
                    queue,
                    &share.to_string(),
                    &concurrency.to_string(),
                    "generic",
                    &format!("prefetch={share}"),
                ])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut lines = BufReader::new(child.stdout.take().context("stdout is piped")?).lines();
            match lines.next().transpose()? {
                Some(l) if l == "ready" => drains.push((child, lines, share)),
                other => bail!("drain against {queue} did not start ({}): {other:?}", child.wait()?),
            }
        }
        let broker0 = cpu_seconds(broker_pid)?;
        let (mut longest, mut client) = (0f64, 0f64);
        for (mut child, lines, share) in drains {
            let last = lines.last().transpose()?.unwrap_or_default();
            let status = child.wait()?;
            let (rate, cpu) = parse_result(&last).with_context(|| format!("drain against {queues:?} ({status})"))?;
            longest = longest.max(share as f64 / rate);
            client += cpu;
        }
        let broker = cpu_seconds(broker_pid)? - broker0;
        let n = THROUGHPUT_MESSAGES as f64;
        Ok((n / longest, broker * 1e6 / n, client * 1e6 / n))
    }
}
