//! `$management` requests: a link pair per entity, owned by a task that matches
//! responses to requests by correlation-id, so callers can have many requests in
//! flight at once. [`Management`] keeps the live pair of each entity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue};
use fe2o3_amqp::{Receiver as AmqpReceiver, Sender as AmqpSender};
use serde_amqp::Value;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{AttachFn, Connection, Epoch};
use crate::error::{Error, ErrorKind, Result};
use crate::link::{link_state_error, receiver_attach_error, sender_attach_error};
use crate::options::Dialect;
use fe2o3_amqp::session::SessionHandle;

/// A successful response: its status (200, 202, 204) and body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    pub(crate) status: i32,
    pub(crate) body: Value,
}

impl Response {
    /// A field of the body map.
    pub(crate) fn field(&self, key: &str) -> Option<&Value> {
        match &self.body {
            Value::Map(m) => m.get(&Value::String(key.into())),
            _ => None,
        }
    }
}

struct Call {
    operation: &'static str,
    body: Value,
    reply: oneshot::Sender<Result<Response>>,
}

/// A handle on an entity's management link task.
#[derive(Clone)]
struct PairHandle {
    epoch: Epoch,
    tx: mpsc::Sender<Call>,
}

/// The `$management` link pairs of one connection, one per entity, attached on first use.
pub(crate) struct Management {
    connection: Arc<Connection>,
    pairs: StdMutex<HashMap<String, PairHandle>>,
}

impl Management {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        Self { connection, pairs: StdMutex::new(HashMap::new()) }
    }

    fn pairs(&self) -> std::sync::MutexGuard<'_, HashMap<String, PairHandle>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `operation` on `entity`'s `$management` node with a body map, retrying
    /// transient failures.
    pub(crate) async fn request(
        &self,
        entity: &str,
        operation: &'static str,
        body: Vec<(&str, Value)>,
    ) -> Result<Response> {
        if self.connection.dialect() == Dialect::GenericAmqp {
            return Err(Error::not_supported(operation));
        }
        let body = Value::Map(body.into_iter().map(|(k, v)| (Value::String(k.into()), v)).collect());
        self.connection.options().retry.run(operation, entity, || self.call_once(entity, operation, body.clone())).await
    }

    async fn call_once(&self, entity: &str, operation: &'static str, body: Value) -> Result<Response> {
        let pair = self.pair(entity).await?;
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::new(ErrorKind::Connection, "the management link stopped").at(entity);
        if pair.tx.send(Call { operation, body, reply }).await.is_err() {
            self.forget(entity, pair.epoch);
            return Err(stopped());
        }
        let timeout = self.connection.options().operation_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => {
                if let Err(e) = &result
                    && e.kind() == ErrorKind::Connection
                {
                    self.forget(entity, pair.epoch);
                    self.connection.forget(pair.epoch).await;
                }
                result
            }
            Ok(Err(_)) => {
                self.forget(entity, pair.epoch);
                Err(stopped())
            }
            Err(_) => Err(Error::timeout(entity, format!("{operation} got no answer in {timeout:?}"))),
        }
    }

    fn forget(&self, entity: &str, epoch: Epoch) {
        let mut pairs = self.pairs();
        if pairs.get(entity).is_some_and(|l| l.epoch == epoch) {
            pairs.remove(entity);
        }
    }

    /// Forgets every pair (their connection is closing).
    pub(crate) fn clear(&self) {
        self.pairs().clear();
    }

    /// Attaches `entity`'s management node (if not attached yet): that tells whether the
    /// entity exists and the credentials reach it.
    pub(crate) async fn probe(&self, entity: &str) -> Result<()> {
        self.pair(entity).await.map(drop)
    }

    async fn pair(&self, entity: &str) -> Result<PairHandle> {
        let current = self.connection.epoch().await?;
        if let Some(l) = self.pairs().get(entity)
            && l.epoch == current
            && !l.tx.is_closed()
        {
            return Ok(l.clone());
        }
        let node = format!("{entity}/$management");
        let entity_name = entity.to_string();
        let reply_to = format!("{node}-reply-{}", uuid::Uuid::new_v4().simple());
        // The pair shares one AMQP session of its own.
        let (name, target) = (entity_name.clone(), reply_to.clone());
        let attach: AttachFn<(AmqpSender, AmqpReceiver)> = Box::new(move |session: &mut SessionHandle<()>| {
            Box::pin(async move {
                let sender = AmqpSender::attach(session, format!("mgmt-sender-{}", uuid::Uuid::new_v4()), node.clone())
                    .await
                    .map_err(|e| sender_attach_error(e, &name))?;
                let receiver = AmqpReceiver::builder()
                    .name(format!("mgmt-receiver-{}", uuid::Uuid::new_v4()))
                    .source(node)
                    .target(target)
                    .attach(session)
                    .await;
                match receiver {
                    Ok(receiver) => Ok((sender, receiver)),
                    Err(e) => {
                        let _ = sender.close().await;
                        Err(receiver_attach_error(e, &name))
                    }
                }
            })
        });
        let attached = self.connection.attach(entity, attach).await?;
        let ((sender, receiver), session) = (attached.link, attached.session);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            run(sender, receiver, rx, reply_to, entity_name).await;
            drop(session); // Ends the pair's session once both links are done.
        });
        let pair = PairHandle { epoch: attached.epoch, tx };
        self.pairs().insert(entity.to_string(), pair.clone());
        Ok(pair)
    }
}

/// Sends requests and routes responses until the links fail or every handle is dropped.
async fn run(
    mut sender: AmqpSender,
    mut receiver: AmqpReceiver,
    mut calls: mpsc::Receiver<Call>,
    reply_to: String,
    entity: String,
) {
    let mut pending: HashMap<String, oneshot::Sender<Result<Response>>> = HashMap::new();
    let mut next_id: u64 = 0;
    let failure = loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(call) = call else { break None };
                next_id += 1;
                let id = format!("{}-{next_id}", &reply_to[reply_to.len().saturating_sub(8)..]);
                let props = ApplicationProperties::builder()
                    .insert("operation", call.operation)
                    .insert("com.microsoft:server-timeout", SimpleValue::Uint(60_000))
                    .build();
                let message = Message::builder()
                    .properties(Properties {
                        message_id: Some(MessageId::String(id.clone())),
                        reply_to: Some(reply_to.clone()),
                        ..Default::default()
                    })
                    .application_properties(props)
                    .value(call.body)
                    .build();
                // Requests are pipelined: the response, matched by correlation-id, is the answer,
                // so the transfer's own outcome is not awaited before the next request goes out.
                match sender.send_batchable(message).await {
                    Ok(_outcome) => {
                        pending.insert(id, call.reply);
                    }
                    Err(e) => {
                        let err = match e {
                            fe2o3_amqp::link::SendError::Detached(d) => link_state_error(d.into(), &entity),
                            fe2o3_amqp::link::SendError::LinkStateError(l) => link_state_error(l, &entity),
                            other => Error::connection(&entity, "sending a management request failed", other),
                        };
                        let _ = call.reply.send(Err(err.clone()));
                        break Some(err);
                    }
                }
            }
            delivery = receiver.recv::<Body<Value>>() => {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => break Some(Error::connection(&entity, "the management link stopped", e)),
                };
                let _ = receiver.accept(&delivery).await;
                let message = delivery.into_message();
                let correlation = match message.properties.as_ref().and_then(|p| p.correlation_id.as_ref()) {
                    Some(MessageId::String(s)) => s.clone(),
                    other => {
                        tracing::warn!(entity, "management response with unexpected correlation-id {other:?}");
                        continue;
                    }
                };
                if let Some(reply) = pending.remove(&correlation) {
                    let _ = reply.send(parse_response(message, &entity));
                }
            }
        }
    };
    let err = failure.unwrap_or_else(|| Error::new(ErrorKind::Connection, "the management link closed").at(&entity));
    for (_, reply) in pending {
        let _ = reply.send(Err(err.clone()));
    }
    let _ = sender.close().await;
    let _ = receiver.close().await;
}

fn parse_response(message: Message<Body<Value>>, entity: &str) -> Result<Response> {
    let props: OrderedMap<String, SimpleValue> = message.application_properties.map(|a| a.0).unwrap_or_default();
    let int = |k: &str| match props.get(k) {
        Some(SimpleValue::Int(n)) => Some(*n),
        Some(SimpleValue::Uint(n)) => i32::try_from(*n).ok(),
        Some(SimpleValue::Long(n)) => i32::try_from(*n).ok(),
        Some(SimpleValue::Short(n)) => Some(i32::from(*n)),
        _ => None,
    };
    let text = |k: &str| match props.get(k) {
        Some(SimpleValue::String(s)) => Some(s.clone()),
        Some(SimpleValue::Symbol(s)) => Some(s.to_string()),
        _ => None,
    };
    let status = int("statusCode")
        .or_else(|| int("status-code"))
        .ok_or_else(|| Error::protocol(entity, "the management response has no statusCode"))?;
    let body = match message.body {
        Body::Value(v) => v.0,
        _ => Value::Null,
    };
    if (200..300).contains(&status) {
        return Ok(Response { status, body });
    }
    let description = text("statusDescription").or_else(|| text("status-description")).unwrap_or_default();
    Err(match text("errorCondition") {
        Some(condition) => Error::from_condition(&condition, entity, description),
        None => {
            let kind = match status {
                401 | 403 => ErrorKind::Unauthorized,
                404 => ErrorKind::NotFound,
                408 => ErrorKind::Timeout,
                410 => ErrorKind::LockLost,
                503 => ErrorKind::ServerBusy,
                _ => ErrorKind::Protocol,
            };
            Error::new(kind, format!("status {status}: {description}")).at(entity)
        }
    })
}
