//! Addresses, and how messages move between entities: topics, duplicates, forwarding.

use super::*;
use crate::config::{QueueConfig, TopicConfig};

fn ns() -> Namespace {
    let mut c = Config::default();
    c.queues.push(QueueConfig { name: "site1/Inbox".into(), properties: Default::default() });
    c.topics.push(TopicConfig {
        properties: Default::default(),
        name: "events".into(),
        subscriptions: vec![QueueConfig { name: "audit".into(), properties: Default::default() }],
        rules: Default::default(),
    });
    Namespace::new(&c, u64::MAX).unwrap()
}

#[tokio::test]
async fn addresses_in_every_sdk_form_resolve() {
    let ns = ns();
    for a in ["orders", "/orders", "amqps://127.0.0.1:5672/orders", "sb://LOCALHOST/Orders/"] {
        assert!(matches!(ns.resolve(a), Ok((Node::Queue(q), _)) if q.name() == "orders"), "{a}");
    }
    assert!(
        matches!(ns.resolve("orders/$DeadLetterQueue"), Ok((Node::Queue(q), _)) if q.name() == "orders/$DeadLetterQueue")
    );
    assert!(matches!(ns.resolve("orders/$management"), Ok((Node::Management(q), _)) if q.name() == "orders"));
    assert!(matches!(ns.resolve("site1/inbox"), Ok((Node::Queue(_), _))));
    assert!(matches!(ns.resolve("events"), Ok((Node::Topic(_), _))));
    assert!(matches!(ns.resolve("events/subscriptions/audit"), Ok((Node::Queue(_), _))));
    assert!(matches!(ns.resolve("events/Subscriptions/audit/$DeadLetterQueue"), Ok((Node::Queue(_), _))));
    assert!(matches!(ns.resolve("$cbs"), Ok((Node::Cbs, _))));
}

#[tokio::test]
async fn unknown_entities_are_not_found() {
    let ns = ns();
    for a in ["nope", "nope/$management", "events/Subscriptions/nope", "orders/x", "nope/$DeadLetterQueue"] {
        assert!(ns.resolve(a).is_err(), "{a}");
    }
    assert_eq!(
        ns.resolve("amqps://h/Nope").unwrap_err().to_string(),
        "The messaging entity 'nope' could not be found."
    );
}

mod moving {
    //! Duplicate detection and forwarding, through the namespace that links the entities.

    use super::super::*;
    use crate::queue::{Delivery, ReceiveMode, Settlement};
    use bytes::Bytes;
    use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
    use fe2o3_amqp_types::messaging::{Body, Message, Properties};
    use serde_amqp::Value;
    use serde_amqp::primitives::Binary;
    use std::time::Duration;

    /// A namespace of `queues` and `topics` (`Config.json` objects).
    fn namespace(queues: &str, topics: &str) -> Namespace {
        namespace_within(queues, topics, u64::MAX)
    }

    /// The same, holding at most `max_memory` bytes of messages.
    fn namespace_within(queues: &str, topics: &str, max_memory: u64) -> Namespace {
        let text =
            format!(r#"{{"UserConfig":{{"Namespaces":[{{"Name":"n","Queues":[{queues}],"Topics":[{topics}]}}]}}}}"#);
        Namespace::new(&Config::parse(&text, "test").unwrap(), max_memory).unwrap()
    }

    pub(super) fn message(id: &str, size: usize) -> StoredMessage {
        let properties = Properties { message_id: Some(id.to_string().into()), ..Default::default() };
        let m = Message::builder().properties(properties).data(Binary::from(vec![b'x'; size])).build();
        StoredMessage::parse(&Bytes::from(serde_amqp::to_vec(&Serializable(m)).unwrap())).unwrap()
    }

    pub(super) fn queue(ns: &Namespace, path: &str) -> Arc<Queue> {
        match ns.resolve(path) {
            Ok((Node::Queue(q), _)) => q,
            other => panic!("{path}: {other:?}"),
        }
    }

    pub(super) fn send(ns: &Namespace, path: &str, messages: Vec<StoredMessage>) {
        let dest = match ns.resolve(path).unwrap().0 {
            Node::Queue(q) => Destination::Queue(q),
            Node::Topic(t) => Destination::Topic(t),
            other => panic!("{other:?}"),
        };
        dest.enqueue(messages).unwrap();
    }

    /// Takes every available message of `path`, decoded.
    pub(super) fn drain(ns: &Namespace, path: &str) -> Vec<Message<Body<Value>>> {
        let q = queue(ns, path);
        std::iter::from_fn(|| q.take(ReceiveMode::ReceiveAndDelete)).map(|d| decode(&d)).collect()
    }

    fn decode(d: &Delivery) -> Message<Body<Value>> {
        serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&d.payload).unwrap().0
    }

    pub(super) fn id(m: &Message<Body<Value>>) -> String {
        match m.properties.as_ref().and_then(|p| p.message_id.clone()) {
            Some(fe2o3_amqp_types::messaging::MessageId::String(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn annotation(m: &Message<Body<Value>>, name: &str) -> Option<Value> {
        m.message_annotations.as_ref()?.get(&crate::message::key(name)).cloned()
    }

    fn app_property(m: &Message<Body<Value>>, name: &str) -> Option<String> {
        match m.application_properties.as_ref()?.get(name)? {
            fe2o3_amqp_types::primitives::SimpleValue::String(s) => Some(s.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_duplicate_inside_the_window_is_accepted_and_dropped_by_a_queue_and_a_topic() {
        let ns = namespace(
            r#"{"Name":"q","Properties":{"RequiresDuplicateDetection":true,"DuplicateDetectionHistoryTimeWindow":"PT1M"}}"#,
            r#"{"Name":"t","Properties":{"RequiresDuplicateDetection":true},"Subscriptions":[{"Name":"a"},{"Name":"b"}]}"#,
        );
        send(&ns, "q", vec![message("1", 1), message("2", 1), message("1", 1)]);
        send(&ns, "q", vec![message("2", 1), message("3", 1)]);
        assert_eq!(drain(&ns, "q").iter().map(id).collect::<Vec<_>>(), ["1", "2", "3"]);
        send(&ns, "t", vec![message("1", 1)]);
        send(&ns, "t", vec![message("1", 1)]);
        for sub in ["t/subscriptions/a", "t/subscriptions/b"] {
            assert_eq!(drain(&ns, sub).len(), 1, "{sub}: the topic dropped the duplicate before any subscription");
        }
    }

    #[tokio::test]
    async fn a_refused_send_is_not_remembered_as_sent() {
        let ns =
            namespace(r#"{"Name":"q","Properties":{"RequiresDuplicateDetection":true,"MaxSizeInMegabytes":1}}"#, "");
        let q = queue(&ns, "q");
        q.enqueue(vec![message("big", 1000 * 1024)]).unwrap();
        assert!(q.enqueue(vec![message("retry", 100 * 1024)]).is_err(), "full");
        drain(&ns, "q");
        q.enqueue(vec![message("retry", 100 * 1024)]).unwrap();
        assert_eq!(drain(&ns, "q").iter().map(id).collect::<Vec<_>>(), ["retry"], "the retry is not a duplicate");
    }

    #[tokio::test]
    async fn a_chain_moves_a_message_through_queues_a_topic_and_a_subscription() {
        let ns = namespace(
            r#"{"Name":"in","Properties":{"ForwardTo":"middle"}},{"Name":"middle","Properties":{"ForwardTo":"fanout"}},
               {"Name":"out"}"#,
            r#"{"Name":"fanout","Subscriptions":[{"Name":"fwd","Properties":{"ForwardTo":"out"}},{"Name":"kept"}]}"#,
        );
        send(&ns, "in", vec![message("m", 10)]);
        for path in ["in", "middle", "fanout/subscriptions/fwd"] {
            assert_eq!(queue(&ns, path).counts(), QueueCounts::default(), "{path} keeps nothing");
        }
        assert_eq!(drain(&ns, "fanout/subscriptions/kept").len(), 1);
        let out = drain(&ns, "out");
        assert_eq!(out.iter().map(id).collect::<Vec<_>>(), ["m"]);
        assert_eq!(
            annotation(&out[0], "x-opt-enqueue-sequence-number"),
            Some(Value::Long(1)),
            "where it first arrived"
        );
        assert!(queue(&ns, "in").forwards() && !queue(&ns, "out").forwards());
    }

    #[tokio::test]
    async fn a_loop_ends_in_a_dead_letter_queue_after_four_hops() {
        let ns =
            namespace(r#"{"Name":"a","Properties":{"ForwardTo":"b"}},{"Name":"b","Properties":{"ForwardTo":"a"}}"#, "");
        send(&ns, "a", vec![message("m", 10)]);
        // a → b → a → b → a: four hops; the fifth would leave a.
        let dead = drain(&ns, "a/$DeadLetterQueue");
        assert_eq!(dead.len(), 1);
        assert_eq!(app_property(&dead[0], "DeadLetterReason").as_deref(), Some("MaxTransferHopCountExceeded"));
        assert_eq!(drain(&ns, "b/$DeadLetterQueue").len(), 0);
    }

    #[tokio::test]
    async fn a_message_the_target_refuses_goes_to_the_sources_dead_letter_queue() {
        let ns = namespace(
            r#"{"Name":"src","Properties":{"ForwardTo":"full"}},{"Name":"full","Properties":{"MaxSizeInMegabytes":1}},
               {"Name":"plain","Properties":{"ForwardTo":"sessions"}},{"Name":"sessions","Properties":{"RequiresSession":true}}"#,
            "",
        );
        send(&ns, "full", vec![message("filler", 1000 * 1024)]);
        send(&ns, "src", vec![message("a", 100 * 1024), message("b", 10)]);
        let dead = drain(&ns, "src/$DeadLetterQueue");
        assert_eq!(dead.iter().map(id).collect::<Vec<_>>(), ["a", "b"], "a send moves whole, or not at all");
        assert_eq!(app_property(&dead[0], "DeadLetterReason").as_deref(), Some("QuotaExceededException"));
        assert!(app_property(&dead[0], "DeadLetterErrorDescription").unwrap().contains("'full'"));
        assert_eq!(queue(&ns, "full").counts().active, 1, "what the target held is untouched");
        send(&ns, "plain", vec![message("no-session", 10)]);
        let dead = drain(&ns, "plain/$DeadLetterQueue");
        assert_eq!(app_property(&dead[0], "DeadLetterReason").as_deref(), Some("Session ID is null."));
    }

    #[tokio::test]
    async fn dead_lettered_messages_move_to_their_target_with_reason_and_source() {
        let ns = namespace(
            r#"{"Name":"work","Properties":{"ForwardDeadLetteredMessagesTo":"parked","MaxDeliveryCount":1}},{"Name":"parked"}"#,
            "",
        );
        send(&ns, "work", vec![message("explicit", 10), message("poison", 10)]);
        let work = queue(&ns, "work");
        let first = work.take(ReceiveMode::PeekLock).unwrap();
        let settlement = Settlement::DeadLetter { reason: Some("bad".into()), description: None, properties: vec![] };
        work.settle(first.lock_token.unwrap(), settlement).unwrap();
        let second = work.take(ReceiveMode::PeekLock).unwrap();
        work.settle(second.lock_token.unwrap(), Settlement::Abandon(vec![])).unwrap();
        let parked = drain(&ns, "parked");
        let reasons: Vec<_> = parked.iter().map(|m| app_property(m, "DeadLetterReason").unwrap()).collect();
        assert_eq!(reasons, ["bad", "MaxDeliveryCountExceeded"]);
        for m in &parked {
            assert_eq!(annotation(m, "x-opt-deadletter-source"), Some(Value::String("work".into())));
        }
        assert_eq!(work.counts(), QueueCounts::default(), "nothing stays in work or its dead-letter queue");
    }

    #[tokio::test]
    async fn a_scheduled_message_waits_in_its_queue_and_moves_when_due() {
        let ns = namespace(r#"{"Name":"src","Properties":{"ForwardTo":"dst"}},{"Name":"dst"}"#, "");
        let mut m = message("later", 10);
        m.scheduled_enqueue_ms = Some(crate::message::now_ms() + 200);
        let seqs = queue(&ns, "src").enqueue(vec![m]).unwrap();
        assert_eq!(queue(&ns, "src").counts().scheduled, 1, "scheduled {seqs:?}, kept until due");
        let dst = queue(&ns, "dst");
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            while dst.counts().active == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(arrived.is_ok(), "the scheduled message was never forwarded");
        assert_eq!(queue(&ns, "src").counts(), QueueCounts::default());
    }

    #[tokio::test]
    async fn the_memory_budget_refuses_sends_never_dead_letters_and_frees_what_leaves() {
        use crate::queue::{Memory, QuotaExceeded};
        let cost = |bytes: u64| Memory::cost(1, bytes);
        let ns = namespace_within(
            r#"{"Name":"a"},{"Name":"b"}"#,
            r#"{"Name":"t","Subscriptions":[{"Name":"s"}]}"#,
            3 * cost(1000),
        );
        send(&ns, "a", vec![message("1", 900)]);
        send(&ns, "t", vec![message("2", 900)]);
        let (a, b) = (queue(&ns, "a"), queue(&ns, "b"));
        let refused = b.enqueue(vec![message("3", 900), message("4", 900)]).unwrap_err();
        assert!(matches!(refused, QuotaExceeded::Memory { .. }), "{refused}");
        assert_eq!(b.counts(), QueueCounts::default(), "all or none");
        assert_eq!(ns.memory_used(), 2 * cost(message("1", 900).size as u64), "every entity charges one budget");
        b.enqueue(vec![message("3", 900)]).unwrap();
        let held = a.take(ReceiveMode::PeekLock).unwrap();
        let dead_letter = Settlement::DeadLetter { reason: None, description: None, properties: vec![] };
        a.settle(held.lock_token.unwrap(), dead_letter).unwrap();
        assert_eq!(a.counts().dead_lettered, 1, "moving to a dead-letter queue is never refused");
        assert!(b.enqueue(vec![message("4", 900)]).is_err(), "still full");
        drain(&ns, "a/$DeadLetterQueue");
        drain(&ns, "t/subscriptions/s");
        b.enqueue(vec![message("4", 900)]).unwrap();
        drain(&ns, "b");
        assert_eq!(ns.memory_used(), 0, "what leaves gives its share back");
    }

    #[tokio::test]
    async fn entities_are_made_changed_and_deleted_while_the_namespace_serves() {
        use crate::namespace::EntityError;
        use crate::queue::QueueProperties;
        let ns = namespace(r#"{"Name":"q"}"#, "");
        assert_eq!(ns.add_queue("Q", QueueProperties::default()).unwrap_err(), EntityError::AlreadyExists("Q".into()));
        assert!(matches!(ns.add_topic("q", Default::default()), Err(EntityError::AlreadyExists(_))), "one name space");
        ns.add_topic("t", Default::default()).unwrap();
        let sub = ns.add_subscription("T", "s", QueueProperties::default(), vec![]).unwrap();
        assert_eq!(sub.name(), "t/Subscriptions/s");
        send(&ns, "t", vec![message("1", 1)]);
        assert_eq!(drain(&ns, "t/subscriptions/s").len(), 1, "a new subscription takes the topic's messages at once");

        let forward = QueueProperties { forward_to: Some("nowhere".into()), ..Default::default() };
        let made = ns.add_queue("fwd", QueueProperties::default()).unwrap();
        let e = ns.update_queue(&made, forward).unwrap_err();
        assert!(e.to_string().contains("ForwardTo of 'fwd' names 'nowhere'"), "{e}");
        ns.update_queue(&made, QueueProperties { forward_to: Some("T".into()), ..Default::default() }).unwrap();
        send(&ns, "fwd", vec![message("2", 1)]);
        assert_eq!(drain(&ns, "t/subscriptions/s").len(), 1, "forwarding set by an update");
        let sessions = QueueProperties { requires_session: true, ..Default::default() };
        assert!(matches!(ns.update_queue(&made, sessions), Err(EntityError::Immutable { key: "RequiresSession", .. })));

        let q = queue(&ns, "q");
        send(&ns, "q", vec![message("3", 1)]);
        ns.delete("q").unwrap();
        assert!(q.is_deleted() && ns.resolve("q").is_err());
        q.enqueue(vec![message("late", 1)]).unwrap();
        assert_eq!(q.counts(), QueueCounts::default(), "a send racing the delete is gone with the entity");
        send(&ns, "fwd", vec![message("4", 1)]);
        ns.delete("t").unwrap();
        assert!(sub.is_deleted() && ns.resolve("t/subscriptions/s").is_err());
        send(&ns, "fwd", vec![message("5", 1)]);
        let dead = drain(&ns, "fwd/$DeadLetterQueue");
        assert_eq!(dead.iter().map(id).collect::<Vec<_>>(), ["5"], "forwarding to a deleted topic dead-letters");
        assert_eq!(ns.delete("t").unwrap_err(), EntityError::NotFound("t".into()));
        send(&ns, "fwd", vec![message("6", 1)]);
        let size = message("6", 1).size as u64;
        assert_eq!(ns.memory_used(), crate::queue::Memory::cost(1, size), "a deleted entity's messages are let go");
    }
}

#[tokio::test]
async fn a_configuration_built_in_code_is_checked_when_the_namespace_is_made() {
    let queue = |name: &str| QueueConfig { name: name.into(), properties: Default::default() };
    let twice = Config { queues: vec![queue("a"), queue("A")], ..Config::default() };
    assert_eq!(Namespace::new(&twice, u64::MAX).unwrap_err().to_string(), "The messaging entity 'A' already exists.");
    let mut forwards = queue("a");
    forwards.properties.forward_to = Some("nowhere".into());
    let dangling = Config { queues: vec![forwards], ..Config::default() };
    let e = Namespace::new(&dangling, u64::MAX).unwrap_err().to_string();
    assert!(e.contains("ForwardTo of 'a' names 'nowhere'"), "{e}");
}

mod kept {
    //! What the data directory keeps of the entities the administration API made.

    use super::moving::{drain, id, message, queue, send};
    use super::*;
    use crate::config::TopicProperties;
    use crate::queue::QueueProperties;
    use crate::rules::{Rule, RuleConfig, RuleFilter};
    use crate::storage::{Fsync, Space, Storage};
    use std::time::Duration;

    fn file_config(parked_lock: Option<u64>) -> Config {
        let mut c = Config {
            queues: vec![QueueConfig { name: "base".into(), properties: Default::default() }],
            ..Config::default()
        };
        c.topics.push(TopicConfig {
            properties: Default::default(),
            name: "news".into(),
            subscriptions: vec![QueueConfig { name: "all".into(), properties: Default::default() }],
            rules: Default::default(),
        });
        if let Some(secs) = parked_lock {
            let properties = QueueProperties { lock_duration: Duration::from_secs(secs), ..Default::default() };
            c.queues.push(QueueConfig { name: "parked".into(), properties });
        }
        c
    }

    /// Opens the namespace of `config` on `dir`, as the emulator starts.
    async fn open(dir: &std::path::Path, config: &Config) -> (Namespace, Arc<Storage>, Restored) {
        let (storage, contents) = Storage::open(dir, Fsync::Never).unwrap();
        let ns = Namespace::with_storage(config, u64::MAX, Some(storage.clone())).unwrap();
        let restored = ns.restore(&contents).unwrap();
        (ns, storage, restored)
    }

    /// Stops as the emulator does: what was submitted is written, and the store closed.
    async fn stop(ns: Namespace, storage: Arc<Storage>) {
        storage.settled().await.unwrap();
        drop(ns);
        storage.close();
    }

    /// Waits until `q` has a message available: a restored one is made so by its entity's timer.
    async fn available(q: &Queue) {
        let some = async {
            while q.counts().active == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), some).await.expect("a restored message is made available");
    }

    fn sql(name: &str, expression: &str) -> RuleConfig {
        RuleConfig { name: name.into(), filter: RuleFilter::Sql(expression.into()), action: None }
    }

    #[tokio::test]
    async fn entities_made_changed_and_deleted_through_the_api_come_back_as_they_were_left() {
        let dir = tempfile::tempdir().unwrap();
        let (ns, storage, _) = open(dir.path(), &file_config(None)).await;
        ns.create_queue("Parked", QueueProperties::default()).unwrap();
        let made = QueueProperties {
            lock_duration: Duration::from_secs(45),
            max_delivery_count: 3,
            forward_dead_lettered_messages_to: Some("Parked".into()),
            ..Default::default()
        };
        let q = ns.create_queue("Made", QueueProperties::default()).unwrap();
        ns.update_queue(&q, made.clone()).unwrap();
        let alerts = TopicProperties { default_message_ttl: Some(Duration::from_secs(3600)), ..Default::default() };
        ns.create_topic("Alerts", alerts.clone()).unwrap();
        let urgent = ns
            .create_subscription("Alerts", "Urgent", QueueProperties::default(), vec![sql("high", "p = 'high'")])
            .unwrap();
        ns.change_rules(&urgent, |r| r.add(Rule::compile(sql("also", "n > 3")).unwrap())).unwrap();
        let extra = ns.create_subscription("news", "extra", QueueProperties::default(), Vec::new()).unwrap();
        assert!(ns.change_rules(&extra, |r| r.remove("$Default")), "a subscription with no rule at all");
        ns.create_queue("gone", QueueProperties::default()).unwrap();
        send(&ns, "gone", vec![message("lost with it", 1)]);
        ns.delete("gone").unwrap();
        ns.create_queue("target", QueueProperties::default()).unwrap();
        let fwd = QueueProperties { forward_to: Some("target".into()), ..Default::default() };
        ns.create_queue("fwd", fwd).unwrap();
        ns.delete("target").unwrap();
        // Changes to the file's entities last until the emulator stops.
        ns.update_queue(&queue(&ns, "base"), QueueProperties { max_delivery_count: 2, ..Default::default() }).unwrap();
        send(&ns, "Made", vec![message("kept", 1)]);
        send(&ns, "Alerts", vec![message("routed", 1)]);
        stop(ns, storage).await;

        let (ns, storage, restored) = open(dir.path(), &file_config(None)).await;
        assert_eq!(restored.made, 6, "Parked, Made, Alerts, Alerts/Urgent, news/extra, fwd: {restored:?}");
        let made_again = queue(&ns, "made");
        assert_eq!((made_again.name(), &*made_again.props()), ("Made", &made));
        assert_eq!(ns.topic("alerts").unwrap().props(), alerts);
        let urgent = queue(&ns, "Alerts/Subscriptions/urgent");
        assert_eq!(urgent.name(), "Alerts/Subscriptions/Urgent");
        assert_eq!(urgent.props().default_message_ttl, Some(Duration::from_secs(3600)), "bound by its topic");
        assert_eq!(urgent.rules().unwrap().list(), [sql("high", "p = 'high'"), sql("also", "n > 3")]);
        assert_eq!(queue(&ns, "news/subscriptions/extra").rules().unwrap().list(), [], "no rule is not $Default");
        assert!(ns.resolve("gone").is_err(), "a deleted entity stays deleted");
        assert_eq!(queue(&ns, "base").props().max_delivery_count, 10, "the file's entities are made as the file says");
        available(&made_again).await;
        assert_eq!(drain(&ns, "Made").iter().map(id).collect::<Vec<_>>(), ["kept"], "and their messages are theirs");
        assert_eq!(drain(&ns, "Alerts/Subscriptions/Urgent").len(), 0, "a message its rules did not select");
        // A forwarding target deleted before the stop stays gone: what goes there is dead-lettered.
        send(&ns, "fwd", vec![message("stuck", 1)]);
        assert_eq!(drain(&ns, "fwd/$DeadLetterQueue").iter().map(id).collect::<Vec<_>>(), ["stuck"]);
        stop(ns, storage).await;

        // The file now has a queue the API had made: the file's description wins, and the
        // record is dropped.
        let (ns, storage, restored) = open(dir.path(), &file_config(Some(7))).await;
        assert_eq!(restored.made, 5);
        assert_eq!(queue(&ns, "parked").props().lock_duration, Duration::from_secs(7));
        stop(ns, storage).await;
        let (_, contents) = Storage::open(dir.path(), Fsync::Never).unwrap();
        let kept: Vec<String> =
            contents.space(Space::Entities).iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
        assert_eq!(kept, ["alerts", "alerts/subscriptions/urgent", "fwd", "made", "news/subscriptions/extra"]);
    }

    #[tokio::test]
    async fn an_entity_the_api_makes_in_place_of_one_taken_out_of_the_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut with_old = file_config(None);
        with_old.queues.push(QueueConfig { name: "old".into(), properties: Default::default() });
        let (ns, storage, _) = open(dir.path(), &with_old).await;
        send(&ns, "old", vec![message("from the file's queue", 1)]);
        stop(ns, storage).await;

        let (ns, storage, restored) = open(dir.path(), &file_config(None)).await;
        assert_eq!(restored.orphaned, 1, "{restored:?}");
        let old = ns.create_queue("old", QueueProperties::default()).unwrap();
        assert_eq!(old.counts(), Default::default());
        send(&ns, "old", vec![message("new", 1)]);
        stop(ns, storage).await;

        let (ns, _storage, restored) = open(dir.path(), &file_config(None)).await;
        assert_eq!((restored.made, restored.messages, restored.orphaned), (1, 1, 0), "{restored:?}");
        available(&queue(&ns, "old")).await;
        assert_eq!(drain(&ns, "old").iter().map(id).collect::<Vec<_>>(), ["new"]);
    }
}
