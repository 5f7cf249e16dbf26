//! A scripted guest for the host's tests: each message's data is a script that
//! says what the handler does with it.
//!
//! # Scripts
//! Steps separated by `;`, run in order:
//!
//! | step | does |
//! |---|---|
//! | `complete`, `abandon` | `consumer.complete-message` / `abandon-message` |
//! | `complete-forged` | `complete-message` on a copy whose `delivery-id` was changed |
//! | `dead-letter:<reason>` | `settlement.dead-letter` with that reason |
//! | `defer`, `renew` | `settlement.defer` / `renew-lock` |
//! | `redirect:<channel>` | `settlement.redirect` |
//! | `abandon-delay:<ms>` | `settlement.abandon-with-delay` |
//! | `send:<channel>` | `connect("default")` + `producer.send` of a copy of the message |
//! | `connect:<name>` | `client.connect(name)` |
//! | `update:<a,b>` | `update-guest-configuration` with these channels |
//! | `pull:<channel>[@<connection>]` | `subscribe-try-receive` (through `connect(connection)`, `default` if none) for 1 s, then completes what it got |
//! | `sleep:<ms>` | sleeps (a blocking WASI clock wait) |
//! | `fresh` | fails if this instance ran a handler before or its memory is not zeroed; then dirties 256 KiB |
//! | `latency` | prints `latency-us <n>` to stderr: wall clock now minus the `sent-at-us` property |
//! | `note:<text>` | nothing (makes scripts unique, e.g. to count duplicates) |
//! | `echo:<key>` | reads metadata key `<key>` (`(none)` if absent) |
//! | `config:<key>` | reads `wasi:config/store.get(key)` (`(none)` if absent) |
//! | `state-get` | `sessions.get-state`; reads the state as text (`(none)` if there is none) |
//! | `state-set:<text>`, `state-clear` | `sessions.set-state` with the text, or `none` |
//! | `record:<channel>` | sends `<channel>` a record of this call: the script, with the message's `message-id` as `correlation-id`, and properties `handled-by` (the `host-name` setting of `wasi:config/store`), `handled-from-us` (when the call began, microseconds since the Unix epoch), `handled-delivery-count` and `handled-lock-token` |
//! | `chance:<percent>:<step>` | runs `<step>` in `<percent>` % of calls (`0.5` for one in 200): chosen by a hash of the message's `message-id` and `delivery-count`, so one delivery always chooses the same and a redelivery chooses again |
//! | `strict` | from here on, a step that fails ends the script, and the handler returns an error |
//! | `ok` | returns `ok` now, skipping the remaining steps |
//! | `err` | returns an error now (`settlement.new-error`) |
//! | `trap` | traps (`unreachable`) |
//! | `loop` | spins forever |
//! | `alloc` | allocates 1 MiB chunks until memory cannot grow, then traps |
//! | `stack` | recurses without bound |
//!
//! A step that fails does not stop the script: its error is recorded and the next
//! step runs. When the message has a `reply-to`, the guest then sends one report
//! there: one line per step, `<step> => ok` (`<step> => ok <value>` for a step that
//! reads something) or `<step> => err <kind>: <trace>`,
//! with `correlation-id` set to the message's `message-id`.
//!
//! # Configuration
//! `configure()` reads the environment: `TEST_GUEST_CHANNELS` (comma-separated,
//! default `test-in`), `TEST_GUEST_EXTENSIONS` (`k=v,k=v`), and
//! `TEST_GUEST_CONFIGURE` (`error` or `trap` to make `configure` fail).

wit_bindgen::generate!({
    world: "servicebus:messaging/servicebus-guest",
    path: "../../wit",
    generate_all,
});

use exports::wasi::messaging::messaging_guest::Guest;
use servicebus::messaging::{sessions, settlement};
use wasi::messaging::consumer;
use wasi::messaging::messaging_types::{Client, Error, FormatSpec, GuestConfiguration, Message};
use wasi::messaging::producer;

struct TestGuest;

/// Traps with Wasm's `unreachable`: no panic message on stderr, so expected traps do not
/// look like failures in test logs.
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

impl Guest for TestGuest {
    fn configure() -> Result<GuestConfiguration, Error> {
        match std::env::var("TEST_GUEST_CONFIGURE").as_deref() {
            Ok("error") => return Err(settlement::new_error("configure was told to fail")),
            Ok("trap") => trap(),
            _ => {}
        }
        let channels = std::env::var("TEST_GUEST_CHANNELS").unwrap_or_else(|_| "test-in".into());
        let extensions = std::env::var("TEST_GUEST_EXTENSIONS").ok().map(|s| {
            s.split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.to_string(), String::new()),
                })
                .collect()
        });
        Ok(GuestConfiguration {
            channels: channels.split(',').filter(|c| !c.is_empty()).map(String::from).collect(),
            extensions,
        })
    }

    fn handler(ms: Vec<Message>) -> Result<(), Error> {
        let mut result = Ok(());
        for m in ms {
            if let Err(e) = run_script(&m) {
                result = Err(e);
            }
        }
        result
    }
}

/// Runs one message's script, reports, and returns what the handler should return.
fn run_script(m: &Message) -> Result<(), Error> {
    let script = String::from_utf8_lossy(&m.data).into_owned();
    let began = std::time::SystemTime::now();
    let mut report = Vec::new();
    let mut outcome = Ok(());
    let mut strict = false;
    for step in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(step) = by_chance(m, step) else {
            report.push(format!("{step} => skipped"));
            continue;
        };
        let (op, arg) = step.split_once(':').unwrap_or((step, ""));
        let result: Result<(), Error> = match op {
            "echo" | "state-get" | "config" => {
                let read = match op {
                    "echo" => Ok(meta(m, arg).unwrap_or("(none)").to_string()),
                    "config" => {
                        // A config error is not a messaging error: it has no kind to report.
                        report.push(match wasi::config::store::get(arg) {
                            Ok(v) => format!("{step} => ok {}", v.as_deref().unwrap_or("(none)")),
                            Err(e) => format!("{step} => err {e:?}"),
                        });
                        continue;
                    }
                    _ => sessions::get_state(m)
                        .map(|s| s.map_or_else(|| "(none)".to_string(), |s| String::from_utf8_lossy(&s).into_owned())),
                };
                report.push(match read {
                    Ok(value) => format!("{step} => ok {value}"),
                    Err(e) => format!("{step} => err {:?}: {}", settlement::kind(&e), Error::trace()),
                });
                continue;
            }
            "state-set" => sessions::set_state(m, Some(arg.as_bytes())),
            "state-clear" => sessions::set_state(m, None),
            "complete" => consumer::complete_message(m),
            "complete-forged" => consumer::complete_message(&forged(m)),
            "abandon" => consumer::abandon_message(m),
            "dead-letter" => settlement::dead_letter(m, arg, Some("dead-lettered by test-guest")),
            "defer" => settlement::defer(m),
            "renew" => settlement::renew_lock(m).map(|_| ()),
            "redirect" => settlement::redirect(m, arg),
            "abandon-delay" => settlement::abandon_with_delay(m, arg.parse().unwrap_or(0)),
            "send" => Client::connect("default").and_then(|c| producer::send(c, arg, &[copy_of(m)])),
            "connect" => Client::connect(arg).map(drop),
            "update" => consumer::update_guest_configuration(&GuestConfiguration {
                channels: arg.split(',').filter(|c| !c.is_empty()).map(String::from).collect(),
                extensions: None,
            }),
            "pull" => pull(arg),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg.parse().unwrap_or(0)));
                Ok(())
            }
            "fresh" => fresh(),
            "latency" => latency(m),
            "record" => record(m, arg, began),
            "strict" => {
                strict = true;
                Ok(())
            }
            "note" => Ok(()),
            "ok" => break,
            "err" => {
                outcome = Err(settlement::new_error(&format!("script {script:?} returned an error")));
                report.push(format!("{step} => returned error"));
                break;
            }
            "trap" => trap(),
            "loop" => spin_forever(),
            "alloc" => allocate_forever(),
            "stack" => {
                recurse(0);
                Ok(())
            }
            _ => Err(settlement::new_error(&format!("unknown script step {step:?}"))),
        };
        report.push(match &result {
            Ok(()) => format!("{step} => ok"),
            Err(e) => format!("{step} => err {:?}: {}", settlement::kind(e), Error::trace()),
        });
        if strict && let Err(e) = result {
            outcome = Err(e);
            break;
        }
    }
    if let Some(reply_to) = meta(m, "reply-to") {
        let mut metadata = vec![("subject".to_string(), "test-guest-report".to_string())];
        if let Some(id) = meta(m, "message-id") {
            metadata.push(("correlation-id".into(), id.into()));
        }
        let msg = Message { data: report.join("\n").into_bytes(), format: FormatSpec::Raw, metadata: Some(metadata) };
        if let Err(e) = Client::connect("default").and_then(|c| producer::send(c, reply_to, &[msg])) {
            eprintln!("test-guest: report to {reply_to:?} failed: {:?}: {}", settlement::kind(&e), Error::trace());
        }
    }
    outcome
}

/// The step to run: `step` itself, or for `chance:<percent>:<inner>`, `<inner>` if this call is
/// among the `<percent>` % chosen and `None` if not. A malformed `chance` is returned whole,
/// to fail as an unknown step.
fn by_chance<'s>(m: &Message, step: &'s str) -> Option<&'s str> {
    let Some(bet) = step.strip_prefix("chance:") else { return Some(step) };
    let Some((percent, inner)) = bet.split_once(':').and_then(|(p, s)| Some((p.parse::<f64>().ok()?, s))) else {
        return Some(step);
    };
    // FNV-1a over the message id and the delivery count: the same for one delivery, new for
    // the next, and spread evenly over a run's ids.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let key = [meta(m, "message-id").unwrap_or(""), "/", meta(m, "delivery-count").unwrap_or("")];
    for byte in key.iter().flat_map(|part| part.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (((hash % 10_000) as f64) < percent * 100.0).then_some(inner)
}

/// `record:<channel>`: one message saying this call (which began at `began`) handled this
/// message, sent before the handler settles anything, so that a soak can count every call that
/// got this far.
fn record(m: &Message, channel: &str, began: std::time::SystemTime) -> Result<(), Error> {
    let began = began.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let mut metadata = vec![
        ("subject".to_string(), "test-guest-record".to_string()),
        ("handled-from-us".to_string(), began.to_string()),
    ];
    if let Some(id) = meta(m, "message-id") {
        metadata.push(("correlation-id".into(), id.into()));
    }
    if let Ok(Some(host)) = wasi::config::store::get("host-name") {
        metadata.push(("handled-by".into(), host));
    }
    for (key, from) in [("handled-delivery-count", "delivery-count"), ("handled-lock-token", "lock-token")] {
        if let Some(value) = meta(m, from) {
            metadata.push((key.into(), value.into()));
        }
    }
    let msg = Message { data: m.data.clone(), format: FormatSpec::Raw, metadata: Some(metadata) };
    Client::connect("default").and_then(|c| producer::send(c, channel, &[msg]))
}

fn pull(arg: &str) -> Result<(), Error> {
    let (channel, connection) = arg.split_once('@').unwrap_or((arg, "default"));
    let pulled = consumer::subscribe_try_receive(Client::connect(connection)?, channel, 1000)?;
    for m in pulled.unwrap_or_default() {
        consumer::complete_message(&m)?;
    }
    Ok(())
}

/// Handlers run so far in this instance; a fresh instance starts at 0.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Checks that nothing of an earlier instance is visible: the globals start from the data
/// segments, and fresh heap pages read as zero (the allocator trusts memory it grows to be zero,
/// so a slot reused without a reset would show the previous instance's bytes here). Then leaves
/// its own marks behind for the next instance in the same slot to not see.
fn fresh() -> Result<(), Error> {
    let before = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if before != 0 {
        return Err(settlement::new_error(&format!("instance state leaked: {before} earlier handler calls")));
    }
    let mut heap = std::hint::black_box(vec![0u8; 256 << 10]);
    if let Some(at) = heap.iter().position(|b| *b != 0) {
        return Err(settlement::new_error(&format!("memory leaked: heap byte {at} is {:#x}", heap[at])));
    }
    heap.fill(0xAB);
    std::hint::black_box(&heap);
    std::mem::forget(heap);
    Ok(())
}

/// Enqueue→handler latency of a message whose sender stamped `sent-at-us` (microseconds since
/// the Unix epoch), printed for `cargo xtask bench` to collect.
fn latency(m: &Message) -> Result<(), Error> {
    let sent: u64 = meta(m, "sent-at-us")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| settlement::new_error("the message has no sent-at-us property"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    // One write, so that lines of concurrent instances never interleave.
    let line = format!("latency-us {}\n", (now.as_micros() as u64).saturating_sub(sent));
    std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes())
        .map_err(|e| settlement::new_error(&format!("writing to stderr: {e}")))
}

fn forged(m: &Message) -> Message {
    let metadata = m
        .metadata
        .iter()
        .flatten()
        .map(|(k, v)| if k == "delivery-id" { (k.clone(), format!("{v}-forged")) } else { (k.clone(), v.clone()) })
        .collect();
    Message { data: m.data.clone(), format: m.format, metadata: Some(metadata) }
}

fn copy_of(m: &Message) -> Message {
    Message { data: m.data.clone(), format: m.format, metadata: None }
}

fn meta<'m>(m: &'m Message, key: &str) -> Option<&'m str> {
    m.metadata.as_ref()?.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks until the host's memory cap refuses to grow memory, then traps
/// (quietly: std's out-of-memory handler would print a message before aborting).
fn allocate_forever() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(1 << 20).is_err() || hoard.try_reserve(1).is_err() {
            trap();
        }
        chunk.resize(1 << 20, 1u8);
        hoard.push(std::hint::black_box(chunk));
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[0]
}

export!(TestGuest);
