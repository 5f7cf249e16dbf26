//! A scripted guest of the December 2024 revision (`incoming-handler.handle`) for the host's
//! tests: each message's data is a script that says what the handler does with it. The
//! February 2024 draft's scripted guest is `test-guest`; the two share the report format.
//!
//! # Scripts
//! Steps separated by `;`, run in order:
//!
//! | step | does |
//! |---|---|
//! | `complete`, `abandon`, `defer`, `renew` | the extension's `settlement` on the message |
//! | `dead-letter:<reason>` | `settlement.dead-letter` with that reason |
//! | `redirect:<topic>` | `settlement.redirect` |
//! | `abandon-delay:<ms>` | `settlement.abandon-with-delay` |
//! | `complete-made` | `settlement.complete` on a message the guest made (not received) |
//! | `send:<topic>` | `producer.send` of a new message with the data, content type and metadata of this one |
//! | `send-ttl:<topic>:<value>` | `producer.send` of a new message whose `time-to-live` metadata is `<value>` |
//! | `connect:<name>` | `client.connect(name)` |
//! | `topic`, `content-type` | reads `message.topic()` / `content-type()` |
//! | `echo:<key>` | reads metadata key `<key>` (`(none)` if absent) |
//! | `config:<key>` | reads `wasi:config/store.get(key)` (`(none)` if absent) |
//! | `state-get`, `state-set:<text>`, `state-clear` | the extension's `sessions` |
//! | `request:<topic>[:<replies>[:<timeout-ms>]]` | `request-reply.request` of a message whose data is this message's `request-script` metadata; reads the replies' data, `,`-separated |
//! | `reply:<text>` | `request-reply.reply` to this message with `<text>` as data |
//! | `fresh` | fails if this instance handled a message before or its memory is not zeroed |
//! | `note:<text>` | nothing (makes scripts unique) |
//! | `ok` | returns `ok` now, skipping the remaining steps |
//! | `err[:<case>]` | returns upstream's `error` now: `other` (the default), `timeout`, `connection`, `permission-denied` |
//! | `trap` | traps (`unreachable`) |
//! | `loop` | spins forever |
//!
//! A step that fails does not stop the script: its error is recorded and the next step runs.
//! When the message has a `report-to` metadata key, the guest then sends one report there:
//! one line per step, `<step> => ok` (`<step> => ok <value>` for a step that reads
//! something) or `<step> => err <error>`, with `correlation-id` set to the message's
//! `message-id`. (Not `reply-to`: in this revision that belongs to request-reply.)

wit_bindgen::generate!({
    world: "servicebus:messaging/servicebus-guest",
    path: "../../wit/dec2024",
    generate_all,
});

use exports::wasi::messaging::incoming_handler::Guest;
use servicebus::messaging::{sessions, settlement};
use wasi::config::store as config;
use wasi::messaging::producer;
use wasi::messaging::request_reply::{self, RequestOptions};
use wasi::messaging::types::{Client, Error, Message};

struct TestHandler;

impl Guest for TestHandler {
    fn handle(m: Message) -> Result<(), Error> {
        let script = String::from_utf8_lossy(&m.data()).into_owned();
        let mut report = Vec::new();
        let mut outcome = Ok(());
        for step in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (op, arg) = step.split_once(':').unwrap_or((step, ""));
            let result: Result<Option<String>, String> = match op {
                "complete" => settled(settlement::complete(&m)),
                "abandon" => settled(settlement::abandon(&m)),
                "defer" => settled(settlement::defer(&m)),
                "renew" => settlement::renew_lock(&m).map(|_| None).map_err(|e| settle_text(&e)),
                "dead-letter" => settled(settlement::dead_letter(&m, arg, Some("dead-lettered by test-handler"))),
                "redirect" => settled(settlement::redirect(&m, arg)),
                "abandon-delay" => settled(settlement::abandon_with_delay(&m, arg.parse().unwrap_or(0))),
                "complete-made" => settled(settlement::complete(&Message::new(b"made here"))),
                "send" => send(&m, arg),
                "send-ttl" => send_ttl(arg),
                "connect" => Client::connect(arg).map(|_| None).map_err(|e| wasi_text(&e)),
                "topic" => Ok(Some(m.topic().unwrap_or_else(|| "(none)".into()))),
                "content-type" => Ok(Some(m.content_type().unwrap_or_else(|| "(none)".into()))),
                "echo" => Ok(Some(meta(&m, arg).unwrap_or_else(|| "(none)".into()))),
                "config" => match config::get(arg) {
                    Ok(v) => Ok(Some(v.unwrap_or_else(|| "(none)".into()))),
                    Err(e) => Err(format!("{e:?}")),
                },
                "state-get" => match sessions::get_state(&m) {
                    Ok(s) => Ok(Some(s.map_or_else(|| "(none)".into(), |s| String::from_utf8_lossy(&s).into_owned()))),
                    Err(e) => Err(settle_text(&e)),
                },
                "state-set" => settled(sessions::set_state(&m, Some(arg.as_bytes()))),
                "state-clear" => settled(sessions::set_state(&m, None)),
                "request" => request(&m, arg),
                "reply" => {
                    request_reply::reply(&m, Message::new(arg.as_bytes())).map(|()| None).map_err(|e| wasi_text(&e))
                }
                "fresh" => fresh(),
                "note" => Ok(None),
                "ok" => break,
                "err" => {
                    outcome = Err(match arg {
                        "timeout" => Error::Timeout,
                        "connection" => Error::Connection(format!("script {script:?} says the connection failed")),
                        "permission-denied" => Error::PermissionDenied(format!("script {script:?} was refused")),
                        _ => Error::Other(format!("script {script:?} returned an error")),
                    });
                    report.push(format!("{step} => returned error"));
                    break;
                }
                "trap" => core::arch::wasm32::unreachable(),
                "loop" => spin_forever(),
                _ => Err(format!("unknown script step {step:?}")),
            };
            report.push(match result {
                Ok(None) => format!("{step} => ok"),
                Ok(Some(value)) => format!("{step} => ok {value}"),
                Err(e) => format!("{step} => err {e}"),
            });
        }
        if let Some(to) = meta(&m, "report-to") {
            let r = Message::new(report.join("\n").as_bytes());
            r.add_metadata("subject", "test-handler-report");
            if let Some(id) = meta(&m, "message-id") {
                r.add_metadata("correlation-id", &id);
            }
            let sent = Client::connect("default").and_then(|c| producer::send(&c, &to, r));
            if let Err(e) = sent {
                eprintln!("test-handler: report to {to:?} failed: {}", wasi_text(&e));
            }
        }
        outcome
    }
}

/// A settlement's result as a step's.
fn settled(r: Result<(), settlement::Error>) -> Result<Option<String>, String> {
    r.map(|()| None).map_err(|e| settle_text(&e))
}

/// The extension's error as `<kind>: <detail>` (kind in its WIT spelling).
fn settle_text(e: &settlement::Error) -> String {
    let kind = format!("{:?}", e.kind);
    let mut wit = String::new();
    for (i, c) in kind.trim_start_matches("ErrorKind::").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            wit.push('-');
        }
        wit.push(c.to_ascii_lowercase());
    }
    format!("{wit}: {}", e.detail)
}

/// Upstream's error as `<case>: <text>`.
fn wasi_text(e: &Error) -> String {
    match e {
        Error::Timeout => "timeout".into(),
        Error::Connection(t) => format!("connection: {t}"),
        Error::PermissionDenied(t) => format!("permission-denied: {t}"),
        Error::Other(t) => format!("other: {t}"),
    }
}

fn meta(m: &Message, key: &str) -> Option<String> {
    m.metadata()?.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Sends a new message like `m` (data, content type, metadata) to `topic`.
fn send(m: &Message, topic: &str) -> Result<Option<String>, String> {
    let copy = Message::new(&m.data());
    if let Some(ct) = m.content_type() {
        copy.set_content_type(&ct);
    }
    if let Some(md) = m.metadata() {
        copy.set_metadata(&md);
    }
    let c = Client::connect("default").map_err(|e| wasi_text(&e))?;
    producer::send(&c, topic, copy).map(|()| None).map_err(|e| wasi_text(&e))
}

/// `send-ttl:<topic>:<value>`: a message with `time-to-live` metadata `<value>`.
fn send_ttl(arg: &str) -> Result<Option<String>, String> {
    let (topic, ttl) = arg.split_once(':').unwrap_or((arg, ""));
    let made = Message::new(b"ttl");
    made.add_metadata("time-to-live", ttl);
    let c = Client::connect("default").map_err(|e| wasi_text(&e))?;
    producer::send(&c, topic, made).map(|()| None).map_err(|e| wasi_text(&e))
}

/// `request:<topic>[:<replies>[:<timeout-ms>]]`: the replies' data, `,`-separated.
fn request(m: &Message, arg: &str) -> Result<Option<String>, String> {
    let mut parts = arg.split(':');
    let topic = parts.next().unwrap_or_default();
    let options = RequestOptions::new();
    if let Some(n) = parts.next().and_then(|n| n.parse().ok()) {
        options.set_expected_replies(n);
    }
    if let Some(ms) = parts.next().and_then(|ms| ms.parse().ok()) {
        options.set_timeout_ms(ms);
    }
    let script = meta(m, "request-script").unwrap_or_default();
    let c = Client::connect("default").map_err(|e| wasi_text(&e))?;
    let replies = request_reply::request(&c, topic, &Message::new(script.as_bytes()), Some(options))
        .map_err(|e| wasi_text(&e))?;
    let texts: Vec<String> = replies.iter().map(|r| String::from_utf8_lossy(&r.data()).into_owned()).collect();
    Ok(Some(texts.join(",")))
}

/// Handled so far in this instance; a fresh instance starts at 0.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Fails if an earlier call's state is visible (see `test-guest`'s `fresh`).
fn fresh() -> Result<Option<String>, String> {
    let before = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if before != 0 {
        return Err(format!("instance state leaked: {before} earlier calls"));
    }
    let mut heap = std::hint::black_box(vec![0u8; 256 << 10]);
    if let Some(at) = heap.iter().position(|b| *b != 0) {
        return Err(format!("memory leaked: heap byte {at} is {:#x}", heap[at]));
    }
    heap.fill(0xAB);
    std::hint::black_box(&heap);
    std::mem::forget(heap);
    Ok(None)
}

fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

export!(TestHandler);
