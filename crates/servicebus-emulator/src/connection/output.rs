//! What the engine writes: frames into a buffer, flushed to a writer task that owns the socket.
//!
//! The engine never waits on the socket. It appends frames to [`Output`], and after each
//! event hands the buffer to [`write_loop`]. [`Backlog`] counts what the peer has not read
//! yet, so a peer that stops reading stops getting messages, and is dropped past the limit.
//!
//! With a store (`--data-dir`), a [`Chunk`] carries how far the store must have got before
//! it may be written: the writer waits for that, so no acknowledgement reaches the peer
//! before what it acknowledges is durable, and the engine still never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::Error as AmqpError;
use fe2o3_amqp_types::performatives::{Close, Transfer};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::Event;
use crate::codec::{self, FRAME_TYPE_AMQP, FRAME_TYPE_SASL};
use crate::management::error;
use crate::storage::Storage;

/// Frames flushed to the writer task.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) bytes: Bytes,
    /// The store's position these frames acknowledge changes up to (0: none).
    pub(super) barrier: u64,
}

/// Frames written but not yet flushed to the writer task.
pub(super) struct Output {
    buf: BytesMut,
    /// The peer's max-frame-size (512 until its `open` says otherwise).
    pub(super) peer_max_frame: usize,
    /// `close` was written (or the socket is to end without one): nothing more is sent.
    pub(super) closed: bool,
}

impl Output {
    pub(super) fn new() -> Self {
        Self { buf: BytesMut::new(), peer_max_frame: codec::MIN_MAX_FRAME_SIZE, closed: false }
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes as they are (protocol headers).
    pub(super) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes an AMQP frame that has no payload.
    pub(super) fn put<T: serde::Serialize>(&mut self, channel: u16, performative: &T) {
        self.put_typed(FRAME_TYPE_AMQP, channel, performative);
    }

    /// Writes a SASL frame.
    pub(super) fn put_sasl<T: serde::Serialize>(&mut self, performative: &T) {
        self.put_typed(FRAME_TYPE_SASL, 0, performative);
    }

    /// An empty frame: a heartbeat.
    pub(super) fn heartbeat(&mut self) {
        codec::put_frame::<()>(&mut self.buf, FRAME_TYPE_AMQP, 0, None, &[]).expect("empty frames encode");
    }

    /// Writes a transfer split to the peer's max-frame-size; returns the frames written.
    pub(super) fn put_transfer(&mut self, channel: u16, transfer: Transfer, payload: &[u8]) -> u32 {
        let frames = codec::put_transfer(&mut self.buf, channel, transfer, payload, self.peer_max_frame)
            .expect("transfers built by the broker always encode");
        u32::try_from(frames).unwrap_or(u32::MAX)
    }

    /// A frame the peer's max-frame-size cannot hold is not sent: the connection is closed
    /// with `amqp:frame-size-too-small` instead.
    fn put_typed<T: serde::Serialize>(&mut self, frame_type: u8, channel: u16, performative: &T) {
        if self.closed {
            return;
        }
        let start = self.buf.len();
        codec::put_frame(&mut self.buf, frame_type, channel, Some(performative), &[])
            .expect("performatives built by the broker always encode");
        let size = self.buf.len() - start;
        if size > self.peer_max_frame {
            self.buf.truncate(start);
            self.close(error(
                "amqp:frame-size-too-small",
                format!("a frame of {size} bytes does not fit the peer's max-frame-size of {}", self.peer_max_frame),
            ));
        }
    }

    /// Writes `close` with `e`, once; nothing is written after it.
    pub(super) fn close(&mut self, e: AmqpError) {
        if !self.closed {
            self.put(0, &Close { error: Some(e) });
            self.closed = true;
        }
    }

    /// Answers the peer's `close`.
    pub(super) fn close_reply(&mut self) {
        if !self.closed {
            self.put(0, &Close { error: None });
            self.closed = true;
        }
    }

    /// Takes what was written since the last call.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// Bytes flushed to the writer that the peer has not read yet.
#[derive(Clone)]
pub(super) struct Backlog {
    bytes: Arc<AtomicUsize>,
    /// The engine stopped sending messages until the backlog drains.
    paused: Arc<AtomicBool>,
    pub(super) max: usize,
}

impl Backlog {
    pub(super) fn new(max: usize) -> Self {
        Self { bytes: Arc::new(AtomicUsize::new(0)), paused: Arc::new(AtomicBool::new(false)), max }
    }

    pub(super) fn len(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub(super) fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    /// Whether messages must wait: true while this much is unread (`pending`: written but not
    /// yet flushed). The flag goes up before the second look, so a writer that drains in
    /// between either is seen here or sees the flag (and sends [`Event::Writable`]).
    pub(super) fn must_wait(&self, pending: usize) -> bool {
        if !self.is_high(pending) {
            return false;
        }
        self.paused.store(true, Ordering::Release);
        self.is_high(pending)
    }

    fn is_high(&self, pending: usize) -> bool {
        self.len() + pending >= self.max / 2
    }
}

/// Writes what the engine flushes. Chunks that queued up while a write was under way go out
/// together in one write: a syscall per chunk was the largest part of the broker's CPU cost
/// per message under load.
pub(super) async fn write_loop<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    backlog: Backlog,
    events: mpsc::UnboundedSender<Event>,
    storage: Option<Arc<Storage>>,
) {
    tokio::pin!(wr);
    let mut gathered = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let mut barrier = first.barrier;
        let (result, written) = match rx.try_recv() {
            Err(_) => {
                if !durable(storage.as_deref(), barrier).await {
                    return;
                }
                (wr.write_all(&first.bytes).await, first.bytes.len())
            }
            Ok(second) => {
                gathered.extend_from_slice(&first.bytes);
                gathered.extend_from_slice(&second.bytes);
                barrier = barrier.max(second.barrier);
                while let Ok(more) = rx.try_recv() {
                    gathered.extend_from_slice(&more.bytes);
                    barrier = barrier.max(more.barrier);
                }
                if !durable(storage.as_deref(), barrier).await {
                    return;
                }
                let result = wr.write_all(&gathered).await;
                let written = gathered.len();
                gathered.clear();
                (result, written)
            }
        };
        if result.is_err() || wr.flush().await.is_err() {
            return;
        }
        let left = backlog.bytes.fetch_sub(written, Ordering::AcqRel) - written;
        if left < backlog.max / 4 && backlog.paused.swap(false, Ordering::AcqRel) {
            let _ = events.send(Event::Writable);
        }
    }
    let _ = wr.shutdown().await;
}

/// Waits until the store has `barrier`; false if it never will (its writer failed: the
/// connection ends without the acknowledgements, and the client retries).
async fn durable(storage: Option<&Storage>, barrier: u64) -> bool {
    let Some(storage) = storage.filter(|_| barrier > 0) else { return true };
    match storage.durable(barrier).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("dropping a connection whose acknowledgements cannot be made durable: {e}");
            false
        }
    }
}
