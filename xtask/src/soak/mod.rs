//! `cargo xtask soak`: the promise that nothing is lost, under many faults at once.
//!
//! A round sends `--messages` scripted messages over four channels of a durable emulator (a
//! queue, a topic subscription, a session queue, and a queue whose guest sends onward and
//! redirects), and two hosts of the test guest consume them. Every call that gets far enough
//! sends a record to `soak-done` before anything is settled (`record:` of the test guest).
//! Meanwhile faults strike as the work progresses: calls trap (10 %), overrun their deadline,
//! hosts are SIGKILLed and restarted, every connection is dropped (the emulator's SIGUSR1), and
//! the emulator itself is SIGKILLed and restarted on its data directory.
//!
//! When every input is empty, the round accounts for every message: handled, dead-lettered (and
//! why), or still queued; any other is lost. A message handled more than once must be explained
//! by a fault that took its lock: one that struck the host holding it between the two calls. The
//! round fails on a lost message or an unexplained duplicate. With `--duration`, rounds repeat
//! until it has passed.
//!
//! This module runs a round: the emulator, the hosts, the messages and the faults, then it
//! collects what is left on every entity. `report` turns that into the account.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use amqp_servicebus::{ClientOptions, Message, ReceivedMessage, RetryPolicy, ServiceBusClient};
use anyhow::{Context as _, Result, bail, ensure};

use crate::procs::{EmulatorProcess, HostProcess, metric, scrape};
use crate::{guests, paths, procs};

mod report;

use report::{Outcome, Record, id_in};

/// `cargo xtask soak`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Messages per round.
    pub messages: usize,
    /// Keep starting rounds until this much time has passed (one round if none).
    pub duration: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self { messages: 10_000, duration: None }
    }
}

impl Options {
    /// Parses `[--messages N] [--duration D]` (`D`: `90s`, `30m`, `2h`).
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self::default();
        for (flag, value) in crate::flag_values(args)? {
            match flag {
                "--messages" => {
                    options.messages = value.parse().ok().filter(|n| *n >= CHANNELS.len()).with_context(|| {
                        format!(
                            "'--messages' takes a number of messages of at least {}, but got '{value}'",
                            CHANNELS.len()
                        )
                    })?;
                }
                "--duration" => options.duration = Some(parse_duration(value)?),
                other => bail!("unknown option '{other}' for soak (it takes --messages N and --duration D)"),
            }
        }
        Ok(options)
    }
}

/// `90s`, `30m`, `2h`.
fn parse_duration(text: &str) -> Result<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds = match (number.parse::<u64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n * 60,
        (Ok(n), "h") => n * 3600,
        _ => bail!("'--duration' takes a number with s, m or h, such as 90s, 30m or 2h, but got '{text}'"),
    };
    ensure!(seconds > 0, "'--duration' must be longer than 0, but got '{text}'");
    Ok(Duration::from_secs(seconds))
}

/// One input of the soak: the host's channel, where messages are sent, and what the guest does
/// after it recorded the call.
struct Channel {
    name: &'static str,
    send_to: &'static str,
    sessions: bool,
    then: &'static str,
}

const CHANNELS: [Channel; 4] = [
    Channel { name: "soak-plain", send_to: "soak-plain", sessions: false, then: "" },
    Channel { name: "soak-topic/Subscriptions/soak-sub", send_to: "soak-topic", sessions: false, then: "" },
    Channel { name: "soak-sessions", send_to: "soak-sessions", sessions: true, then: "" },
    Channel {
        name: "soak-relay",
        send_to: "soak-relay",
        sessions: false,
        then: ";send:soak-onward;redirect:soak-parked",
    },
];

/// Where records, onward sends and redirects land.
const RECORDS: &str = "soak-done";
const ONWARD: &str = "soak-onward";
const PARKED: &str = "soak-parked";
/// The session queue's sessions.
const SESSIONS: usize = 40;
/// A message's deliveries before Service Bus dead-letters it.
const MAX_DELIVERY_COUNT: u32 = 10;
/// The hosts' deadline for a handler call, and how long a guest that overruns it sleeps.
const HANDLER_TIMEOUT: &str = "5s";
const OVERRUN_MS: u32 = 6_000;
/// The hosts, by the name each gives its records (`handled-by`).
const HOSTS: [&str; 2] = ["a", "b"];

/// A fault, and the share of the round's messages handled when it strikes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGUSR1 to the emulator: every connection dropped.
    DropConnections,
    /// SIGKILL to a host (restarted a second later).
    KillHost(usize),
    /// SIGKILL to the emulator, restarted on its data directory and port.
    RestartEmulator,
}

const SCHEDULE: [(f64, Fault); 7] = [
    (0.08, Fault::DropConnections),
    (0.15, Fault::KillHost(0)),
    (0.25, Fault::DropConnections),
    (0.35, Fault::KillHost(1)),
    (0.50, Fault::RestartEmulator),
    (0.62, Fault::DropConnections),
    (0.72, Fault::KillHost(0)),
];

impl Fault {
    /// Whether this fault can take a lock held by `host`.
    fn hits(self, host: &str) -> bool {
        match self {
            Fault::KillHost(h) => HOSTS[h] == host,
            Fault::DropConnections | Fault::RestartEmulator => true,
        }
    }

    fn describe(self) -> String {
        match self {
            Fault::DropConnections => "every connection dropped".into(),
            Fault::KillHost(h) => format!("host {} SIGKILLed", HOSTS[h]),
            Fault::RestartEmulator => "the emulator SIGKILLed and restarted".into(),
        }
    }
}

/// A fault as it struck: when (wall clock, as the emulator stamps enqueued times) and how far
/// into the round.
struct Struck {
    fault: Fault,
    at: SystemTime,
    after: Duration,
}

/// Runs rounds until `--duration` has passed (one without it); fails if any lost a message or
/// left a duplicate unexplained.
pub fn run(options: Options) -> Result<()> {
    let components = guests::ensure_built()?;
    let (emulator, host) = procs::build_binaries()?;
    let env = Env {
        emulator,
        host,
        guest: components.path("test-guest")?,
        dir: paths::target_dir().join("soak"),
        runtime: tokio::runtime::Runtime::new()?,
    };
    let started = Instant::now();
    let mut round = 0;
    loop {
        round += 1;
        let outcome = env.round(round, options.messages)?;
        println!("{outcome}");
        ensure!(outcome.passed(), "soak round {round} failed: {}", outcome.verdict());
        if options.duration.is_none_or(|d| started.elapsed() >= d) {
            break;
        }
    }
    println!("soak: {round} round(s) of {} messages in {:.0?}, nothing lost", options.messages, started.elapsed());
    Ok(())
}

struct Env {
    emulator: PathBuf,
    host: PathBuf,
    guest: PathBuf,
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// One incarnation of a host: the process while it runs, and its last metrics.
struct Incarnation {
    host: usize,
    process: Option<HostProcess>,
    metrics: Vec<(String, String, f64)>,
}

impl Incarnation {
    fn total(&self, name: &str) -> f64 {
        CHANNELS.iter().map(|c| metric(&self.metrics, name, c.name)).sum()
    }
}

impl Env {
    fn round(&self, round: usize, messages: usize) -> Result<Outcome> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir)?;
        let config = self.dir.join("Config.json");
        let lock = "PT5S";
        let mut queues: Vec<serde_json::Value> = CHANNELS
            .iter()
            .filter(|c| c.send_to == c.name)
            .map(|c| procs::queue_json(c.name, lock, MAX_DELIVERY_COUNT, c.sessions))
            .collect();
        queues.extend([RECORDS, ONWARD, PARKED].map(|q| procs::queue_json(q, "PT30S", 10, false)));
        let topic = procs::topic_json("soak-topic", &[("soak-sub", lock, MAX_DELIVERY_COUNT)]);
        procs::write_namespace_config(&config, "soak", queues, vec![topic])?;
        let data = self.dir.join("data");
        let durable = ["--data-dir".as_ref(), data.as_os_str(), "--fsync".as_ref(), "batch".as_ref()];
        let mut emulator = EmulatorProcess::start_with(&self.emulator, Some(&config), 0, &durable)?;
        let port = emulator.port;
        let cs = emulator.connection_string();
        let client = client(&cs)?;

        // Every message up front, acknowledged before any host starts.
        let ids: Vec<String> = (0..messages).map(|i| format!("r{round}-m{i}")).collect();
        self.runtime.block_on(async {
            for (c, channel) in CHANNELS.iter().enumerate() {
                let sender = client.sender(channel.send_to);
                let mine: Vec<Message> = ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % CHANNELS.len() == c)
                    .map(|(i, id)| {
                        let mut m = Message::new(format!(
                            "note:{id};strict;chance:10:trap;chance:0.5:sleep:{OVERRUN_MS};chance:0.05:loop;record:{RECORDS}{}",
                            channel.then
                        ));
                        m.message_id = Some(id.clone());
                        if channel.sessions {
                            m.session_id = Some(format!("s{}", i % SESSIONS));
                        }
                        m
                    })
                    .collect();
                for chunk in mine.chunks(100) {
                    sender.send_batch(chunk.to_vec()).await?;
                }
            }
            anyhow::Ok(())
        })?;

        let (started, began) = (Instant::now(), SystemTime::now());
        let mut hosts: Vec<Incarnation> = Vec::new();
        for h in 0..HOSTS.len() {
            hosts.push(self.start_host(h, &cs, 1)?);
        }
        let mut struck: Vec<Struck> = Vec::new();
        let mut restarts: Vec<(usize, Instant)> = Vec::new();
        let limit = Duration::from_secs(300) + Duration::from_millis(100 * messages as u64);
        let mut checked_empty = Instant::now();
        let finished = loop {
            std::thread::sleep(Duration::from_millis(200));
            for inc in hosts.iter_mut() {
                let Some(process) = inc.process.as_mut() else { continue };
                if let Some(status) = process.exited() {
                    bail!("host {} exited on its own ({status}); its log: {}", HOSTS[inc.host], process.log.display());
                }
                if let Ok(m) = scrape(process.metrics) {
                    inc.metrics = m;
                }
            }
            let handled: f64 = hosts
                .iter()
                .map(|i| i.total("messaging_completed_total") + i.total("messaging_redirected_total"))
                .sum();
            if let Some(&(at, fault)) = SCHEDULE.get(struck.len())
                && handled >= at * messages as f64
            {
                let (now, after) = (SystemTime::now(), started.elapsed());
                match fault {
                    Fault::DropConnections => emulator.signal("USR1")?,
                    Fault::KillHost(h) => {
                        let inc =
                            hosts.iter_mut().find(|i| i.host == h && i.process.is_some()).context("a running host")?;
                        let process = inc.process.take().context("a running host")?;
                        process.signal("KILL")?;
                        drop(process);
                        restarts.push((h, Instant::now() + Duration::from_secs(1)));
                    }
                    Fault::RestartEmulator => {
                        emulator.signal("KILL")?;
                        drop(emulator);
                        emulator = EmulatorProcess::start_with(&self.emulator, Some(&config), port, &durable)?;
                    }
                }
                struck.push(Struck { fault, at: now, after });
            }
            for (h, when) in std::mem::take(&mut restarts) {
                if Instant::now() >= when {
                    let n = hosts.iter().filter(|i| i.host == h).count() + 1;
                    hosts.push(self.start_host(h, &cs, n)?);
                } else {
                    restarts.push((h, when));
                }
            }
            if struck.len() == SCHEDULE.len()
                && restarts.is_empty()
                && checked_empty.elapsed() >= Duration::from_secs(1)
            {
                checked_empty = Instant::now();
                if self.inputs_empty(&client)? {
                    break true;
                }
            }
            if started.elapsed() > limit {
                break false;
            }
        };
        let elapsed = started.elapsed();
        for inc in hosts.iter_mut() {
            if let Some(process) = inc.process.as_mut() {
                if let Ok(m) = scrape(process.metrics) {
                    inc.metrics = m;
                }
                process.signal("TERM")?;
                ensure!(
                    process.wait()?,
                    "host {} did not exit cleanly; its log: {}",
                    HOSTS[inc.host],
                    process.log.display()
                );
            }
        }
        let outcome = self.account(&client, round, &ids, &struck, &hosts, finished, began, elapsed)?;
        emulator.stop()?;
        Ok(outcome)
    }

    fn start_host(&self, h: usize, cs: &str, incarnation: usize) -> Result<Incarnation> {
        let name = HOSTS[h];
        let channels: Vec<&str> = CHANNELS.iter().map(|c| c.name).collect();
        let toml = self.dir.join(format!("host-{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                "[guest]\nallowed-targets = [\"{RECORDS}\", \"{ONWARD}\", \"{PARKED}\"]\n\
                 env = {{ TEST_GUEST_CHANNELS = \"{}\" }}\n\n\
                 [guest.config]\nhost-name = \"{name}\"\n\n\
                 [defaults]\nhandler-timeout = \"{HANDLER_TIMEOUT}\"\nmax-concurrent-calls = 16\n\n\
                 [channels.\"soak-sessions\"]\nrequires-session = true\nmax-concurrent-sessions = 8\n\
                 session-idle-timeout = \"500ms\"\n",
                channels.join(",")
            ),
        )?;
        let log = self.dir.join(format!("host-{name}-{incarnation}.log"));
        let process = HostProcess::start(&self.host, &self.guest, &toml, cs, &log)?;
        Ok(Incarnation { host: h, process: Some(process), metrics: Vec::new() })
    }

    /// Whether every input is empty: nothing active, locked, deferred or scheduled.
    fn inputs_empty(&self, client: &ServiceBusClient) -> Result<bool> {
        for c in &CHANNELS {
            if !self.runtime.block_on(client.receiver(c.name).peek(1, 1))?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes everything on `entity` ([`crate::e2e::take_all`]).
    fn take_all(&self, client: &ServiceBusClient, entity: &str) -> Result<Vec<ReceivedMessage>> {
        crate::e2e::take_all(&self.runtime, client, entity)
    }

    /// Everything on `entity` without taking it (peek), in sequence order.
    fn peek_all(&self, client: &ServiceBusClient, entity: &str) -> Result<Vec<ReceivedMessage>> {
        self.runtime.block_on(async {
            let r = client.receiver(entity);
            let (mut out, mut from) = (Vec::new(), 1);
            loop {
                let got: Vec<ReceivedMessage> = r.peek(from, 250).await?;
                let Some(last) = got.last() else { return anyhow::Ok(out) };
                from = last.sequence_number + 1;
                out.extend(got);
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn account(
        &self,
        client: &ServiceBusClient,
        round: usize,
        ids: &[String],
        struck: &[Struck],
        hosts: &[Incarnation],
        finished: bool,
        began: SystemTime,
        elapsed: Duration,
    ) -> Result<Outcome> {
        let mut records: HashMap<String, Vec<Record>> = HashMap::new();
        for m in self.take_all(client, RECORDS)? {
            let record = Record::of(&m)?;
            records.entry(record.id.clone()).or_default().push(record);
        }
        let copies = |entity: &str| -> Result<HashMap<String, Vec<SystemTime>>> {
            let mut by_id: HashMap<String, Vec<SystemTime>> = HashMap::new();
            for m in self.take_all(client, entity)? {
                by_id.entry(id_in(&m)?).or_default().push(m.enqueued_time.unwrap_or(SystemTime::UNIX_EPOCH));
            }
            Ok(by_id)
        };
        let (onward, parked) = (copies(ONWARD)?, copies(PARKED)?);
        let mut dead: HashMap<String, String> = HashMap::new();
        let mut queued: HashMap<String, &'static str> = HashMap::new();
        for c in &CHANNELS {
            for m in self.take_all(client, &format!("{}/$DeadLetterQueue", c.name))? {
                dead.insert(id_in(&m)?, m.dead_letter_reason().unwrap_or("(no reason)").to_string());
            }
            for m in self.peek_all(client, c.name)? {
                queued.insert(id_in(&m)?, c.name);
            }
        }

        let mut outcome = Outcome::new(round, ids.len(), finished, began, elapsed, struck, hosts);
        for (i, id) in ids.iter().enumerate() {
            let channel = &CHANNELS[i % CHANNELS.len()];
            let row = outcome.channels.entry(channel.name).or_default();
            row.sent += 1;
            let handled = records.get(id).map(Vec::as_slice).unwrap_or_default();
            let relayed = !channel.then.is_empty();
            if let Some(reason) = dead.get(id) {
                row.dead_lettered += 1;
                *outcome.dead_reasons.entry(reason.clone()).or_default() += 1;
            } else if queued.contains_key(id) {
                row.queued += 1;
            } else if handled.is_empty() {
                row.lost += 1;
                outcome.lost.push(format!("{id}: never handled, not dead-lettered, not queued"));
            } else if relayed && !(parked.contains_key(id) && onward.contains_key(id)) {
                row.lost += 1;
                outcome.lost.push(format!(
                    "{id}: handled, but {} of {ONWARD} and {} of {PARKED}",
                    onward.get(id).map_or(0, Vec::len),
                    parked.get(id).map_or(0, Vec::len)
                ));
            } else {
                row.handled += 1;
            }
            // Each call after the first must be explained by a fault that took the lock of the
            // call before it.
            let mut calls: Vec<&Record> = handled.iter().collect();
            calls.sort_by_key(|r| (r.from, r.at));
            row.again += calls.len().saturating_sub(1);
            for pair in calls.windows(2) {
                outcome.explain(id, pair[0], pair[1]);
            }
            // A call sends each copy once: as many copies as calls are the calls' duplicates,
            // explained above. A copy more was sent twice by one call (a send retried after
            // a fault took its answer), and needs a fault between the first copy and the last.
            for (entity, copies) in [(ONWARD, &onward), (PARKED, &parked)] {
                let mut times = copies.get(id).cloned().unwrap_or_default();
                times.sort();
                if times.len() > calls.len().max(1)
                    && let (Some(&first), Some(&last)) = (times.first(), times.last())
                {
                    outcome.explain_copy(id, entity, times.len() - calls.len().max(1), first, last);
                }
            }
        }
        Ok(outcome)
    }
}

fn client(cs: &str) -> Result<ServiceBusClient> {
    let retry = RetryPolicy { max_retries: 20, initial_backoff: Duration::from_millis(100), ..RetryPolicy::default() };
    Ok(ServiceBusClient::new(cs, ClientOptions { retry, ..ClientOptions::default() })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;

    #[test]
    fn options_take_a_count_and_a_duration_and_name_what_is_wrong() {
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        let o = Options::parse(&args(&["--messages", "400", "--duration", "30m"])).unwrap();
        assert_eq!(o, Options { messages: 400, duration: Some(Duration::from_secs(1800)) });
        for (bad, says) in [
            (&["--messages", "3"][..], "at least 4"),
            (&["--messages"][..], "'--messages' needs a value"),
            (&["--duration", "ten"][..], "such as 90s"),
            (&["--duration", "0s"][..], "longer than 0"),
            (&["--rounds", "2"][..], "unknown option '--rounds'"),
        ] {
            let e = Options::parse(&args(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_fault_explains_only_what_it_could_have_unlocked() {
        assert!(Fault::KillHost(0).hits("a") && !Fault::KillHost(0).hits("b"));
        assert!(Fault::DropConnections.hits("b") && Fault::RestartEmulator.hits("a"));
    }
}
