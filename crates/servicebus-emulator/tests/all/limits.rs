//! Limits the service enforces (message size, entity size, token expiry on attached links), and
//! the emulator's memory budget.

use std::time::Duration;

use fe2o3_amqp::types::messaging::Message;
use fe2o3_amqp::types::primitives::{Binary, Timestamp, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use servicebus_emulator::auth::{DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, sas_token};
use servicebus_emulator::{Config, Emulator};

use super::support::queue;
use super::transactions::connect;

#[tokio::test]
async fn a_message_over_the_size_limit_is_rejected_with_message_size_exceeded() -> anyhow::Result<()> {
    let config = Config { queues: vec![queue("q")], ..Config::default() };
    let emulator =
        Emulator::builder().config(config).bind("127.0.0.1:0".parse()?).max_message_size(4096).start().await?;
    let mut connection = connect(&emulator, "size").await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "s", "q").await?;
    assert_eq!(sender.max_message_size(), Some(4096), "the attach advertises the limit");
    let small = sender.send(Message::builder().data(Binary::from(vec![0u8; 1000])).build()).await?;
    assert!(small.is_accepted());
    // fe2o3 refuses locally what the attach says is too big; the broker's own check is below.
    let big = sender.send(Message::builder().data(Binary::from(vec![0u8; 10_000])).build()).await;
    assert!(format!("{big:?}").contains("MessageSizeExceeded"), "{big:?}");
    super::frames::send_raw_oversized(&emulator, "q", 10_000).await;
    assert_eq!(emulator.queue_counts("q").unwrap().active, 1, "only the small message is enqueued");
    drop(sender);
    drop(session);
    drop(connection);
    emulator.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_link_is_detached_when_its_token_expires_unless_renewed() -> anyhow::Result<()> {
    let config = Config { queues: vec![queue("renewed"), queue("lapsed")], ..Config::default() };
    let emulator = Emulator::builder().config(config).bind("127.0.0.1:0".parse()?).start().await?;
    // ANONYMOUS SASL: only $cbs tokens authorize.
    let mut connection = Connection::open("cbs", format!("amqp://{}", emulator.local_addr()).as_str()).await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut cbs = CbsClient::attach(&mut session).await?;
    let host = emulator.local_addr();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    for q in ["renewed", "lapsed"] {
        let audience = format!("sb://{host}/{q}");
        let token = sas_token(&audience, DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, now + 2);
        let expires = Timestamp::from_milliseconds(((now + 2) * 1000) as i64);
        cbs.put_token(audience, CbsToken::new(token, "servicebus.windows.net:sastoken", expires)).await?;
    }
    let mut renewed = Receiver::attach(&mut session, "renewed", "renewed").await?;
    let mut lapsed = Receiver::attach(&mut session, "lapsed", "lapsed").await?;
    // Renew one token before it expires.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audience = format!("sb://{host}/renewed");
    let token = sas_token(&audience, DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, now + 600);
    cbs.put_token(audience, CbsToken::new(token, "servicebus.windows.net:sastoken", None)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let lapsed_result = tokio::time::timeout(Duration::from_secs(2), lapsed.recv::<Value>()).await;
    let text = format!("{lapsed_result:?}");
    assert!(text.contains("UnauthorizedAccess"), "the lapsed link must be detached: {text}");

    let mut sender = Sender::attach(&mut session, "s", "renewed").await?;
    sender.send("still here").await?;
    let d = tokio::time::timeout(Duration::from_secs(2), renewed.recv::<String>()).await??;
    assert_eq!(d.body(), "still here");
    renewed.accept(&d).await?;
    emulator.shutdown().await;
    Ok(())
}

/// Finding 7: 20,000 × 200 KB were all accepted by a queue with MaxSizeInMegabytes 100.
/// Now a send past the quota is refused with `amqp:resource-limit-exceeded`, and room made
/// by receiving is usable again.
#[tokio::test]
async fn a_full_entity_refuses_sends_with_resource_limit_exceeded() -> anyhow::Result<()> {
    use servicebus_emulator::QueueProperties;
    let small = |name: &str| servicebus_emulator::QueueConfig {
        name: name.into(),
        properties: QueueProperties { max_size_megabytes: 1, ..QueueProperties::default() },
    };
    let config = Config {
        queues: vec![small("q")],
        topics: vec![servicebus_emulator::TopicConfig {
            // A topic's size applies to each of its subscriptions.
            properties: servicebus_emulator::TopicProperties { max_size_megabytes: 1, ..Default::default() },
            name: "t".into(),
            subscriptions: vec![small("s")],
            rules: Default::default(),
        }],
        ..Config::default()
    };
    let emulator = Emulator::builder().config(config).bind("127.0.0.1:0".parse()?).start().await?;
    let mut connection = connect(&emulator, "quota").await?;
    let mut session = Session::begin(&mut connection).await?;
    for entity in ["q", "t"] {
        let mut sender = Sender::attach(&mut session, format!("s-{entity}"), entity).await?;
        let mut accepted = 0;
        let refused = loop {
            let outcome = sender.send(Message::builder().data(Binary::from(vec![0u8; 200 * 1024])).build()).await;
            match outcome {
                Ok(o) if o.is_accepted() => accepted += 1,
                other => break format!("{other:?}"),
            }
            assert!(accepted <= 5, "{entity}: a 1 MB entity took {accepted} messages of 200 KB");
        };
        assert_eq!(accepted, 5, "{entity}");
        assert!(refused.contains("ResourceLimitExceeded") && refused.contains("maximum entity size"), "{refused}");
        sender.close().await?;
    }
    // Receiving makes room.
    let mut receiver = Receiver::attach(&mut session, "r", "q").await?;
    let d = receiver.recv::<fe2o3_amqp::types::messaging::Body<Value>>().await?;
    receiver.accept(&d).await?;
    let mut sender = Sender::attach(&mut session, "again", "q").await?;
    assert!(sender.send(Message::builder().data(Binary::from(vec![0u8; 200 * 1024])).build()).await?.is_accepted());
    let q = emulator.queue_counts("q").unwrap();
    assert_eq!(q.active + q.locked, 5, "{q:?}");
    assert_eq!(emulator.queue_counts("t/Subscriptions/s").unwrap().active, 5);
    drop((sender, receiver, session, connection));
    emulator.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn past_the_memory_budget_sends_are_refused_and_the_emulator_serves_on() -> anyhow::Result<()> {
    let config = Config { queues: vec![queue("a"), queue("b")], ..Config::default() };
    let emulator = Emulator::builder().config(config).bind("127.0.0.1:0".parse()?).max_memory(1 << 20).start().await?;
    let mut connection = connect(&emulator, "memory").await?;
    let mut session = Session::begin(&mut connection).await?;
    let message = || Message::builder().data(Binary::from(vec![0u8; 200 * 1024])).build();
    let mut accepted = 0;
    let refused = loop {
        // Alternate between two queues: the budget is the emulator's, not an entity's.
        let entity = if accepted % 2 == 0 { "a" } else { "b" };
        let mut sender = Sender::attach(&mut session, format!("s-{accepted}"), entity).await?;
        let outcome = sender.send(message()).await;
        sender.close().await?;
        match outcome {
            Ok(o) if o.is_accepted() => accepted += 1,
            other => break format!("{other:?}"),
        }
        assert!(accepted <= 5, "a 1 MiB budget took {accepted} messages of 200 KiB");
    };
    assert_eq!(accepted, 5);
    assert!(refused.contains("ResourceLimitExceeded") && refused.contains("--max-memory"), "{refused}");
    assert!(emulator.memory_used() <= 1 << 20, "{} bytes held", emulator.memory_used());
    // Receiving makes room; the connection was never at risk.
    let mut receiver = Receiver::attach(&mut session, "r", "a").await?;
    let d = receiver.recv::<fe2o3_amqp::types::messaging::Body<Value>>().await?;
    receiver.accept(&d).await?;
    let mut sender = Sender::attach(&mut session, "again", "b").await?;
    assert!(sender.send(message()).await?.is_accepted());
    drop((sender, receiver, session, connection));
    emulator.shutdown().await;
    Ok(())
}
