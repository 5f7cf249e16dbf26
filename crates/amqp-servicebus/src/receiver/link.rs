//! The receive link task. One task owns each receive link and its AMQP session, and takes
//! commands from the receiver: receive (with a deadline), settle on the link, attach a
//! transaction controller on the link's session, close.
//!
//! Deliveries are taken from the link as soon as they arrive and kept, in order, until a
//! receive asks for them; each message carries its delivery, to settle it on the link. An
//! acceptance goes straight out through fe2o3's disposer, which shares the link's state
//! without the link itself; the other outcomes are commands like any other. Neither waits
//! for a receive to let go of the link. When the link fails, the task answers what is waiting
//! and ends, and with it every lock its deliveries held: the receiver sees the task gone,
//! reports those messages' locks lost, and attaches a new link for the next receive.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fe2o3_amqp::Receiver as AmqpReceiver;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::receiver::{ReceiverDisposer, TerminalDeliveryState};
use fe2o3_amqp::link::{DispositionError, MessageDecodeError, RecvError};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::transaction::{Controller, TransactionBase, TransactionRetirement};
use fe2o3_amqp::types::definitions::{Fields, ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::OrderedMap;
use fe2o3_amqp::types::transaction::TransactionId;
use futures_util::FutureExt as _;
use serde_amqp::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connection::{AttachFn, Epoch};
use crate::error::{Error, ErrorKind, Result};
use crate::link::{receiver_attach_error, sender_attach_error};
use crate::message::{LinkDelivery, LinkId, LockOrigin, ReceivedMessage};
use crate::options::{Dialect, ReceiveMode};

/// The `DeadLetterReason` of a message the receiver could not decode.
pub const UNDECODABLE_REASON: &str = "UndecodableMessage";

/// What the task knows of its receiver.
#[derive(Clone)]
pub(super) struct LinkContext {
    pub(super) entity: String,
    pub(super) mode: ReceiveMode,
    /// 0: credit is granted per receive; otherwise fe2o3 keeps this much credit out.
    pub(super) prefetch: u32,
    pub(super) dialect: Dialect,
    /// How long closing may take.
    pub(super) operation_timeout: Duration,
}

impl LinkContext {
    /// How [`Connection::attach`](crate::connection::Connection::attach) attaches this
    /// receiver's link: from `source`, with `properties`, in this receiver's modes, waiting up
    /// to `patience` for the broker's answer if given.
    pub(super) fn attach_fn(
        &self,
        source: Source,
        properties: Option<Fields>,
        patience: Option<Duration>,
    ) -> AttachFn<AmqpReceiver> {
        let (snd, rcv) = match self.mode {
            ReceiveMode::PeekLock => (SenderSettleMode::Unsettled, ReceiverSettleMode::First),
            ReceiveMode::ReceiveAndDelete => (SenderSettleMode::Settled, ReceiverSettleMode::First),
        };
        let credit = match self.prefetch {
            0 => CreditMode::Manual,
            n => CreditMode::Auto(n),
        };
        let entity = self.entity.clone();
        Box::new(move |session: &mut SessionHandle<()>| {
            Box::pin(async move {
                let mut builder = AmqpReceiver::builder()
                    .name(format!("receiver-{entity}-{}", uuid::Uuid::new_v4().simple()))
                    .source(source)
                    .target(format!("receiver-{}", uuid::Uuid::new_v4().simple()))
                    .sender_settle_mode(snd)
                    .receiver_settle_mode(rcv)
                    .credit_mode(credit)
                    .auto_accept(false);
                if let Some(properties) = properties {
                    builder = builder.properties(properties);
                }
                let attach = builder.attach(session);
                let attached = match patience {
                    Some(patience) => tokio::time::timeout(patience, attach)
                        .await
                        .map_err(|_| Error::timeout(&entity, "no session was granted in time"))?,
                    None => attach.await,
                };
                attached.map_err(|e| receiver_attach_error(e, &entity))
            })
        })
    }
}

/// How a delivery is settled on the link.
pub(super) enum LinkOutcome {
    /// A terminal outcome, settled now.
    Terminal(TerminalDeliveryState),
    /// Accepted as part of the transaction.
    AcceptIn(TransactionId),
}

enum Command {
    Receive(Request),
    Settle { delivery: LinkDelivery, outcome: LinkOutcome, reply: oneshot::Sender<Result<()>> },
    Controller { reply: oneshot::Sender<Result<Controller>> },
    Close { reply: oneshot::Sender<()> },
}

struct Request {
    max: usize,
    deadline: Instant,
    linger: Duration,
    /// When the first message was there for this request (its linger runs from then).
    first_at: Option<Instant>,
    reply: oneshot::Sender<Result<Vec<ReceivedMessage>>>,
}

/// The receiver's handle on its link task. Dropping every handle closes the link.
pub(super) struct LinkHandle {
    pub(super) id: LinkId,
    pub(super) epoch: Epoch,
    commands: mpsc::Sender<Command>,
    /// Accepts deliveries of the link without a trip through its task.
    disposer: ReceiverDisposer,
    /// The delivery-ids of the deliveries this receiver has not settled yet.
    unsettled: Unsettled,
    /// Why the link ended, if it failed.
    failure: Arc<OnceLock<Error>>,
}

/// Delivery-ids not settled yet, shared by the task (which adds them) and the handle (which
/// takes them out as it settles): settling twice is refused here, since fe2o3 ignores a
/// disposition for a delivery it no longer holds.
type Unsettled = Arc<Mutex<HashSet<u32>>>;

impl LinkHandle {
    /// Starts the task for an attached `link` on its own `session`.
    pub(super) fn spawn(link: AmqpReceiver, session: SessionHandle<()>, epoch: Epoch, context: LinkContext) -> Self {
        let id = LinkId::next();
        let (commands, rx) = mpsc::channel(64);
        let failure = Arc::new(OnceLock::new());
        let disposer = link.disposer();
        let unsettled = Unsettled::default();
        let task = Task {
            failure: failure.clone(),
            unsettled: unsettled.clone(),
            link,
            session,
            id,
            context,
            buffered: VecDeque::new(),
            waiting: VecDeque::new(),
        };
        tokio::spawn(task.run(rx));
        Self { id, epoch, commands, disposer, unsettled, failure }
    }

    /// Whether the link still runs (it ends when it fails or is closed).
    pub(super) fn is_alive(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Runs `op` (a step of a transaction on this link's session) while the link lives, for up
    /// to `timeout`. fe2o3's transaction controller never answers a declare or discharge whose
    /// connection died meanwhile; without this, one such step held the controller for good.
    pub(super) async fn while_alive<T>(
        &self,
        entity: &str,
        what: &str,
        timeout: Duration,
        op: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::select! {
            r = tokio::time::timeout(timeout, op) => r.map_err(|_| Error::timeout(entity, format!("{what} got no answer in {timeout:?}"))),
            () = self.commands.closed() => Err(Error::lock_lost(entity, format!("the link was lost while {what}"))),
        }
    }

    /// Why the link ended, if it ended with a failure.
    pub(super) fn failure(&self) -> Option<Error> {
        self.failure.get().cloned()
    }

    fn stopped(&self, entity: &str) -> Error {
        self.failure().unwrap_or_else(|| Error::new(ErrorKind::Connection, "the receive link stopped").at(entity))
    }

    /// Up to `max` messages: waits until `deadline` for the first, then up to `linger` for more.
    pub(super) async fn receive(
        &self,
        entity: &str,
        max: usize,
        deadline: Instant,
        linger: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let (reply, rx) = oneshot::channel();
        let request = Request { max, deadline, linger, first_at: None, reply };
        self.commands.send(Command::Receive(request)).await.map_err(|_| self.stopped(entity))?;
        rx.await.map_err(|_| self.stopped(entity))?
    }

    fn unsettled(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.unsettled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `delivery` is still unsettled.
    pub(super) fn is_unsettled(&self, delivery: &LinkDelivery) -> bool {
        self.unsettled().contains(&delivery.id)
    }

    /// Marks `delivery` settled; false if it was already.
    pub(super) fn mark_settled(&self, delivery: &LinkDelivery) -> bool {
        self.unsettled().remove(&delivery.id)
    }

    /// Settles `delivery` on the link, and waits until the disposition is written. A terminal
    /// outcome marks it settled first (refused if it was already); a transactional one leaves
    /// that to the caller, once the transaction commits.
    pub(super) async fn settle(&self, entity: &str, delivery: &LinkDelivery, outcome: LinkOutcome) -> Result<()> {
        if matches!(outcome, LinkOutcome::Terminal(_)) && !self.mark_settled(delivery) {
            return Err(Error::lock_lost(entity, "the message was settled already"));
        }
        if let LinkOutcome::Terminal(TerminalDeliveryState::Accepted(_)) = outcome {
            return self.accept(entity, delivery).await;
        }
        let (reply, rx) = oneshot::channel();
        let settle = Command::Settle { delivery: delivery.clone(), outcome, reply };
        self.commands.send(settle).await.map_err(|_| self.stopped(entity))?;
        rx.await.map_err(|_| self.stopped(entity))?
    }

    /// Accepts `delivery` on the link, through the disposer. A delivery the link no longer
    /// holds (settled already) sends nothing.
    pub(super) async fn accept(&self, entity: &str, delivery: &LinkDelivery) -> Result<()> {
        self.disposer
            .accept(delivery.info.clone())
            .await
            .map_err(|e| Error::connection(entity, "settling on the link failed", e))
    }

    /// A transaction controller on the link's session: on one session, a transactional
    /// disposition is on the wire before the discharge that commits it.
    pub(super) async fn controller(&self, entity: &str) -> Result<Controller> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Controller { reply }).await.map_err(|_| self.stopped(entity))?;
        rx.await.map_err(|_| self.stopped(entity))?
    }

    /// Closes the link and waits until it is closed.
    pub(super) async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A transaction known by its id alone: enough to retire a delivery in it.
struct InTransaction(TransactionId);

impl TransactionBase for InTransaction {
    fn txn_id(&self) -> &TransactionId {
        &self.0
    }
}

impl TransactionRetirement for InTransaction {
    type RetireError = DispositionError;
}

struct Task {
    link: AmqpReceiver,
    failure: Arc<OnceLock<Error>>,
    unsettled: Unsettled,
    /// The link's own AMQP session; ended when the task ends.
    session: SessionHandle<()>,
    id: LinkId,
    context: LinkContext,
    /// Arrived, not yet taken by a receive.
    buffered: VecDeque<ReceivedMessage>,
    /// Receives waiting, oldest first.
    waiting: VecDeque<Request>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let failure = loop {
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    None => break None,
                    Some(Command::Close { reply }) => {
                        self.end(None).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => {
                        if let Err(e) = self.on_command(command).await {
                            break Some(e);
                        }
                    }
                },
                delivery = self.link.recv::<Body<Value>>() => {
                    if let Err(e) = self.on_delivery(delivery).await {
                        break Some(e);
                    }
                }
                () = sleep_until(wake) => {}
            }
            if let Err(e) = self.answer_due().await {
                break Some(e);
            }
        };
        self.end(failure).await;
    }

    /// When the oldest waiting receive is due, if one waits.
    fn next_wake(&self) -> Option<Instant> {
        let request = self.waiting.front()?;
        Some(match request.first_at {
            Some(first) => (first + request.linger).min(request.deadline),
            None => request.deadline,
        })
    }

    async fn on_command(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Receive(mut request) => {
                let oldest = self.waiting.is_empty();
                if oldest && !self.buffered.is_empty() {
                    request.first_at = Some(Instant::now());
                }
                let max = request.max;
                self.waiting.push_back(request);
                if oldest {
                    self.grant_credit(max).await?;
                }
            }
            Command::Settle { delivery, outcome, reply } => {
                let _ = reply.send(self.settle(delivery, outcome).await);
            }
            Command::Controller { reply } => {
                let name = format!("controller-{}", uuid::Uuid::new_v4().simple());
                let attached = Controller::attach(&mut self.session, name)
                    .await
                    .map_err(|e| sender_attach_error(e, "$coordinator").in_entity(&self.context.entity));
                let _ = reply.send(attached);
            }
            Command::Close { .. } => unreachable!("handled by run"),
        }
        Ok(())
    }

    /// With credit granted per receive, asks for what the oldest request still lacks.
    async fn grant_credit(&mut self, max: usize) -> Result<()> {
        if self.context.prefetch != 0 {
            return Ok(());
        }
        let lacking = max.saturating_sub(self.buffered.len());
        if lacking == 0 {
            return Ok(());
        }
        self.link
            .set_credit(u32::try_from(lacking).unwrap_or(u32::MAX))
            .await
            .map_err(|e| Error::connection(&self.context.entity, "granting credit failed", e))
    }

    async fn settle(&mut self, delivery: LinkDelivery, outcome: LinkOutcome) -> Result<()> {
        let failed = |e: DispositionError| Error::connection(&self.context.entity, "settling on the link failed", e);
        match outcome {
            LinkOutcome::Terminal(state) => self.link.dispose(delivery.info, state).await.map_err(failed),
            LinkOutcome::AcceptIn(txn) => {
                InTransaction(txn).accept(&mut self.link, delivery.info).await.map_err(failed)
            }
        }
    }

    /// Takes a delivery in, with whatever else has already arrived: a batch takes what is
    /// there and does not wait for more (the wait would add to every message's latency at
    /// low load); one yield lets the connection's tasks pass on deliveries they hold.
    async fn on_delivery(
        &mut self,
        first: std::result::Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, RecvError>,
    ) -> Result<()> {
        self.take(first).await?;
        let wanted = self.waiting.front().map_or(0, |r| r.max);
        if self.buffered.len() < wanted {
            tokio::task::yield_now().await;
            while self.buffered.len() < wanted {
                let Some(next) = self.link.recv::<Body<Value>>().now_or_never() else { break };
                self.take(next).await?;
            }
        }
        Ok(())
    }

    async fn take(
        &mut self,
        delivery: std::result::Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, RecvError>,
    ) -> Result<()> {
        let delivery = match delivery {
            Ok(d) => d,
            Err(RecvError::MessageDecode(e)) => {
                self.dead_letter_undecodable(e).await;
                return Ok(());
            }
            Err(e) => return Err(Error::connection(&self.context.entity, "the receive link stopped", e)),
        };
        let peek_lock = self.context.mode == ReceiveMode::PeekLock;
        let link_delivery = LinkDelivery { id: *delivery.delivery_id(), info: (&delivery).into() };
        // In receive-and-delete mode the tag is not a lock token; nor is it on generic brokers.
        let lock_tag = peek_lock && self.context.dialect == Dialect::ServiceBus;
        let tag = lock_tag.then(|| delivery.delivery_tag().to_vec());
        let origin = if peek_lock { LockOrigin::Link(self.id) } else { LockOrigin::Deleted };
        let mut message =
            ReceivedMessage::from_amqp(delivery.into_message(), tag.as_deref(), None, &self.context.entity, origin);
        if peek_lock {
            self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).insert(link_delivery.id);
            message.delivery = Some(link_delivery);
        }
        if let Some(request) = self.waiting.front_mut() {
            request.first_at.get_or_insert_with(Instant::now);
        }
        self.buffered.push_back(message);
        Ok(())
    }

    /// Answers the waiting receives that are due: full, past their linger or deadline, or
    /// with messages and no linger.
    async fn answer_due(&mut self) -> Result<()> {
        loop {
            let Some(request) = self.waiting.front() else { return Ok(()) };
            let now = Instant::now();
            let due = request.reply.is_closed()
                || self.buffered.len() >= request.max
                || now >= request.deadline
                || (!self.buffered.is_empty()
                    && (request.linger.is_zero() || request.first_at.is_some_and(|f| now >= f + request.linger)));
            if !due {
                return Ok(());
            }
            let request = self.waiting.pop_front().expect("looked at just above");
            if request.reply.is_closed() {
                continue; // The caller stopped waiting; what arrived stays for the next receive.
            }
            let n = request.max.min(self.buffered.len());
            let _ = request.reply.send(Ok(self.buffered.drain(..n).collect()));
            if let Some(next) = self.waiting.front_mut() {
                if !self.buffered.is_empty() {
                    next.first_at = Some(now);
                }
                let max = next.max;
                self.grant_credit(max).await?;
            }
        }
    }

    /// A delivery that cannot be decoded (malformed, or nested too deeply to decode
    /// safely) can never be handed to anyone: it goes to the dead-letter queue on its own,
    /// with the reason, and the link goes on. In receive-and-delete mode it is already
    /// gone from the broker; the log says so.
    async fn dead_letter_undecodable(&self, e: MessageDecodeError) {
        use fe2o3_amqp::types::definitions::{Error as AmqpError, ErrorCondition};
        use fe2o3_amqp::types::primitives::Symbol;
        let entity = &self.context.entity;
        let description = format!("the message cannot be decoded: {}", e.source);
        if self.context.mode == ReceiveMode::ReceiveAndDelete {
            tracing::error!(%entity, "dropping a message received in receive-and-delete mode: {description}");
            return;
        }
        tracing::warn!(%entity, "dead-lettering a message: {description}");
        let mut info = OrderedMap::new();
        info.insert(Symbol::from("DeadLetterReason"), Value::String(UNDECODABLE_REASON.into()));
        info.insert(Symbol::from("DeadLetterErrorDescription"), Value::String(description.clone()));
        let error = AmqpError::new(
            ErrorCondition::Custom(Symbol::from("com.microsoft:dead-letter")),
            Some(description),
            Some(info),
        );
        if let Err(e) = self.link.reject(e.info, error).await {
            // The lock expires and the broker redelivers it; it ends here again, or in the
            // dead-letter queue once its delivery count runs out.
            tracing::warn!(%entity, "dead-lettering an undecodable message failed: {e}");
        }
    }

    /// Answers what waits (with what arrived, or the failure), closes the link and ends
    /// its session. Messages that arrived and were not taken keep their locks until those
    /// expire, and the broker redelivers them.
    async fn end(mut self, failure: Option<Error>) {
        if let Some(failure) = &failure {
            let _ = self.failure.set(failure.clone());
        }
        let failure = failure.unwrap_or_else(|| {
            Error::new(ErrorKind::Connection, "the receive link was closed").at(&self.context.entity)
        });
        for request in self.waiting.drain(..) {
            let answer = if self.buffered.is_empty() {
                Err(failure.clone())
            } else {
                let n = request.max.min(self.buffered.len());
                Ok(self.buffered.drain(..n).collect())
            };
            let _ = request.reply.send(answer);
        }
        // A broker that does not answer the detach must not keep the task forever.
        let timeout = self.context.operation_timeout;
        let _ = tokio::time::timeout(timeout, self.link.close()).await;
        let _ = tokio::time::timeout(timeout, self.session.end()).await;
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
