//! `$cbs` and `$management` operations, without a connection.

use super::*;
use crate::queue::QueueProperties;

fn request(op: &str, body: Value) -> Request {
    Request {
        message_id: Some(MessageId::String("req-1".into())),
        reply_to: None,
        properties: [("operation".to_string(), SimpleValue::String(op.into()))].into_iter().collect(),
        body,
    }
}

fn decode(bytes: &Bytes) -> Message<Body<Value>> {
    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(bytes).unwrap().0
}

fn status(m: &Message<Body<Value>>) -> (i32, Option<String>) {
    let a = &m.application_properties.as_ref().unwrap().0;
    let code = match a.get("statusCode") {
        Some(SimpleValue::Int(c)) => *c,
        other => panic!("statusCode must be an int: {other:?}"),
    };
    let cond = match a.get("errorCondition") {
        Some(SimpleValue::Symbol(s)) => Some(s.to_string()),
        None => None,
        other => panic!("errorCondition must be a symbol: {other:?}"),
    };
    (code, cond)
}

fn no_settle() -> impl FnMut(uuid::Uuid) {
    |_| {}
}

#[tokio::test]
async fn renewing_an_unknown_lock_is_410_lock_lost_and_correlated() {
    let q = Queue::new("q", QueueProperties::default());
    let body = map([("lock-tokens", Value::Array(Array(vec![Value::Uuid(amqp_uuid(uuid::Uuid::new_v4()))])))]);
    let r = with_sessions(&q, &[], "com.microsoft:renew-lock", body);
    assert_eq!(status(&r), (410, Some("com.microsoft:message-lock-lost".into())));
    assert_eq!(r.properties.unwrap().correlation_id, Some(MessageId::String("req-1".into())));
    assert!(matches!(r.body, Body::Value(v) if matches!(v.0, Value::Map(_))));
}

#[tokio::test]
async fn each_operation_needs_its_right() {
    let q = Queue::new("q", QueueProperties::default());
    let listen_only = |needed: Rights| {
        if Rights::LISTEN.contains(needed) { Ok(()) } else { Err(format!("{needed:?} needed")) }
    };
    let mut cb = no_settle();
    let ns = crate::namespace::Namespace::empty();
    let ctx = |cb| ManagementContext {
        queue: &q,
        namespace: &ns,
        authorize: &listen_only,
        on_settled: cb,
        sessions: &[],
        max_state_size: 1024,
    };
    let peek = decode(&management(&request("com.microsoft:peek-message", map([])), ctx(&mut cb)));
    assert_eq!(status(&peek).0, 204);
    let mut cb = no_settle();
    let items = Value::List(vec![]);
    let schedule =
        decode(&management(&request("com.microsoft:schedule-message", map([("messages", items)])), ctx(&mut cb)));
    assert_eq!(status(&schedule), (401, Some("amqp:unauthorized-access".into())));
    let mut cb = no_settle();
    let rule = decode(&management(&request("com.microsoft:add-rule", map([])), ctx(&mut cb)));
    assert_eq!(status(&rule), (401, Some("amqp:unauthorized-access".into())));
}

#[tokio::test]
async fn peek_of_an_empty_queue_is_204() {
    let q = Queue::new("q", QueueProperties::default());
    let body = map([("from-sequence-number", Value::Long(1)), ("message-count", Value::Int(5))]);
    let r = with_sessions(&q, &[], "com.microsoft:peek-message", body);
    assert_eq!(status(&r), (204, None));
}

#[tokio::test]
async fn unknown_operations_are_501_not_implemented() {
    let q = Queue::new("q", QueueProperties::default());
    let r = with_sessions(&q, &[], "com.microsoft:no-such-operation", map([]));
    assert_eq!(status(&r), (501, Some("amqp:not-implemented".into())));
}

#[test]
fn put_token_accepts_a_valid_sas_with_202_and_refuses_a_bad_one_with_401() {
    let keys = Keys::default();
    let mut auth = Authorizations::default();
    let token = auth::sas_token("sb://h/q", auth::DEFAULT_KEY_NAME, auth::DEFAULT_KEY_VALUE, auth::now_secs() + 60);
    let mut req = request("put-token", Value::String(token));
    req.properties.insert("name".into(), SimpleValue::String("sb://h/q".into()));
    let r = decode(&put_token(&req, &keys, &mut auth));
    assert_eq!(r.application_properties.as_ref().unwrap().0.get("status-code"), Some(&SimpleValue::Int(202)));
    assert!(r.application_properties.as_ref().unwrap().0.get("errorCondition").is_none());
    assert!(auth.authorized_until("q", Rights::MANAGE, auth::now_secs()).is_some());

    let bad = auth::sas_token("sb://h/q", auth::DEFAULT_KEY_NAME, "wrong", auth::now_secs() + 60);
    let mut req = request("put-token", Value::String(bad));
    req.properties.insert("name".into(), SimpleValue::String("sb://h/q".into()));
    let mut fresh = Authorizations::default();
    let r = decode(&put_token(&req, &keys, &mut fresh));
    assert_eq!(r.application_properties.as_ref().unwrap().0.get("status-code"), Some(&SimpleValue::Int(401)));
    assert!(fresh.authorized_until("q", Rights::NONE, auth::now_secs()).is_none());
}

fn session_queue() -> std::sync::Arc<Queue> {
    Queue::new("sq", QueueProperties { requires_session: true, ..QueueProperties::default() })
}

fn in_session(id: &str) -> StoredMessage {
    use fe2o3_amqp_types::messaging::message::__private::Serializable;
    let message = Message::builder()
        .properties(Properties { group_id: Some(id.into()), ..Default::default() })
        .data(Binary::from(b"m".to_vec()))
        .build();
    let bytes = Bytes::from(serde_amqp::to_vec(&Serializable(message)).unwrap());
    StoredMessage::parse(&bytes).unwrap()
}

/// Runs `op` on `q` with every right, holding the sessions `held`; state up to 8 bytes.
fn with_sessions(q: &Queue, held: &[SessionClaim], op: &str, body: Value) -> Message<Body<Value>> {
    let mut cb = no_settle();
    decode(&management(
        &request(op, body),
        ManagementContext {
            queue: q,
            namespace: &crate::namespace::Namespace::empty(),
            authorize: &|_| Ok(()),
            on_settled: &mut cb,
            sessions: held,
            max_state_size: 8,
        },
    ))
}

fn body_field(m: &Message<Body<Value>>, key: &str) -> Value {
    match &m.body {
        Body::Value(v) => match &v.0 {
            Value::Map(map) => map.get(&Value::String(key.into())).cloned().unwrap_or(Value::Null),
            other => panic!("the body must be a map: {other:?}"),
        },
        other => panic!("the body must be an amqp-value: {other:?}"),
    }
}

#[tokio::test]
async fn session_state_needs_the_session_held_on_this_connection_and_fits_the_limit() {
    let q = session_queue();
    let claim = q.lock_session("a").unwrap();
    let id = || ("session-id", Value::String("a".into()));
    let not_held = with_sessions(&q, &[], "com.microsoft:get-session-state", map([id()]));
    assert_eq!(status(&not_held), (410, Some("com.microsoft:session-lock-lost".into())));
    let held = [claim];
    let empty = with_sessions(&q, &held, "com.microsoft:get-session-state", map([id()]));
    assert_eq!((status(&empty).0, body_field(&empty, "session-state")), (200, Value::Null));
    let state = |b: &[u8]| ("session-state", Value::Binary(Binary::from(b.to_vec())));
    let too_big = with_sessions(&q, &held, "com.microsoft:set-session-state", map([id(), state(b"123456789")]));
    assert_eq!(status(&too_big), (403, Some("amqp:link:message-size-exceeded".into())));
    let set = with_sessions(&q, &held, "com.microsoft:set-session-state", map([id(), state(b"1234")]));
    assert_eq!(status(&set).0, 200);
    let got = with_sessions(&q, &held, "com.microsoft:get-session-state", map([id()]));
    assert_eq!(body_field(&got, "session-state"), Value::Binary(Binary::from(b"1234".to_vec())));
    let renewed = with_sessions(&q, &held, "com.microsoft:renew-session-lock", map([id()]));
    assert!(matches!(body_field(&renewed, "expiration"), Value::Timestamp(_)), "{renewed:?}");
}

#[tokio::test]
async fn message_sessions_are_listed_in_pages_and_none_is_204() {
    let q = session_queue();
    let all = || ("last-updated-time", Value::Timestamp(Timestamp::from_milliseconds(ALL_ACTIVE_SESSIONS_MS)));
    let none = with_sessions(&q, &[], "com.microsoft:get-message-sessions", map([all()]));
    assert_eq!(status(&none).0, 204);
    q.enqueue(vec![in_session("a"), in_session("b"), in_session("a")]).unwrap();
    let page = |skip: i32, top: i32| {
        let body = map([all(), ("skip", Value::Int(skip)), ("top", Value::Int(top))]);
        with_sessions(&q, &[], "com.microsoft:get-message-sessions", body)
    };
    let first = page(0, 1);
    assert_eq!(status(&first).0, 200);
    assert_eq!(body_field(&first, "sessions-ids"), Value::Array(Array(vec![Value::String("a".into())])));
    assert_eq!(body_field(&first, "skip"), Value::Int(1));
    let second = page(1, 10);
    assert_eq!(body_field(&second, "sessions-ids"), Value::Array(Array(vec![Value::String("b".into())])));
    assert_eq!(status(&page(2, 10)).0, 204);
}
