//! Request-reply (December 2024 revision) on Service Bus: `request` sends with `reply-to` the
//! host's reply queue and a fresh `reply-to-session-id`, and receives that message session;
//! `reply` answers in it. Hosts sharing one reply queue never see each other's replies.

use std::time::Duration;

use amqp_servicebus::{Message, SimpleValue};
use host_runtime::config::HostConfig;
use host_runtime::{Host, engine::EngineSettings};
use servicebus_emulator::Emulator;

use super::support::*;

/// A host running `test-handler` on `channels` with `guest_toml` in its `[guest]` table.
async fn host(emu: &Emulator, channels: &[&str], guest_toml: &str) -> Host {
    let toml = format!("[guest]\nchannels = {channels:?}\n{guest_toml}");
    let config = HostConfig::parse(&toml, "host.toml").unwrap();
    let mut options = options(emu, guest("test-handler"), config);
    options.engine = EngineSettings { max_instances: 100, ..options.engine };
    Host::start(options).await.expect("the host starts")
}

/// A trigger for a requester: `script` runs on it; its request carries `request_script`.
fn trigger(id: &str, script: &str, request_script: &str) -> Message {
    let mut m = handler_script(id, script);
    m.application_properties.insert("request-script".into(), SimpleValue::String(request_script.into()));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_their_own_replies_across_hosts_sharing_a_reply_queue() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("triggers"), queue("rpc"), session_queue("replies", 5), queue("reports")]).await;
    let requester = "reply-queue = \"replies\"\nallowed-targets = [\"reports\", \"rpc\"]\n";
    let (a, b) = (host(&emu, &["triggers"], requester).await, host(&emu, &["triggers"], requester).await);
    let responder = host(&emu, &["rpc"], "allowed-targets = [\"reports\", \"replies\"]\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    let n = 40;
    for i in 0..n {
        c.sender("triggers").send(trigger(&format!("t-{i}"), "request:rpc", &format!("reply:echo-{i}"))).await?;
    }
    for i in 0..n {
        assert_eq!(reports.get(&format!("t-{i}")).await, [format!("request:rpc => ok echo-{i}")]);
    }
    // Both requesters took part, and every reply was taken by its requester.
    let handled = |h: &Host| h.metrics().channel("triggers").completed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(handled(&a) + handled(&b), n);
    assert!(handled(&a) > 0 && handled(&b) > 0, "a: {}, b: {}", handled(&a), handled(&b));
    assert_eq!(emu.queue_counts("replies").unwrap().active, 0);

    // Several replies, up to the number expected; fewer when the timeout comes first; none is
    // a timeout.
    c.sender("triggers").send(trigger("many", "request:rpc:3:10000", "reply:a;reply:b;reply:c;reply:d")).await?;
    assert_eq!(reports.get("many").await, ["request:rpc:3:10000 => ok a,b,c"]);
    c.sender("triggers").send(trigger("fewer", "request:rpc:3:700", "reply:x")).await?;
    assert_eq!(reports.get("fewer").await, ["request:rpc:3:700 => ok x"]);
    c.sender("triggers").send(trigger("none", "request:rpc:1:300", "note:no reply")).await?;
    assert_eq!(reports.get("none").await, ["request:rpc:1:300 => err timeout"]);
    // The fourth reply of `many` came after its requester had stopped listening: its session
    // was let go, and the reply stays in it, in nobody's way.
    for h in [a, b, responder] {
        h.shutdown(Duration::from_secs(5)).await;
    }
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_to_the_reply_to_in_its_session_correlated_by_message_id() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("rpc"), session_queue("answers", 5), queue("reports"), queue("audit")]).await;
    let responder = host(&emu, &["rpc"], "allowed-targets = [\"reports\", \"answers\"]\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    let mut request = handler_script("q-1", "reply:forty-two");
    request.reply_to = Some("answers".into());
    request.reply_to_session_id = Some("conversation-7".into());
    c.sender("rpc").send(request).await?;
    assert_eq!(reports.get("q-1").await, ["reply:forty-two => ok"]);
    let session = c.accept_session("answers", "conversation-7", Default::default()).await?;
    let replies = session.receive(1, Duration::from_secs(5)).await?;
    assert_eq!(replies[0].body.as_ref(), b"forty-two");
    assert_eq!(replies[0].correlation_id.as_deref(), Some("q-1"));
    assert_eq!(replies[0].session_id.as_deref(), Some("conversation-7"));

    // Replying to a message that asks for none, or to a queue not in the allow-list, fails.
    send_handler_script(&c, "rpc", "q-2", "reply:x").await;
    let lines = reports.get("q-2").await;
    assert!(
        lines[0].starts_with("reply:x => err other: invalid-argument: the message replied to has no reply-to"),
        "{lines:?}"
    );
    let mut elsewhere = handler_script("q-3", "reply:x");
    elsewhere.reply_to = Some("audit".into());
    c.sender("rpc").send(elsewhere).await?;
    let lines = reports.get("q-3").await;
    assert!(lines[0].starts_with("reply:x => err permission-denied: channel \"audit\" is not in"), "{lines:?}");
    assert_eq!(emu.queue_counts("audit").unwrap().active, 0);
    responder.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_reply_queue_is_refused_with_how_to_set_one() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("rpc"), queue("reports")]).await;
    let h = host(&emu, &["in"], "allowed-targets = [\"reports\", \"rpc\"]\n").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    c.sender("in").send(trigger("r-1", "request:rpc:1:1000", "reply:x")).await?;
    let lines = reports.get("r-1").await;
    assert!(
        lines[0].starts_with("request:rpc:1:1000 => err permission-denied: request-reply needs a reply queue"),
        "{lines:?}"
    );
    assert_eq!(emu.queue_counts("rpc").unwrap().active, 0, "nothing was sent");
    h.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}
