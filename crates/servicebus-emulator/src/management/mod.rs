//! Request/response nodes: `$cbs` put-token and `<entity>/$management` operations.
//!
//! Both take a request message and produce a response message; the engine routes
//! them. Keys, AMQP types and status codes follow the service (see the dialect doc):
//! `$cbs` answers with `status-code` (int), `$management` with `statusCode` (int),
//! `statusDescription` and, on errors, `errorCondition` (symbol).

use bytes::Bytes;
use fe2o3_amqp_types::definitions::{Error as AmqpError, ErrorCondition};
use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{ApplicationProperties, Body, Message, MessageId, Properties};
use fe2o3_amqp_types::primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp};
use serde_amqp::Value;
use serde_amqp::primitives::Binary;

mod rules;

use crate::auth::{self, Authorizations, Keys, Rights};
use crate::message::{StoredMessage, amqp_uuid, simple_value};
use crate::queue::{
    DeferredError, Queue, QuotaExceeded, ReceiveMode, SessionClaim, SessionError, SettleError, Settlement,
};

/// An error condition as its symbol.
pub(crate) fn condition(symbol: &str) -> ErrorCondition {
    ErrorCondition::Custom(Symbol::from(symbol))
}

/// An AMQP error with a condition, a description and an empty `info`. The field is sent
/// although empty: Python's SDK reads a `close` error's third field without checking that
/// it is there, and fails with an `IndexError` inside its own code when it is not.
pub(crate) fn error(symbol: &str, description: impl Into<String>) -> AmqpError {
    AmqpError::new(condition(symbol), Some(description.into()), Some(Default::default()))
}

/// Why a request message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    Structure(#[from] amqp_wire::WireError),
    #[error(transparent)]
    Decode(#[from] serde_amqp::Error),
}

/// A decoded request: its id, reply address, application properties and body.
pub(crate) struct Request {
    pub(crate) message_id: Option<MessageId>,
    pub(crate) reply_to: Option<String>,
    properties: OrderedMap<String, SimpleValue>,
    body: Value,
}

impl Request {
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, RequestError> {
        // Walked first: the decode below recurses once per nesting level.
        amqp_wire::check_values(payload, amqp_wire::MAX_DEPTH)?;
        let m: Message<Body<Value>> = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(payload)?.0;
        let body = match m.body {
            Body::Value(v) => v.0,
            _ => Value::Null,
        };
        let props = m.properties.unwrap_or_default();
        Ok(Self {
            message_id: props.message_id,
            reply_to: props.reply_to,
            properties: m.application_properties.map(|a| a.0).unwrap_or_default(),
            body,
        })
    }

    fn property(&self, key: &str) -> Option<&SimpleValue> {
        self.properties.get(key)
    }

    fn string_property(&self, key: &str) -> Option<&str> {
        match self.property(key) {
            Some(SimpleValue::String(s)) => Some(s),
            Some(SimpleValue::Symbol(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The operation, e.g. `put-token` or `com.microsoft:renew-lock`.
    pub(crate) fn operation(&self) -> Option<&str> {
        self.string_property("operation")
    }

    fn field(&self, key: &str) -> Option<&Value> {
        match &self.body {
            Value::Map(m) => m.get(&Value::String(key.into())),
            _ => None,
        }
    }
}

/// Builds a response message correlated with `request`.
fn response(
    request: &Request,
    status_key: &str,
    status: i32,
    description: &str,
    error: Option<&str>,
    body: Value,
) -> Bytes {
    let mut props = ApplicationProperties::builder()
        .insert(status_key, SimpleValue::Int(status))
        .insert(if status_key == "status-code" { "status-description" } else { "statusDescription" }, description);
    if let Some(e) = error {
        props = props.insert("errorCondition", SimpleValue::Symbol(Symbol::from(e)));
    }
    let properties = Properties { correlation_id: request.message_id.clone(), ..Default::default() };
    let message = Message::builder().properties(properties).application_properties(props.build()).value(body).build();
    Bytes::from(serde_amqp::to_vec(&Serializable(message)).expect("responses always encode"))
}

/// Handles a `$cbs` put-token; returns the response and, on success, records the grant.
pub(crate) fn put_token(request: &Request, keys: &Keys, authorizations: &mut Authorizations) -> Bytes {
    let respond = |code: i32, description: &str| response(request, "status-code", code, description, None, Value::Null);
    if request.operation() != Some("put-token") {
        return respond(400, &format!("unsupported $cbs operation {:?}; only put-token is", request.operation()));
    }
    let Some(audience) = request.string_property("name") else {
        return respond(400, "the put-token request has no 'name' (the audience)");
    };
    let token = match &request.body {
        Value::String(t) => t.as_str(),
        _ => return respond(400, "the put-token body must be an AMQP string holding the token"),
    };
    if !token.starts_with("SharedAccessSignature ") {
        // An Entra ID (JWT) token: the emulator has no identity provider to check it against.
        return respond(401, "only SAS tokens are accepted by the emulator; JWT tokens cannot be validated locally");
    }
    let now = auth::now_secs();
    match auth::validate(token, audience, keys, now) {
        Ok(grant) => match authorizations.add(grant, now) {
            Ok(()) => respond(202, "Accepted"),
            Err(e) => respond(403, &e.to_string()),
        },
        Err(e) => {
            tracing::info!(audience, error = %e, "put-token refused");
            respond(e.status_code(), &e.to_string())
        }
    }
}

/// What a `$management` operation needs from the connection it arrived on.
pub(crate) struct ManagementContext<'a> {
    pub(crate) queue: &'a Queue,
    /// The namespace of the queue: rule changes go through it, so the data directory keeps them.
    pub(crate) namespace: &'a crate::namespace::Namespace,
    /// Checks that the connection holds these rights for the entity; the error says why not.
    pub(crate) authorize: &'a dyn Fn(Rights) -> Result<(), String>,
    /// Called for each lock token that update-disposition settled, so the connection can drop its record.
    pub(crate) on_settled: &'a mut dyn FnMut(uuid::Uuid),
    /// The message sessions of this entity that receivers on the connection hold.
    pub(crate) sessions: &'a [SessionClaim],
    /// The largest session state accepted, in bytes (the entity's largest message).
    pub(crate) max_state_size: usize,
}

struct Failure {
    status: i32,
    condition: &'static str,
    description: String,
}

fn fail(status: i32, condition: &'static str, description: impl Into<String>) -> Failure {
    Failure { status, condition, description: description.into() }
}

fn bad_request(description: impl Into<String>) -> Failure {
    fail(400, "com.microsoft:argument-error", description)
}

/// A settlement error as the service reports it: lock lost is 410, a misuse 400.
fn settle_failure(e: SettleError) -> Failure {
    let status = match e {
        SettleError::LockLost | SettleError::SessionLockLost => 410,
        SettleError::SessionMessage => 400,
    };
    fail(status, e.condition(), e.description())
}

fn session_failure(e: SessionError) -> Failure {
    fail(410, e.condition(), e.to_string())
}

/// The rights an operation needs, as the service asks for them.
fn required_rights(op: &str) -> Rights {
    match op {
        "com.microsoft:schedule-message" | "com.microsoft:cancel-scheduled-message" => Rights::SEND,
        "com.microsoft:renew-lock"
        | "com.microsoft:peek-message"
        | "com.microsoft:receive-by-sequence-number"
        | "com.microsoft:update-disposition"
        | "com.microsoft:renew-session-lock"
        | "com.microsoft:get-session-state"
        | "com.microsoft:set-session-state"
        | "com.microsoft:get-message-sessions" => Rights::LISTEN,
        "" => Rights::NONE,
        _ => Rights::MANAGE,
    }
}

/// Handles a `$management` request.
pub(crate) fn management(request: &Request, ctx: ManagementContext<'_>) -> Bytes {
    let op = request.operation().unwrap_or_default().to_string();
    let result = match (ctx.authorize)(required_rights(&op)) {
        Err(why) => Err(fail(401, "amqp:unauthorized-access", why)),
        Ok(()) => handle(request, &op, ctx),
    };
    match result {
        Ok((200, body)) => response(request, "statusCode", 200, "OK", None, body),
        Ok((status, body)) => response(request, "statusCode", status, "No Content", None, body),
        Err(f) => {
            tracing::debug!(operation = %op, status = f.status, condition = f.condition, "management request failed: {}", f.description);
            response(request, "statusCode", f.status, &f.description, Some(f.condition), Value::Map(OrderedMap::new()))
        }
    }
}

fn handle(request: &Request, op: &str, ctx: ManagementContext<'_>) -> OpResult {
    match op {
        "com.microsoft:renew-lock" => renew_lock(request, ctx.queue),
        "com.microsoft:peek-message" => peek(request, ctx.queue),
        "com.microsoft:schedule-message" => schedule(request, ctx.queue),
        "com.microsoft:cancel-scheduled-message" => cancel_scheduled(request, ctx.queue),
        "com.microsoft:receive-by-sequence-number" => receive_deferred(request, &ctx),
        "com.microsoft:update-disposition" => update_disposition(request, ctx.queue, ctx.on_settled),
        "com.microsoft:renew-session-lock" => renew_session_lock(request, &ctx),
        "com.microsoft:get-session-state" => get_session_state(request, &ctx),
        "com.microsoft:set-session-state" => set_session_state(request, &ctx),
        "com.microsoft:get-message-sessions" => message_sessions(request, ctx.queue),
        "com.microsoft:add-rule" => rules::add_rule(request, ctx.namespace, ctx.queue),
        "com.microsoft:remove-rule" => rules::remove_rule(request, ctx.namespace, ctx.queue),
        "com.microsoft:enumerate-rules" => rules::enumerate_rules(request, ctx.queue),
        "" => Err(bad_request("the request has no 'operation' application property")),
        other => Err(fail(501, "amqp:not-implemented", format!("the emulator does not implement {other}"))),
    }
}

type OpResult = Result<(i32, Value), Failure>;

fn map(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::String(k.into()), v)).collect())
}

fn array_items<'a>(request: &'a Request, key: &str) -> Result<&'a [Value], Failure> {
    match request.field(key) {
        Some(Value::Array(a)) => Ok(&a.0),
        Some(Value::List(l)) => Ok(l),
        _ => Err(bad_request(format!("the request body has no '{key}' array"))),
    }
}

fn lock_tokens(request: &Request) -> Result<Vec<uuid::Uuid>, Failure> {
    array_items(request, "lock-tokens")?
        .iter()
        .map(|v| match v {
            Value::Uuid(u) => Ok(uuid::Uuid::from_bytes(*u.as_inner())),
            _ => Err(bad_request("lock-tokens must be uuids")),
        })
        .collect()
}

fn sequence_numbers(request: &Request) -> Result<Vec<i64>, Failure> {
    array_items(request, "sequence-numbers")?
        .iter()
        .map(|v| integer(v).ok_or_else(|| bad_request("sequence-numbers must be longs")))
        .collect()
}

fn integer(v: &Value) -> Option<i64> {
    Some(match v {
        Value::Long(n) => *n,
        Value::Int(n) => i64::from(*n),
        Value::Short(n) => i64::from(*n),
        Value::Byte(n) => i64::from(*n),
        Value::Ulong(n) => i64::try_from(*n).ok()?,
        Value::Uint(n) => i64::from(*n),
        Value::Ushort(n) => i64::from(*n),
        Value::Ubyte(n) => i64::from(*n),
        _ => return None,
    })
}

fn renew_lock(request: &Request, queue: &Queue) -> OpResult {
    let mut expirations = Vec::new();
    for token in lock_tokens(request)? {
        let until = queue.renew_lock(token).map_err(settle_failure)?;
        expirations.push(Value::Timestamp(Timestamp::from_milliseconds(until)));
    }
    Ok((200, map([("expirations", Value::Array(Array(expirations)))])))
}

fn peek(request: &Request, queue: &Queue) -> OpResult {
    let from = request.field("from-sequence-number").and_then(integer).unwrap_or(1);
    let count = request.field("message-count").and_then(integer).unwrap_or(1).clamp(0, 1000) as usize;
    let session = match request.field("session-id") {
        Some(Value::String(id)) => Some(id.as_str()),
        _ => None,
    };
    let messages = queue.peek(from, count, session);
    if messages.is_empty() {
        return Ok((204, map([])));
    }
    let list = messages.into_iter().map(|m| map([("message", Value::Binary(Binary::from(m.to_vec())))])).collect();
    Ok((200, map([("messages", Value::List(list))])))
}

fn schedule(request: &Request, queue: &Queue) -> OpResult {
    let items = match request.field("messages") {
        Some(Value::List(l)) => l,
        Some(Value::Array(a)) => &a.0,
        _ => return Err(bad_request("the request body has no 'messages' list")),
    };
    let mut parsed = Vec::new();
    for item in items {
        let Value::Map(m) = item else { return Err(bad_request("each scheduled message must be a map")) };
        let Some(Value::Binary(bytes)) = m.get(&Value::String("message".into())) else {
            return Err(bad_request("each scheduled message needs 'message' (binary)"));
        };
        let msg = StoredMessage::parse(&Bytes::copy_from_slice(bytes))
            .map_err(|e| bad_request(format!("a scheduled message is malformed: {e}")))?;
        parsed.push(msg);
    }
    let seqs = queue.enqueue(parsed).map_err(|e| fail(403, QuotaExceeded::CONDITION, e.to_string()))?;
    Ok((200, map([("sequence-numbers", Value::Array(Array(seqs.into_iter().map(Value::Long).collect())))])))
}

fn cancel_scheduled(request: &Request, queue: &Queue) -> OpResult {
    let seqs = sequence_numbers(request)?;
    queue.cancel_scheduled(&seqs).map_err(|seq| {
        fail(404, "com.microsoft:message-not-found", format!("no scheduled message has sequence number {seq}"))
    })?;
    Ok((200, map([])))
}

fn receive_deferred(request: &Request, ctx: &ManagementContext<'_>) -> OpResult {
    let seqs = sequence_numbers(request)?;
    let mode = match request.field("receiver-settle-mode").and_then(integer) {
        Some(0) => ReceiveMode::ReceiveAndDelete,
        _ => ReceiveMode::PeekLock,
    };
    let claim = match request.field("session-id") {
        Some(Value::String(_)) => Some(held_session(request, ctx)?),
        _ => None,
    };
    let deliveries = ctx.queue.receive_deferred(&seqs, mode, claim).map_err(|e| match e {
        DeferredError::NotDeferred(_) => fail(404, "com.microsoft:message-not-found", e.to_string()),
        DeferredError::SessionRequired => fail(400, "amqp:not-allowed", e.to_string()),
        DeferredError::Session(e) => session_failure(e),
    })?;
    let list = deliveries
        .into_iter()
        .map(|d| {
            let mut entries = vec![("message", Value::Binary(Binary::from(d.payload.to_vec())))];
            if let Some(token) = d.lock_token {
                entries.push(("lock-token", Value::Uuid(amqp_uuid(token))));
            }
            map(entries)
        })
        .collect();
    Ok((200, map([("messages", Value::List(list))])))
}

fn update_disposition(request: &Request, queue: &Queue, on_settled: &mut dyn FnMut(uuid::Uuid)) -> OpResult {
    let status = match request.field("disposition-status") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(bad_request("the request body has no 'disposition-status' string")),
    };
    let text = |key: &str| match request.field(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let properties: Vec<(String, SimpleValue)> = match request.field("properties-to-modify") {
        Some(Value::Map(m)) => m
            .iter()
            .filter_map(|(k, v)| match k {
                Value::String(k) => simple_value(v.clone()).map(|v| (k.clone(), v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let settlement = match status {
        "completed" => Settlement::Complete,
        "abandoned" => Settlement::Abandon(properties),
        "defered" | "deferred" => Settlement::Defer(properties),
        "suspended" => Settlement::DeadLetter {
            reason: text("deadletter-reason"),
            description: text("deadletter-description"),
            properties,
        },
        other => {
            return Err(bad_request(format!(
                "unknown disposition-status {other:?}: use completed, abandoned, defered or suspended"
            )));
        }
    };
    for token in lock_tokens(request)? {
        queue.settle(token, settlement.clone()).map_err(settle_failure)?;
        on_settled(token);
    }
    Ok((200, map([])))
}

/// The request's `session-id`: a session a receiver on this connection holds.
fn held_session<'a>(request: &Request, ctx: &ManagementContext<'a>) -> Result<&'a SessionClaim, Failure> {
    let id = match request.field("session-id") {
        Some(Value::String(id)) => id,
        _ => return Err(bad_request("the request body has no 'session-id' string")),
    };
    ctx.sessions.iter().find(|c| &c.id == id).ok_or_else(|| {
        fail(
            410,
            "com.microsoft:session-lock-lost",
            format!(
                "The session '{id}' is not locked by a receiver on this connection: its lock expired, its receiver \
                 closed, or it was never accepted. Accept the session first."
            ),
        )
    })
}

fn renew_session_lock(request: &Request, ctx: &ManagementContext<'_>) -> OpResult {
    let claim = held_session(request, ctx)?;
    let until = ctx.queue.renew_session_lock(claim).map_err(session_failure)?;
    Ok((200, map([("expiration", Value::Timestamp(Timestamp::from_milliseconds(until)))])))
}

fn get_session_state(request: &Request, ctx: &ManagementContext<'_>) -> OpResult {
    let claim = held_session(request, ctx)?;
    let state = ctx.queue.session_state(claim).map_err(session_failure)?;
    let value = state.map_or(Value::Null, |b| Value::Binary(Binary::from(b.to_vec())));
    Ok((200, map([("session-state", value)])))
}

fn set_session_state(request: &Request, ctx: &ManagementContext<'_>) -> OpResult {
    let claim = held_session(request, ctx)?;
    let state = match request.field("session-state") {
        Some(Value::Binary(b)) => Some(Bytes::copy_from_slice(b.as_slice())),
        Some(Value::Null) | None => None,
        Some(_) => return Err(bad_request("session-state must be binary, or null to clear it")),
    };
    if let Some(s) = &state
        && s.len() > ctx.max_state_size
    {
        return Err(fail(
            403,
            "amqp:link:message-size-exceeded",
            format!(
                "The session state ({} bytes) exceeds the limit ({} bytes): the state of a session may be as large \
                 as a message of its entity.",
                s.len(),
                ctx.max_state_size
            ),
        ));
    }
    ctx.queue.set_session_state(claim, state).map_err(session_failure)?;
    Ok((200, map([])))
}

/// `DateTime.MaxValue` in ms since the epoch: "every session with messages".
const ALL_ACTIVE_SESSIONS_MS: i64 = 253_402_300_800_000;

fn message_sessions(request: &Request, queue: &Queue) -> OpResult {
    let since = match request.field("last-updated-time") {
        Some(Value::Timestamp(t)) if t.milliseconds() < ALL_ACTIVE_SESSIONS_MS => Some(t.milliseconds()),
        _ => None,
    };
    let skip = request.field("skip").and_then(integer).unwrap_or(0).max(0) as usize;
    let top = request.field("top").and_then(integer).unwrap_or(100).clamp(0, 1000) as usize;
    let ids = queue.session_ids(since, skip, top);
    if ids.is_empty() {
        return Ok((204, map([])));
    }
    let next_skip = i32::try_from(skip + ids.len()).unwrap_or(i32::MAX);
    let ids = Value::Array(Array(ids.into_iter().map(Value::String).collect()));
    Ok((200, map([("skip", Value::Int(next_skip)), ("sessions-ids", ids)])))
}

#[cfg(test)]
mod tests;
