//! Routing, authorization and the operations, without a socket.

use super::*;
use crate::auth::{DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, Keys, sas_token};
use crate::config::Config;
use crate::namespace::Namespace;

fn shared() -> Shared {
    Shared {
        namespace: Arc::new(Namespace::new(&Config { queues: vec![], ..Config::default() }, u64::MAX).unwrap()),
        keys: Keys::default().with_rights("listener", "listen-key", Rights::LISTEN),
        max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
        limits: crate::Limits::default(),
    }
}

fn request(method: &str, path: &str, key: Option<(&str, &str)>, headers: &[(&str, &str)], body: &str) -> Request {
    let mut raw =
        format!("{method} /{path}?api-version=2021-05 HTTP/1.1\r\nHost: h:1\r\nContent-Length: {}\r\n", body.len());
    if let Some((name, value)) = key {
        let token = sas_token("https://h:1/", name, value, auth::now_secs() + 600);
        raw += &format!("Authorization: {token}\r\n");
    }
    for (name, value) in headers {
        raw += &format!("{name}: {value}\r\n");
    }
    raw += "\r\n";
    raw += body;
    let mut io = raw.as_bytes();
    futures_util::FutureExt::now_or_never(http::read_request(&mut io, &mut BytesMut::new())).unwrap().unwrap().unwrap()
}

fn admin(method: &str, path: &str, body: &str) -> Request {
    request(method, path, Some((DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE)), &[], body)
}

fn entry(description: &str) -> String {
    format!(
        r#"<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/xml">{description}</content></entry>"#
    )
}

#[test]
fn paths_split_at_their_subscriptions_and_rules_segments() {
    let t = |s: &str| s.to_string();
    assert_eq!(route("$Resources/Queues"), Target::List(Listed::Queues));
    assert_eq!(route("site/orders"), Target::Entity(t("site/orders")));
    assert_eq!(route("t/Subscriptions"), Target::Subscriptions(t("t")));
    assert_eq!(route("a/t/subscriptions/s"), Target::Subscription(t("a/t"), t("s")));
    assert_eq!(route("t/Subscriptions/s/Rules"), Target::Rules(t("t"), t("s")));
    assert_eq!(route("t/Subscriptions/s/Rules/r"), Target::Rule(t("t"), t("s"), t("r")));
    assert_eq!(route("t/Subscriptions/s/Rules/"), Target::Rules(t("t"), t("s")));
    assert_eq!(route(""), Target::Unknown);
}

#[tokio::test]
async fn health_answers_without_a_key_and_the_rest_needs_manage() {
    let shared = shared();
    let health = request("GET", "health", None, &[], "");
    assert_eq!(handle(&health, &shared).status, 200);
    let anonymous = handle(&request("GET", "$Resources/queues", None, &[], ""), &shared);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.body.contains("no Authorization header"), "{}", anonymous.body);
    let listener = handle(&request("GET", "$Resources/queues", Some(("listener", "listen-key")), &[], ""), &shared);
    assert_eq!(listener.status, 401);
    assert!(listener.body.contains("Manage"), "{}", listener.body);
    let forged = handle(&request("GET", "$Resources/queues", Some((DEFAULT_KEY_NAME, "wrong")), &[], ""), &shared);
    assert_eq!(forged.status, 401);
}

#[tokio::test]
async fn a_queue_is_made_read_listed_changed_and_deleted() {
    let shared = shared();
    let put =
        admin("PUT", "orders", &entry("<QueueDescription><MaxDeliveryCount>3</MaxDeliveryCount></QueueDescription>"));
    let made = handle(&put, &shared);
    assert_eq!(made.status, 201, "{}", made.body);
    assert!(made.body.contains("<MaxDeliveryCount>3</MaxDeliveryCount>"), "{}", made.body);
    assert_eq!(handle(&put, &shared).status, 409, "made twice");
    for bad in ["-x", "a$b/$DeadLetterQueue", "a%20b"] {
        let refused = handle(&admin("PUT", bad, &entry("<QueueDescription/>")), &shared);
        assert_eq!(refused.status, 400, "{bad}: {}", refused.body);
        assert!(refused.body.contains("invalid entity name"), "{}", refused.body);
    }
    let got = handle(&admin("GET", "ORDERS", ""), &shared);
    assert!(got.body.contains("<title type=\"text\">orders</title>"), "{}", got.body);
    let listed = handle(&admin("GET", "$Resources/queues", ""), &shared);
    assert_eq!(listed.body.matches("<entry").count(), 1, "{}", listed.body);

    let change = entry("<QueueDescription><MaxDeliveryCount>5</MaxDeliveryCount></QueueDescription>");
    let changed = handle(
        &request("PUT", "orders", Some((DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE)), &[("If-Match", "*")], &change),
        &shared,
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(shared.namespace.queue("orders").unwrap().props().max_delivery_count, 5);
    let sessions = entry("<QueueDescription><RequiresSession>true</RequiresSession></QueueDescription>");
    let refused = handle(
        &request("PUT", "orders", Some((DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE)), &[("If-Match", "*")], &sessions),
        &shared,
    );
    assert_eq!(refused.status, 400, "{}", refused.body);

    assert_eq!(handle(&admin("DELETE", "orders", ""), &shared).status, 200);
    let gone = handle(&admin("GET", "orders", ""), &shared);
    assert_eq!((gone.status, gone.body.contains("<entry")), (200, false), "an empty feed, as the service answers");
    assert_eq!(handle(&admin("DELETE", "orders", ""), &shared).status, 404);
}

#[tokio::test]
async fn topics_subscriptions_and_rules_are_made_through_the_api() {
    let shared = shared();
    let topic = handle(&admin("PUT", "events", &entry("<TopicDescription/>")), &shared);
    assert_eq!(topic.status, 201, "{}", topic.body);
    let missing = handle(&admin("PUT", "nope/Subscriptions/s", &entry("<SubscriptionDescription/>")), &shared);
    assert_eq!(missing.status, 404, "{}", missing.body);
    let sub = handle(&admin("PUT", "events/Subscriptions/red", &entry("<SubscriptionDescription/>")), &shared);
    assert_eq!(sub.status, 201, "{}", sub.body);
    let rules = handle(&admin("GET", "events/Subscriptions/red/Rules", ""), &shared);
    assert!(rules.body.contains("$Default"), "{}", rules.body);
    let sql = r#"<RuleDescription xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><Filter i:type="SqlFilter"><SqlExpression>color = 'red'</SqlExpression></Filter></RuleDescription>"#;
    let made = handle(&admin("PUT", "events/Subscriptions/red/Rules/red", &entry(sql)), &shared);
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(handle(&admin("DELETE", "events/Subscriptions/red/Rules/$Default", ""), &shared).status, 200);
    let bad = sql.replace("color = 'red'", "color = ");
    let refused = handle(&admin("PUT", "events/Subscriptions/red/Rules/bad", &entry(&bad)), &shared);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("does not parse"), "{}", refused.body);
    let subs = handle(&admin("GET", "events/Subscriptions", ""), &shared);
    assert_eq!(subs.body.matches("<entry").count(), 1);
    assert_eq!(handle(&admin("DELETE", "events", ""), &shared).status, 200);
    assert_eq!(handle(&admin("GET", "events/Subscriptions/red", ""), &shared).body.matches("<entry").count(), 0);
}
