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
    let mut cb = no_settle();
    let r = decode(&management(
        &request("com.microsoft:renew-lock", body),
        ManagementContext {
            queue: &q,
            authorize: &|_| Ok(()),
            on_settled: &mut cb,
            sessions: &[],
            max_state_size: 1024,
        },
    ));
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
    let ctx = |cb| ManagementContext {
        queue: &q,
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
    let mut cb = no_settle();
    let r = decode(&management(
        &request("com.microsoft:peek-message", body),
        ManagementContext {
            queue: &q,
            authorize: &|_| Ok(()),
            on_settled: &mut cb,
            sessions: &[],
            max_state_size: 1024,
        },
    ));
    assert_eq!(status(&r), (204, None));
}

#[tokio::test]
async fn unknown_operations_are_501_not_implemented() {
    let q = Queue::new("q", QueueProperties::default());
    let mut cb = no_settle();
    let r = decode(&management(
        &request("com.microsoft:add-rule", map([])),
        ManagementContext {
            queue: &q,
            authorize: &|_| Ok(()),
            on_settled: &mut cb,
            sessions: &[],
            max_state_size: 1024,
        },
    ));
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
