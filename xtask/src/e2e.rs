//! `cargo xtask test-e2e`: black-box scenarios with real processes (the emulator and
//! host binaries) and real guests. One summary line per scenario, then
//! `N passed, N failed`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use amqp_servicebus::{ClientOptions, Message, ReceivedMessage, RetryPolicy, ServiceBusClient};
use anyhow::{Context as _, Result, bail, ensure};

use crate::demo::{Traffic, processed, send_orders};
use crate::procs::{EmulatorProcess, HostProcess, metric, scrape};
use crate::{guests, paths, procs};

struct Env {
    emulator: PathBuf,
    host: PathBuf,
    sample: PathBuf,
    test_guest: PathBuf,
    test_handler: PathBuf,
    /// The sample handler of the December 2024 revision in Rust, Python and JavaScript.
    handlers: [(&'static str, PathBuf); 3],
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
}

type Scenario = fn(&Env) -> Result<String>;

/// Runs every scenario (or those whose name contains `only`); fails if any failed.
pub fn run(only: Option<&str>) -> Result<()> {
    let components = guests::ensure_built()?;
    let (emulator, host) = procs::build_binaries()?;
    let dir = paths::target_dir().join("e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        emulator,
        host,
        sample: components.path("sample-guest")?,
        test_guest: components.path("test-guest")?,
        test_handler: components.path("test-handler")?,
        handlers: [
            ("Rust", components.path("sample-handler")?),
            ("Python", components.path("sample-handler-py")?),
            ("JavaScript", components.path("sample-handler-js")?),
        ],
        dir,
        runtime: tokio::runtime::Runtime::new()?,
    };
    let scenarios: [(&str, Scenario); 10] = [
        ("one host serves several queues", several_queues),
        ("every settlement path of the sample guest", sample_paths),
        ("a poison message reaches the DLQ after MaxDeliveryCount", poison),
        ("SIGKILL mid-traffic and restart loses nothing", sigkill_and_restart),
        ("two competing hosts process every message", competing_hosts),
        ("SIGTERM with messages in flight exits cleanly", sigterm_in_flight),
        ("the host recovers when the emulator restarts", emulator_restart),
        ("20 sessions × 50 messages, two hosts, one SIGKILL: in order, nothing lost", sessions_across_a_kill),
        ("200 requests from two requester hosts sharing a reply queue, every reply matched", request_reply),
        (
            "the sample handler in Rust, Python and JavaScript: orders become payments, bad ones are dead-lettered",
            handlers,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    let chosen: Vec<_> = scenarios.into_iter().filter(|(name, _)| only.is_none_or(|o| name.contains(o))).collect();
    ensure!(!chosen.is_empty(), "no scenario's name contains {only:?}");
    for (name, scenario) in chosen {
        let started = Instant::now();
        match scenario(&env) {
            Ok(detail) => {
                passed += 1;
                println!("PASS  {name} ({:.1}s): {detail}", started.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {name} ({:.1}s): {e:#}", started.elapsed().as_secs_f64());
                print_logs_since(&env.dir, started);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} end-to-end scenario(s) failed; logs are in {}", env.dir.display());
    }
    Ok(())
}

/// Prints the end of every log in `dir` written since `since`: a CI log then shows why a
/// scenario failed, not only that it did.
fn print_logs_since(dir: &Path, since: Instant) {
    const TAIL: usize = 25;
    let since = std::time::SystemTime::now() - since.elapsed();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("      --- last {} lines of {}", TAIL.min(lines.len()), log.display());
        for line in &lines[lines.len().saturating_sub(TAIL)..] {
            println!("      {line}");
        }
    }
}

/// A `Config.json` (Microsoft's schema) with these queues: (name, lock duration, max delivery count).
fn config_json(env: &Env, name: &str, queues: &[(&str, &str, u32)]) -> Result<PathBuf> {
    let path = env.dir.join(format!("{name}.Config.json"));
    procs::write_emulator_config(&path, "e2e", queues)?;
    Ok(path)
}

/// A `host.toml` for the test guest consuming `channels`.
fn test_guest_toml(env: &Env, name: &str, channels: &str, extra: &str) -> Result<PathBuf> {
    let path = env.dir.join(format!("{name}.host.toml"));
    std::fs::write(
        &path,
        format!(
            "[guest]\nallowed-targets = [\"processed\"]\nenv = {{ TEST_GUEST_CHANNELS = \"{channels}\" }}\n{extra}"
        ),
    )?;
    Ok(path)
}

fn client(cs: &str) -> Result<ServiceBusClient> {
    Ok(ServiceBusClient::new(
        cs,
        ClientOptions {
            retry: RetryPolicy {
                max_retries: 10,
                initial_backoff: Duration::from_millis(50),
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    )?)
}

fn send_scripts(env: &Env, c: &ServiceBusClient, queue: &str, scripts: Vec<String>) -> Result<()> {
    env.runtime.block_on(async {
        let sender = c.sender(queue);
        for chunk in scripts.chunks(50) {
            sender.send_batch(chunk.iter().map(|s| Message::new(s.clone())).collect()).await?;
        }
        anyhow::Ok(())
    })
}

/// Takes everything on `queue` (receive-and-delete), receiving until half a second passes
/// with nothing more: one receive returns only what has arrived by its first message.
pub fn take_all(runtime: &tokio::runtime::Runtime, c: &ServiceBusClient, queue: &str) -> Result<Vec<ReceivedMessage>> {
    runtime.block_on(async {
        let r = c.receive_and_delete_receiver(queue);
        let mut out = Vec::new();
        loop {
            let got = r.receive(100, Duration::from_millis(500)).await?;
            if got.is_empty() {
                return anyhow::Ok(out);
            }
            out.extend(got);
        }
    })
}

/// Takes everything on `queue`, like [`take_all`]; returns the bodies.
fn drain(env: &Env, c: &ServiceBusClient, queue: &str) -> Result<Vec<String>> {
    Ok(take_all(&env.runtime, c, queue)?.into_iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect())
}

fn peek_count(env: &Env, c: &ServiceBusClient, queue: &str) -> Result<usize> {
    Ok(env.runtime.block_on(c.receiver(queue).peek(1, 5000))?.len())
}

/// Waits until `done` holds for the host's metrics.
fn wait_for(
    host: &HostProcess,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[(String, String, f64)]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(m) = scrape(host.metrics)
            && done(&m)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; host log: {}", host.log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `queue` is empty (peek sees nothing).
fn wait_empty(env: &Env, c: &ServiceBusClient, queue: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while peek_count(env, c, queue)? > 0 {
        if Instant::now() > deadline {
            bail!("{queue} still holds {} messages after {timeout:?}", peek_count(env, c, queue)?);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn several_queues(env: &Env) -> Result<String> {
    let cfg = config_json(
        env,
        "several",
        &[("a", "PT30S", 10), ("b", "PT30S", 10), ("c", "PT30S", 10), ("processed", "PT30S", 10)],
    )?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let c = client(&emu.connection_string())?;
    let toml = test_guest_toml(env, "several", "a,b,c", "")?;
    let mut host =
        HostProcess::start(&env.host, &env.test_guest, &toml, &emu.connection_string(), &env.dir.join("several.log"))?;
    for q in ["a", "b", "c"] {
        send_scripts(env, &c, q, (0..20).map(|i| format!("send:processed;complete;note:{q}{i}")).collect())?;
    }
    wait_for(&host, "60 completions", Duration::from_secs(60), |m| {
        ["a", "b", "c"].iter().all(|q| metric(m, "messaging_completed_total", q) >= 20.0)
    })?;
    let bodies = drain(env, &c, "processed")?;
    let unique: HashSet<&String> = bodies.iter().collect();
    ensure!(unique.len() == 60, "expected 60 processed messages, got {}", unique.len());
    host.signal("TERM")?;
    ensure!(host.wait()?, "the host did not exit cleanly");
    emu.stop()?;
    Ok("3 queues x 20 messages, all completed by one host".into())
}

fn sample_paths(env: &Env) -> Result<String> {
    let emu = EmulatorProcess::start(&env.emulator, None, 0)?;
    let cs = emu.connection_string();
    let c = client(&cs)?;
    let toml = env.dir.join("sample.host.toml");
    std::fs::write(&toml, "[guest]\nallowed-targets = [\"review\"]\n")?;
    let traffic = Traffic::DEMO;
    env.runtime.block_on(send_orders(&c, &traffic))?;
    let mut host = HostProcess::start(&env.host, &env.sample, &toml, &cs, &env.dir.join("sample.log"))?;
    wait_for(&host, "the orders to be processed", Duration::from_secs(60), |m| processed(m, &traffic))?;
    let metrics = scrape(host.metrics)?;
    host.signal("TERM")?;
    ensure!(host.wait()?, "the host did not exit cleanly");
    let abandoned = metric(&metrics, "messaging_abandoned_total", "orders") as usize;
    ensure!(abandoned == traffic.transient, "abandoned {abandoned}, expected {}", traffic.transient);
    let review = drain(env, &c, "review")?;
    ensure!(
        review.len() == traffic.review && review.iter().all(|b| b.contains("\"review\":true")),
        "review queue: {review:?}"
    );
    let dead = env.runtime.block_on(c.receiver("orders/$DeadLetterQueue").peek(1, 100))?;
    ensure!(dead.len() == traffic.invalid, "{} dead-lettered, expected {}", dead.len(), traffic.invalid);
    ensure!(
        dead.iter().all(|m| m.dead_letter_reason() == Some("InvalidOrder")),
        "dead-letter reasons are not InvalidOrder"
    );
    ensure!(
        peek_count(env, &c, "orders")? == 0 && peek_count(env, &c, "payments")? == 0,
        "orders or payments not empty"
    );
    emu.stop()?;
    Ok(format!(
        "{} completed (+{} after a retry), {} redirected to review, {} dead-lettered (InvalidOrder), {} payments",
        traffic.valid,
        traffic.transient,
        traffic.review,
        traffic.invalid,
        traffic.valid + traffic.transient
    ))
}

fn poison(env: &Env) -> Result<String> {
    let cfg = config_json(env, "poison", &[("poison-in", "PT5S", 3), ("processed", "PT30S", 10)])?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let c = client(&emu.connection_string())?;
    let toml = test_guest_toml(env, "poison", "poison-in", "")?;
    let mut host =
        HostProcess::start(&env.host, &env.test_guest, &toml, &emu.connection_string(), &env.dir.join("poison.log"))?;
    send_scripts(env, &c, "poison-in", vec!["trap".into()])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = env.runtime.block_on(c.receiver("poison-in/$DeadLetterQueue").peek(1, 10))?;
        if !dead.is_empty() {
            break dead;
        }
        ensure!(Instant::now() < deadline, "the poison message never reached the DLQ");
        std::thread::sleep(Duration::from_millis(200));
    };
    let traps = metric(&scrape(host.metrics)?, "messaging_handler_traps_total", "poison-in");
    host.signal("TERM")?;
    ensure!(host.wait()?, "the host did not exit cleanly");
    ensure!(
        dead[0].dead_letter_reason() == Some("MaxDeliveryCountExceeded"),
        "reason {:?}",
        dead[0].dead_letter_reason()
    );
    ensure!(dead[0].delivery_count == 3, "delivery count {}", dead[0].delivery_count);
    emu.stop()?;
    Ok(format!("trapped {traps} times, then dead-lettered with MaxDeliveryCountExceeded (delivery count 3)"))
}

fn sigkill_and_restart(env: &Env) -> Result<String> {
    let cfg = config_json(env, "kill", &[("work", "PT2S", 10), ("processed", "PT30S", 10)])?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let cs = emu.connection_string();
    let c = client(&cs)?;
    let toml = test_guest_toml(env, "kill", "work", "[defaults]\nmax-concurrent-calls = 8\n")?;
    let n = 200;
    send_scripts(env, &c, "work", (0..n).map(|i| format!("sleep:20;send:processed;complete;note:{i}")).collect())?;
    let host = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("kill-1.log"))?;
    wait_for(&host, "some progress", Duration::from_secs(60), |m| {
        metric(m, "messaging_completed_total", "work") >= 40.0
    })?;
    host.signal("KILL")?;
    drop(host);
    let mut host = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("kill-2.log"))?;
    wait_empty(env, &c, "work", Duration::from_secs(90))?;
    host.signal("TERM")?;
    ensure!(host.wait()?, "the restarted host did not exit cleanly");
    let bodies = drain(env, &c, "processed")?;
    let unique: HashSet<&String> = bodies.iter().collect();
    ensure!(unique.len() == n, "{} of {n} messages were processed", unique.len());
    ensure!(peek_count(env, &c, "work/$DeadLetterQueue")? == 0, "messages were dead-lettered");
    emu.stop()?;
    Ok(format!(
        "{n} of {n} completed across the kill; {} processed twice (locks lost with the killed host)",
        bodies.len() - unique.len()
    ))
}

fn competing_hosts(env: &Env) -> Result<String> {
    let cfg = config_json(env, "compete", &[("shared", "PT30S", 10), ("processed", "PT30S", 10)])?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let cs = emu.connection_string();
    let c = client(&cs)?;
    let toml = test_guest_toml(env, "compete", "shared", "[defaults]\nmax-concurrent-calls = 4\n")?;
    let n = 200;
    let mut one = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("compete-1.log"))?;
    let mut two = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("compete-2.log"))?;
    send_scripts(env, &c, "shared", (0..n).map(|i| format!("sleep:10;send:processed;complete;note:{i}")).collect())?;
    wait_empty(env, &c, "shared", Duration::from_secs(90))?;
    let per_host: Vec<f64> = [&one, &two]
        .iter()
        .map(|h| scrape(h.metrics).map(|m| metric(&m, "messaging_completed_total", "shared")))
        .collect::<Result<_>>()?;
    let lost: f64 = [&one, &two]
        .iter()
        .map(|h| scrape(h.metrics).map(|m| metric(&m, "messaging_locks_lost_total", "shared")))
        .sum::<Result<f64>>()?;
    one.signal("TERM")?;
    two.signal("TERM")?;
    ensure!(one.wait()? && two.wait()?, "a host did not exit cleanly");
    let bodies = drain(env, &c, "processed")?;
    let unique: HashSet<&String> = bodies.iter().collect();
    let duplicates = bodies.len() - unique.len();
    ensure!(unique.len() == n, "{} of {n} processed", unique.len());
    ensure!(duplicates == 0 || lost > 0.0, "{duplicates} duplicates without any lock lost");
    ensure!(per_host.iter().all(|&c| c > 0.0), "one host did all the work: {per_host:?}");
    emu.stop()?;
    Ok(format!("{n} processed, split {:?}; {duplicates} duplicates, {lost} locks lost", per_host))
}

fn sigterm_in_flight(env: &Env) -> Result<String> {
    let cfg = config_json(env, "term", &[("work", "PT30S", 10), ("processed", "PT30S", 10)])?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let cs = emu.connection_string();
    let c = client(&cs)?;
    let toml = test_guest_toml(env, "term", "work", "[defaults]\nmax-concurrent-calls = 10\n")?;
    let mut host = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("term.log"))?;
    send_scripts(env, &c, "work", (0..10).map(|i| format!("sleep:1500;complete;note:{i}")).collect())?;
    wait_for(&host, "calls in flight", Duration::from_secs(30), |m| metric(m, "messaging_in_flight", "work") >= 5.0)?;
    let in_flight = metric(&scrape(host.metrics)?, "messaging_in_flight", "work");
    host.signal("TERM")?;
    ensure!(host.wait()?, "the host did not exit with status 0");
    let left = peek_count(env, &c, "work")?;
    // Calls that finished within the grace period completed; anything else is back on the queue.
    let handled = 10 - left;
    ensure!(handled as f64 >= in_flight, "{handled} handled but {in_flight} were in flight");
    emu.stop()?;
    Ok(format!("exit 0 with {in_flight} in flight; {handled} completed, {left} back on the queue, none lost"))
}

fn emulator_restart(env: &Env) -> Result<String> {
    let cfg = config_json(env, "restart", &[("work", "PT30S", 10), ("processed", "PT30S", 10)])?;
    let port = procs::free_port()?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), port)?;
    let cs = emu.connection_string();
    let toml = test_guest_toml(env, "restart", "work", "")?;
    let mut host = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("restart.log"))?;
    {
        let c = client(&cs)?;
        send_scripts(env, &c, "work", (0..10).map(|i| format!("send:processed;complete;note:a{i}")).collect())?;
        wait_for(&host, "the first ten", Duration::from_secs(30), |m| {
            metric(m, "messaging_completed_total", "work") >= 10.0
        })?;
    }
    emu.stop()?;
    std::thread::sleep(Duration::from_millis(500));
    // The emulator keeps nothing across restarts: the queues come back empty.
    let emu = start_on(&env.emulator, &cfg, port)?;
    let c = client(&cs)?;
    send_scripts(env, &c, "work", (0..10).map(|i| format!("send:processed;complete;note:b{i}")).collect())?;
    wait_empty(env, &c, "work", Duration::from_secs(60))?;
    wait_for(&host, "the second ten", Duration::from_secs(30), |m| {
        metric(m, "messaging_completed_total", "work") >= 20.0
    })?;
    host.signal("TERM")?;
    ensure!(host.wait()?, "the host did not exit cleanly");
    let after = drain(env, &c, "processed")?;
    ensure!(after.iter().filter(|b| b.contains("note:b")).count() == 10, "after the restart: {after:?}");
    emu.stop()?;
    Ok("10 before and 10 after an emulator restart on the same port".into())
}

/// Starts the emulator on `port`, retrying while the old process releases it.
/// 20 message sessions of 50 messages on one queue, consumed by two hosts; one is killed
/// (SIGKILL) once a third are handled. Every session's messages must be handled in order and
/// none lost; a message may be handled twice only after a lost lock (the killed host's), which
/// its delivery count shows, and those are counted.
fn sessions_across_a_kill(env: &Env) -> Result<String> {
    const SESSIONS: usize = 20;
    const PER_SESSION: usize = 50;
    let cfg = env.dir.join("sessions.Config.json");
    procs::write_emulator_config_json(
        &cfg,
        "e2e",
        vec![procs::queue_json("ordered", "PT5S", 10, true), procs::queue_json("processed", "PT30S", 10, false)],
    )?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let cs = emu.connection_string();
    let c = client(&cs)?;
    let toml = test_guest_toml(
        env,
        "sessions",
        "ordered",
        "[channels.ordered]\nrequires-session = true\nmax-concurrent-sessions = 4\nsession-idle-timeout = \"500ms\"\n",
    )?;
    env.runtime.block_on(async {
        let sender = c.sender("ordered");
        for s in 0..SESSIONS {
            let batch = (0..PER_SESSION)
                .map(|i| {
                    let mut m = Message::new("echo:delivery-count;sleep:5");
                    m.message_id = Some(format!("s{s}-{i}"));
                    m.session_id = Some(format!("s{s}"));
                    m.reply_to = Some("processed".into());
                    m
                })
                .collect();
            sender.send_batch(batch).await?;
        }
        anyhow::Ok(())
    })?;
    let one = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("sessions-1.log"))?;
    let mut two = HostProcess::start(&env.host, &env.test_guest, &toml, &cs, &env.dir.join("sessions-2.log"))?;
    let completed = |h: &HostProcess| scrape(h.metrics).map(|m| metric(&m, "messaging_completed_total", "ordered"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed(&one).unwrap_or(0.0) + completed(&two).unwrap_or(0.0) < (SESSIONS * PER_SESSION / 3) as f64 {
        ensure!(Instant::now() < deadline, "a third of the messages were not handled within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    one.signal("KILL")?;
    drop(one);

    // The reports, in the order the calls sent them: (session, index, delivery count). Read
    // until every message was handled and the surviving host has been idle for 2 s (a message
    // the killed host handled but did not complete comes again, maybe after all were seen).
    let mut reports: Vec<(usize, usize, u32)> = Vec::new();
    let mut unique = HashSet::new();
    let receiver = c.receive_and_delete_receiver("processed");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut idle_since: Option<Instant> = None;
    while unique.len() < SESSIONS * PER_SESSION || idle_since.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        ensure!(
            Instant::now() < deadline,
            "{} of {} messages handled within 180 s; host log: {}",
            unique.len(),
            SESSIONS * PER_SESSION,
            two.log.display()
        );
        let got = env.runtime.block_on(receiver.receive(200, Duration::from_millis(500)))?;
        let m = scrape(two.metrics)?;
        let busy = !got.is_empty()
            || metric(&m, "messaging_sessions_held", "ordered") > 0.0
            || metric(&m, "messaging_in_flight", "ordered") > 0.0;
        idle_since = if busy { None } else { idle_since.or(Some(Instant::now())) };
        for m in got {
            let id = m.correlation_id.clone().context("a report without a correlation-id")?;
            let body = String::from_utf8_lossy(&m.body).into_owned();
            let count = body
                .lines()
                .find_map(|l| l.strip_prefix("echo:delivery-count => ok "))
                .with_context(|| format!("report {id}: {body}"))?
                .parse()?;
            let (s, i) = id.trim_start_matches('s').split_once('-').context("an id s<session>-<index>")?;
            reports.push((s.parse()?, i.parse()?, count));
            unique.insert(id);
        }
    }
    two.signal("TERM")?;
    ensure!(two.wait()?, "the surviving host did not exit cleanly");
    let mut duplicates = 0;
    for s in 0..SESSIONS {
        let order: Vec<(usize, u32)> = reports.iter().filter(|r| r.0 == s).map(|r| (r.1, r.2)).collect();
        ensure!(order.first().map(|o| o.0) == Some(0), "session s{s} did not start at its first message: {order:?}");
        for pair in order.windows(2) {
            let ((prev, _), (next, count)) = (pair[0], pair[1]);
            if next == prev {
                ensure!(count >= 2, "session s{s}: message {next} handled twice without a lost lock: {order:?}");
                duplicates += 1;
            } else {
                ensure!(next == prev + 1, "session s{s}: message {next} handled after {prev}: {order:?}");
            }
        }
    }
    ensure!(peek_count(env, &c, "ordered/$DeadLetterQueue")? == 0, "messages were dead-lettered");
    emu.stop()?;
    Ok(format!(
        "{} messages in {SESSIONS} sessions handled in order across the kill; {duplicates} handled twice \
         (locks lost with the killed host)",
        SESSIONS * PER_SESSION
    ))
}

fn start_on(binary: &Path, cfg: &Path, port: u16) -> Result<EmulatorProcess> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match EmulatorProcess::start(binary, Some(cfg), port) {
            Ok(e) => return Ok(e),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(e).context("restarting the emulator on the same port"),
        }
    }
}

/// Request-reply (December 2024 revision) between processes: two requester hosts share one reply
/// queue, a responder host answers; each of 200 requests must get its own reply, and only it.
fn request_reply(env: &Env) -> Result<String> {
    const N: usize = 200;
    let cfg = env.dir.join("rpc.Config.json");
    let queue = |name| procs::queue_json(name, "PT30S", 10, false);
    procs::write_emulator_config_json(
        &cfg,
        "e2e",
        vec![queue("triggers"), queue("rpc"), procs::queue_json("replies", "PT30S", 10, true), queue("reports")],
    )?;
    let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
    let cs = emu.connection_string();
    let c = client(&cs)?;
    let toml = |name: &str, text: &str| -> Result<PathBuf> {
        let path = env.dir.join(format!("{name}.host.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let requester = toml(
        "requester",
        "[guest]\nchannels = [\"triggers\"]\nreply-queue = \"replies\"\nallowed-targets = [\"rpc\", \"reports\"]\n\
         [defaults]\nmax-concurrent-calls = 8\n",
    )?;
    let responder = toml(
        "responder",
        "[guest]\nchannels = [\"rpc\"]\nallowed-targets = [\"replies\", \"reports\"]\n[defaults]\nmax-concurrent-calls = 8\n",
    )?;
    let start =
        |config: &Path, log: &str| HostProcess::start(&env.host, &env.test_handler, config, &cs, &env.dir.join(log));
    let mut hosts = [start(&requester, "rpc-requester-1.log")?, start(&requester, "rpc-requester-2.log")?];
    let mut answering = start(&responder, "rpc-responder.log")?;
    env.runtime.block_on(async {
        let sender = c.sender("triggers");
        let triggers: Vec<Message> = (0..N)
            .map(|i| {
                let mut m = Message::new("request:rpc:1:30000");
                m.message_id = Some(format!("t-{i}"));
                let text = |v: String| amqp_servicebus::SimpleValue::String(v);
                m.application_properties.insert("request-script".into(), text(format!("reply:echo-{i}")));
                m.application_properties.insert("report-to".into(), text("reports".into()));
                m
            })
            .collect();
        for chunk in triggers.chunks(50) {
            sender.send_batch(chunk.to_vec()).await?;
        }
        anyhow::Ok(())
    })?;
    // Every trigger's report: its request's replies, which must be its own.
    let receiver = c.receive_and_delete_receiver("reports");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut matched, mut wrong) = (HashSet::new(), Vec::new());
    while matched.len() + wrong.len() < N {
        ensure!(Instant::now() < deadline, "{} of {N} requests answered within 120 s", matched.len() + wrong.len());
        for m in env.runtime.block_on(receiver.receive(100, Duration::from_millis(500)))? {
            let id = m.correlation_id.clone().unwrap_or_default();
            let report = String::from_utf8_lossy(&m.body).into_owned();
            let i = id.strip_prefix("t-").unwrap_or_default();
            if report == format!("request:rpc:1:30000 => ok echo-{i}") {
                matched.insert(id);
            } else {
                wrong.push(format!("{id}: {report}"));
            }
        }
    }
    ensure!(wrong.is_empty(), "{} requests got the wrong answer: {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    ensure!(matched.len() == N, "{} distinct requests answered of {N}", matched.len());
    let per_host: Vec<f64> = hosts
        .iter()
        .map(|h| scrape(h.metrics).map(|m| metric(&m, "messaging_completed_total", "triggers")))
        .collect::<Result<_>>()?;
    ensure!(per_host.iter().all(|&n| n > 0.0), "one requester did all the work: {per_host:?}");
    ensure!(peek_count(env, &c, "replies")? == 0, "replies were left on the reply queue");
    for h in hosts.iter_mut().chain([&mut answering]) {
        h.signal("TERM")?;
        ensure!(h.wait()?, "a host did not exit cleanly; its log: {}", h.log.display());
    }
    emu.stop()?;
    Ok(format!("{N} requests, {N} replies matched, requests per requester {per_host:?}"))
}

/// The sample handler of the December 2024 revision, in each language, on a host of its own:
/// valid orders become payments (JSON, correlated, with metadata) and are completed; invalid ones
/// are abandoned until Service Bus dead-letters them.
fn handlers(env: &Env) -> Result<String> {
    const ORDERS: usize = 20;
    const BAD: usize = 2;
    let mut summary = Vec::new();
    for (language, component) in &env.handlers {
        let started = Instant::now();
        let cfg = config_json(env, "handlers", &[("orders", "PT30S", 2), ("payments", "PT30S", 10)])?;
        let emu = EmulatorProcess::start(&env.emulator, Some(&cfg), 0)?;
        let cs = emu.connection_string();
        let c = client(&cs)?;
        let toml = env.dir.join("handlers.host.toml");
        std::fs::write(&toml, "[guest]\nchannels = [\"orders\"]\nallowed-targets = [\"payments\"]\n")?;
        let log = env.dir.join(format!("handler-{}.log", language.to_lowercase()));
        let mut host = HostProcess::start(&env.host, component, &toml, &cs, &log)?;
        let mut orders: Vec<String> =
            (0..ORDERS).map(|i| format!(r#"{{"id":"o-{i}","customer":"c-{i}","amount_cents":{}}}"#, 100 + i)).collect();
        orders.push("not json".into());
        orders.push(r#"{"id":"o-x","customer":"","amount_cents":5}"#.into());
        send_scripts(env, &c, "orders", orders)?;
        wait_for(&host, "every order settled", Duration::from_secs(120), |m| {
            metric(m, "messaging_completed_total", "orders") >= ORDERS as f64
                && metric(m, "messaging_abandoned_total", "orders") >= (2 * BAD) as f64
        })?;
        wait_empty(env, &c, "orders", Duration::from_secs(30))?;
        let (payments, dead) =
            (take_all(&env.runtime, &c, "payments")?, take_all(&env.runtime, &c, "orders/$DeadLetterQueue")?);
        ensure!(payments.len() == ORDERS, "{language}: {} payments for {ORDERS} orders", payments.len());
        for p in &payments {
            let id = p.correlation_id.clone().unwrap_or_default();
            ensure!(p.content_type.as_deref() == Some("application/json"), "{language}: {id}'s content type");
            let order_id = p.application_properties.get("order-id");
            ensure!(
                order_id == Some(&amqp_servicebus::SimpleValue::String(id.clone())),
                "{language}: payment {id} has order-id {order_id:?}"
            );
            let body: serde_json::Value = serde_json::from_slice(&p.body)?;
            ensure!(body["order_id"] == id.as_str(), "{language}: payment {id} says {body}");
        }
        ensure!(dead.len() == BAD, "{language}: {} of {BAD} bad orders dead-lettered", dead.len());
        ensure!(
            dead.iter().all(|m| m.dead_letter_reason() == Some("MaxDeliveryCountExceeded")),
            "{language}: dead-lettered for another reason"
        );
        host.signal("TERM")?;
        ensure!(host.wait()?, "{language}: the host did not exit cleanly; its log: {}", log.display());
        emu.stop()?;
        summary.push(format!("{language} {:.1}s", started.elapsed().as_secs_f64()));
    }
    Ok(format!("{ORDERS} payments and {BAD} dead letters each: {}", summary.join(", ")))
}
