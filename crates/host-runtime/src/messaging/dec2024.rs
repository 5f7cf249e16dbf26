//! The December 2024 revision's imports on [`Messaging`]: upstream's `types` (the `client`
//! and `message` resources), `producer` and `request-reply`, and the extension's `settlement`
//! and `sessions` (`servicebus:messaging@0.2.0`) on `borrow<message>`.
//!
//! A message handle is a [`MessageState`] in the store's table; one the host gave the guest
//! names its delivery, so settling it needs nothing but the handle. Failures are upstream's
//! `error` variant for sending and request-reply, and the extension's `error` record (a kind
//! to branch on) for settling.

use std::time::Duration;

use amqp_servicebus::{ReceiveMode, ReceiverOptions, SessionReceiverOptions};
use wasmtime::component::Resource;
use wit_interface::dec2024::wasi_messaging::{producer, request_reply, types};
use wit_interface::dec2024::{Error, sessions, settlement};
use wit_interface::{Client, ErrorKind, GuestError, MessageState, RequestOptions, metadata};

use super::call::Messaging;
use super::ops::Done;
use crate::convert;
use crate::delivery::Settlement;
use crate::links::DEFAULT_CONNECTION;

/// What a messaging import returns: a value, or upstream's `error`.
type Answer<T> = wasmtime::Result<Result<T, Error>>;
/// What a settlement import returns: a value, or the extension's `error`.
type Settled<T> = wasmtime::Result<Result<T, settlement::Error>>;

/// How long a request with no timeout waits for its replies (the handler's deadline, 5
/// minutes by default, usually ends it sooner).
const REQUEST_WAIT_UNBOUNDED: Duration = Duration::from_secs(3600);

/// Upstream's `error` for a failure: the cases it has, and `other` with the kind for the rest.
fn wasi_error(e: GuestError) -> Error {
    match e.kind() {
        ErrorKind::Timeout => Error::Timeout,
        ErrorKind::Unavailable => Error::Connection(e.message().to_string()),
        ErrorKind::Unauthorized | ErrorKind::NotAllowed => Error::PermissionDenied(e.message().to_string()),
        _ => Error::Other(e.to_string()),
    }
}

fn answer<T>(done: Done<T>) -> Answer<T> {
    Ok(done.map_err(wasi_error))
}

fn settled<T>(done: Done<T>) -> Settled<T> {
    Ok(done.map_err(|e| settlement::Error { kind: e.kind().into(), detail: e.message().to_string() }))
}

impl Messaging<'_> {
    /// The delivery id of the message a handle names (`None` for one the guest made).
    fn delivery_of(&self, m: &Resource<MessageState>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(m)?.delivery.clone())
    }

    /// Settles the message a handle names.
    async fn settle_handle(&mut self, m: Resource<MessageState>, settlement: Settlement) -> Settled<()> {
        let id = self.delivery_of(&m)?;
        settled(self.settle(id.as_deref(), settlement).await)
    }

    /// Sends `message` to `topic`, with `reply-to` the host's reply queue and a fresh
    /// `reply-to-session-id`, then receives that message session until the replies expected
    /// arrived or the timeout passed.
    async fn send_request(
        &mut self,
        connection: &str,
        topic: &str,
        mut message: amqp_servicebus::Message,
        options: RequestOptions,
    ) -> Done<Vec<MessageState>> {
        let Some(reply_queue) = self.ctx.reply_queue().map(String::from) else {
            return Err(self.refuse(
                ErrorKind::NotAllowed,
                "request-reply needs a reply queue: set reply-queue in host.toml's [guest] to a queue that \
                 requires sessions (each request receives its replies in a message session of its own)",
            ));
        };
        let client = self.ctx.links().client(connection).cloned().expect("connect hands out only configured names");
        let wait = options.timeout_ms.map_or(REQUEST_WAIT_UNBOUNDED, |ms| Duration::from_millis(u64::from(ms)));
        let session_id = uuid::Uuid::new_v4().to_string();
        // The session is locked before the request leaves, so no reply can arrive unwatched.
        let session_options = SessionReceiverOptions {
            receiver: ReceiverOptions { mode: ReceiveMode::ReceiveAndDelete, prefetch: 0 },
            wait: Duration::ZERO,
            max_lock_renewal: wait,
        };
        let receiver = match client.accept_session(&reply_queue, &session_id, session_options).await {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the reply queue {reply_queue:?} (reply-queue in host.toml) refused a session: {e}");
                return Err(self.refuse(super::ops::kind_of(&e), why));
            }
        };
        message.reply_to = Some(reply_queue.clone());
        message.reply_to_session_id = Some(session_id);
        if message.message_id.is_none() {
            message.message_id = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        let sent = self.send_messages(connection, topic, vec![message]).await;
        let replies = match sent {
            Ok(()) => {
                let expected = options.expected_replies.unwrap_or(1).max(1) as usize;
                receive_replies(&receiver, expected, wait).await.map_err(|e| self.refuse_sb(&e))
            }
            Err(e) => Err(e),
        };
        receiver.close().await;
        let replies = replies?;
        if replies.is_empty() {
            return Err(self.refuse(ErrorKind::Timeout, format!("no reply on {reply_queue:?} within {wait:?}")));
        }
        Ok(replies.iter().map(|m| convert::to_message_state(m, &reply_queue, None)).collect())
    }

    /// Sends `message` to where `to` asks replies to go: its `reply-to`, in the message session
    /// its `reply-to-session-id` names, correlated by its `message-id`.
    async fn send_reply(&mut self, to: &MessageState, message: MessageState) -> Done<()> {
        let Some(reply_to) = to.metadata_value(metadata::REPLY_TO).map(String::from) else {
            return Err(self.refuse(
                ErrorKind::InvalidArgument,
                "the message replied to has no reply-to: only a message that asks for replies can be replied to",
            ));
        };
        let mut out = self.outgoing(convert::from_message_state(message))?;
        if let Some(session) = to.metadata_value(metadata::REPLY_TO_SESSION_ID) {
            out.session_id = Some(session.to_string());
        }
        if out.correlation_id.is_none() {
            out.correlation_id = to.metadata_value(metadata::MESSAGE_ID).map(String::from);
        }
        self.send_messages(DEFAULT_CONNECTION, &reply_to, vec![out]).await
    }
}

/// Receives up to `expected` messages from a session receiver, for at most `wait`.
async fn receive_replies(
    receiver: &amqp_servicebus::Receiver,
    expected: usize,
    wait: Duration,
) -> Result<Vec<amqp_servicebus::ReceivedMessage>, amqp_servicebus::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut replies = Vec::with_capacity(expected.min(64));
    while replies.len() < expected {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        replies.extend(receiver.receive(expected - replies.len(), left).await?);
    }
    Ok(replies)
}

impl types::Host for Messaging<'_> {}

impl types::HostClient for Messaging<'_> {
    fn connect(&mut self, name: String) -> Answer<Resource<Client>> {
        match self.connection(&name) {
            Ok(()) => Ok(Ok(self.table.push(Client::new(name))?)),
            Err(e) => answer(Err(e)),
        }
    }

    /// The connections are the host's, shared by every call: a client handle only names one,
    /// so there is nothing to close.
    fn disconnect(&mut self, c: Resource<Client>) -> Answer<()> {
        self.table.get(&c)?;
        Ok(Ok(()))
    }

    fn drop(&mut self, c: Resource<Client>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl types::HostMessage for Messaging<'_> {
    fn new(&mut self, data: Vec<u8>) -> wasmtime::Result<Resource<MessageState>> {
        Ok(self.table.push(MessageState::new(data))?)
    }

    fn topic(&mut self, m: Resource<MessageState>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.topic.clone())
    }

    fn content_type(&mut self, m: Resource<MessageState>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.content_type.clone())
    }

    fn set_content_type(&mut self, m: Resource<MessageState>, content_type: String) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.content_type = Some(content_type);
        Ok(())
    }

    fn data(&mut self, m: Resource<MessageState>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&m)?.data.clone())
    }

    fn set_data(&mut self, m: Resource<MessageState>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.data = data;
        Ok(())
    }

    fn metadata(&mut self, m: Resource<MessageState>) -> wasmtime::Result<Option<Vec<(String, String)>>> {
        Ok(self.table.get(&m)?.metadata.clone())
    }

    fn add_metadata(&mut self, m: Resource<MessageState>, key: String, value: String) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.add_metadata(key, value);
        Ok(())
    }

    fn set_metadata(&mut self, m: Resource<MessageState>, meta: Vec<(String, String)>) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.metadata = Some(meta);
        Ok(())
    }

    fn remove_metadata(&mut self, m: Resource<MessageState>, key: String) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.remove_metadata(&key);
        Ok(())
    }

    fn drop(&mut self, m: Resource<MessageState>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

impl producer::Host for Messaging<'_> {
    async fn send(&mut self, c: Resource<Client>, topic: String, message: Resource<MessageState>) -> Answer<()> {
        let connection = self.table.get(&c)?.connection().to_string();
        let message = self.table.delete(message)?;
        let done = match self.outgoing(convert::from_message_state(message)) {
            Ok(m) => self.send_messages(&connection, &topic, vec![m]).await,
            Err(e) => Err(e),
        };
        answer(done)
    }
}

impl request_reply::Host for Messaging<'_> {
    async fn request(
        &mut self,
        c: Resource<Client>,
        topic: String,
        message: Resource<MessageState>,
        options: Option<Resource<RequestOptions>>,
    ) -> Answer<Vec<Resource<MessageState>>> {
        let connection = self.table.get(&c)?.connection().to_string();
        let message = self.table.get(&message)?.clone();
        let options = match options {
            Some(o) => self.table.delete(o)?,
            None => RequestOptions::default(),
        };
        let done = match self.outgoing(convert::from_message_state(message)) {
            Ok(m) => self.send_request(&connection, &topic, m, options).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(replies) => {
                let handles: Result<Vec<_>, _> = replies.into_iter().map(|r| self.table.push(r)).collect();
                Ok(Ok(handles?))
            }
            Err(e) => answer(Err(e)),
        }
    }

    async fn reply(&mut self, reply_to: Resource<MessageState>, message: Resource<MessageState>) -> Answer<()> {
        let to = self.table.get(&reply_to)?.clone();
        let message = self.table.delete(message)?;
        answer(self.send_reply(&to, message).await)
    }
}

impl request_reply::HostRequestOptions for Messaging<'_> {
    fn new(&mut self) -> wasmtime::Result<Resource<RequestOptions>> {
        Ok(self.table.push(RequestOptions::default())?)
    }

    fn set_timeout_ms(&mut self, o: Resource<RequestOptions>, timeout_ms: u32) -> wasmtime::Result<()> {
        self.table.get_mut(&o)?.timeout_ms = Some(timeout_ms);
        Ok(())
    }

    fn set_expected_replies(&mut self, o: Resource<RequestOptions>, expected: u32) -> wasmtime::Result<()> {
        self.table.get_mut(&o)?.expected_replies = Some(expected);
        Ok(())
    }

    fn drop(&mut self, o: Resource<RequestOptions>) -> wasmtime::Result<()> {
        self.table.delete(o)?;
        Ok(())
    }
}

impl settlement::Host for Messaging<'_> {
    async fn complete(&mut self, m: Resource<MessageState>) -> Settled<()> {
        let id = self.delivery_of(&m)?;
        settled(self.complete_delivery(id.as_deref()).await)
    }

    async fn abandon(&mut self, m: Resource<MessageState>) -> Settled<()> {
        self.settle_handle(m, Settlement::Abandon).await
    }

    async fn abandon_with_delay(&mut self, m: Resource<MessageState>, delay_ms: u32) -> Settled<()> {
        self.settle_handle(m, Settlement::AbandonWithDelay(Duration::from_millis(u64::from(delay_ms)))).await
    }

    async fn dead_letter(
        &mut self,
        m: Resource<MessageState>,
        reason: String,
        description: Option<String>,
    ) -> Settled<()> {
        let id = self.delivery_of(&m)?;
        settled(self.dead_letter_delivery(id.as_deref(), reason, description).await)
    }

    async fn defer(&mut self, m: Resource<MessageState>) -> Settled<()> {
        self.settle_handle(m, Settlement::Defer).await
    }

    async fn redirect(&mut self, m: Resource<MessageState>, to: String) -> Settled<()> {
        self.settle_handle(m, Settlement::Redirect(to)).await
    }

    async fn renew_lock(&mut self, m: Resource<MessageState>) -> Settled<u64> {
        let id = self.delivery_of(&m)?;
        settled(self.renew_delivery_lock(id.as_deref()).await)
    }
}

impl sessions::Host for Messaging<'_> {
    async fn get_state(&mut self, m: Resource<MessageState>) -> Settled<Option<Vec<u8>>> {
        let id = self.delivery_of(&m)?;
        settled(self.session_state(id.as_deref()).await)
    }

    async fn set_state(&mut self, m: Resource<MessageState>, state: Option<Vec<u8>>) -> Settled<()> {
        let id = self.delivery_of(&m)?;
        settled(self.set_session_state(id.as_deref(), state).await)
    }
}
