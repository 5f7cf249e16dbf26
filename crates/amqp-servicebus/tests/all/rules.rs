//! Rule management through a subscription's `$management` node, and what the rules do to
//! the messages the subscription gets.

use amqp_servicebus::{
    CorrelationFilter, ErrorKind, Message, OrderedMap, ReceivedMessage, RuleFilter, RuleProperties, ServiceBusClient,
    SimpleValue,
};
use servicebus_emulator::{Config, Emulator, TopicConfig};

use super::support::{client, queue};

async fn topic_emulator() -> Emulator {
    let topics = vec![TopicConfig {
        properties: Default::default(),
        name: "orders".into(),
        subscriptions: vec![queue("filtered"), queue("everything")],
        rules: Default::default(),
    }];
    Emulator::builder()
        .config(Config { queues: vec![queue("q")], topics, ..Config::default() })
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .expect("the emulator starts")
}

async fn send(c: &ServiceBusClient, subject: &str, color: &str, quantity: i64) -> anyhow::Result<()> {
    let mut m = Message::new(format!("{subject}/{color}/{quantity}"))
        .with_property("color", color)
        .with_property("quantity", quantity);
    m.subject = Some(subject.into());
    c.sender("orders").send(m).await?;
    Ok(())
}

async fn drain(c: &ServiceBusClient, entity: &str) -> anyhow::Result<Vec<ReceivedMessage>> {
    let r = c.receiver(entity);
    let mut got = Vec::new();
    loop {
        let batch = r.receive(10, std::time::Duration::from_millis(300)).await?;
        if batch.is_empty() {
            return Ok(got);
        }
        for m in &batch {
            r.complete(m).await?;
        }
        got.extend(batch);
    }
}

fn bodies(messages: &[ReceivedMessage]) -> Vec<String> {
    let mut b: Vec<String> = messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    b.sort();
    b
}

#[tokio::test]
async fn rules_are_created_listed_and_deleted_and_decide_what_a_subscription_gets() -> anyhow::Result<()> {
    let emu = topic_emulator().await;
    let c = client(&emu);
    let rules = c.rule_manager("orders", "filtered");
    assert_eq!(
        rules.rules().await?,
        [RuleProperties { name: "$Default".into(), filter: RuleFilter::True, action: None }]
    );
    rules.delete_rule("$Default").await?;
    rules.create_rule("red", RuleFilter::Sql("color = 'red' AND quantity >= 2".into()), None).await?;
    let mut vip = CorrelationFilter { subject: Some("vip".into()), ..CorrelationFilter::default() };
    vip.application_properties.insert("color".into(), SimpleValue::String("blue".into()));
    rules
        .create_rule(
            "vip-blue",
            RuleFilter::Correlation(vip.clone()),
            Some("SET quantity = quantity * 10; SET sys.Label = 'VIP'"),
        )
        .await?;
    let listed = rules.rules().await?;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0],
        RuleProperties {
            name: "red".into(),
            filter: RuleFilter::Sql("color = 'red' AND quantity >= 2".into()),
            action: None
        }
    );
    assert_eq!(listed[1].filter, RuleFilter::Correlation(vip));
    assert_eq!(listed[1].action.as_deref(), Some("SET quantity = quantity * 10; SET sys.Label = 'VIP'"));

    send(&c, "plain", "red", 3).await?; // red
    send(&c, "plain", "red", 1).await?; // too few
    send(&c, "vip", "blue", 2).await?; // vip-blue, changed
    send(&c, "vip", "green", 2).await?; // neither
    let filtered = drain(&c, "orders/Subscriptions/filtered").await?;
    assert_eq!(bodies(&filtered), ["plain/red/3", "vip/blue/2"]);
    let changed = filtered.iter().find(|m| m.body.starts_with(b"vip")).unwrap();
    assert_eq!(changed.application_properties.get("quantity"), Some(&SimpleValue::Long(20)));
    assert_eq!(changed.application_properties.get("RuleName"), Some(&SimpleValue::String("vip-blue".into())));
    assert_eq!(changed.subject.as_deref(), Some("VIP"));
    // The other subscription kept $Default: everything, unchanged.
    assert_eq!(drain(&c, "orders/Subscriptions/everything").await?.len(), 4);

    rules.delete_rule("red").await?;
    send(&c, "plain", "red", 3).await?;
    assert!(drain(&c, "orders/Subscriptions/filtered").await?.is_empty(), "the deleted rule selects nothing more");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rule_errors_say_what_is_wrong() -> anyhow::Result<()> {
    let emu = topic_emulator().await;
    let c = client(&emu);
    let rules = c.rule_manager("orders", "filtered");
    let err = rules.create_rule("$Default", RuleFilter::True, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = rules.create_rule("bad", RuleFilter::Sql("color = ".into()), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("at position 9"), "{err}");
    let err = rules.create_rule("bad", RuleFilter::True, Some("DROP TABLE x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = rules.delete_rule("nope").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = c.rule_manager("q", "x").rules().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "a queue has no subscriptions: {err}");
    let empty = CorrelationFilter { application_properties: OrderedMap::new(), ..CorrelationFilter::default() };
    let err = rules.create_rule("empty", RuleFilter::Correlation(empty), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(rules.rules().await?.len(), 1, "nothing was added");
    emu.shutdown().await;
    Ok(())
}
