//! The bytes a broker sends, checked before fe2o3 decodes them.
//!
//! fe2o3 decodes frames and messages with `serde_amqp`, which recurses once per
//! nesting level: a broker (or a sender, through a message the broker passes on)
//! could abort the whole process with a few kilobytes of nested lists. [`Guarded`]
//! wraps the transport and runs every byte through [`amqp_wire`] first:
//! - a frame whose performative is malformed or nested too deeply ends the
//!   connection with an I/O error (the broker itself is broken or hostile);
//! - a message that is, arrives cut short at the refused value, and its later
//!   frames empty: fe2o3 then fails to decode that one delivery, with its delivery
//!   info, and the receiver dead-letters it. Frame counts, delivery ids and credit
//!   are untouched, so every other delivery and link goes on as before.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use amqp_wire::frame::{self, FrameHeader};
use amqp_wire::{MAX_DEPTH, Walker};
use bytes::{Buf as _, BytesMut};
use fe2o3_amqp::types::performatives::{Detach, Transfer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest frame accepted: the client advertises 1 MiB; a little slack for the header.
const MAX_FRAME: usize = 1024 * 1024 + 64;
/// Descriptor codes of `detach` and `end`, which end the deliveries of a link or session.
const DETACH: u64 = 0x16;
const END: u64 = 0x17;

/// A delivery arriving in pieces on one link.
#[derive(Debug)]
enum Delivery {
    /// Walked so far.
    Walking { id: Option<u32>, walker: Box<Walker> },
    /// Refused: later frames of it arrive with no payload.
    Refused { id: Option<u32> },
}

impl Delivery {
    fn id(&self) -> Option<u32> {
        match self {
            Self::Walking { id, .. } | Self::Refused { id } => *id,
        }
    }
}

/// A transport whose incoming bytes are checked frame by frame.
#[derive(Debug)]
pub(crate) struct Guarded<S> {
    inner: S,
    /// Read from `inner`, not yet checked.
    raw: BytesMut,
    /// Checked, for fe2o3 to read.
    checked: BytesMut,
    expect_header: bool,
    deliveries: HashMap<(u16, u32), Delivery>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::with_capacity(64 * 1024),
            checked: BytesMut::new(),
            expect_header: true,
            deliveries: HashMap::new(),
        }
    }

    /// Checks `bytes` as if they had just been read; returns what fe2o3 would be given.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn check_bytes(&mut self, bytes: &[u8]) -> io::Result<BytesMut> {
        self.raw.extend_from_slice(bytes);
        self.check_available()?;
        Ok(self.checked.split())
    }

    /// Moves every whole item (protocol header or frame) from `raw` to `checked`.
    fn check_available(&mut self) -> io::Result<()> {
        loop {
            if self.expect_header {
                if self.raw.len() < 8 {
                    return Ok(());
                }
                self.checked.extend_from_slice(&self.raw.split_to(8));
                self.expect_header = false;
                continue;
            }
            if self.raw.len() < frame::HEADER_SIZE {
                return Ok(());
            }
            let mut fixed = [0u8; frame::HEADER_SIZE];
            fixed.copy_from_slice(&self.raw[..frame::HEADER_SIZE]);
            let header = FrameHeader::parse(&fixed).map_err(|e| refused(format!("a frame header: {e}")))?;
            let size = header.size as usize;
            if size > MAX_FRAME {
                return Err(refused(format!("a frame of {size} bytes, over the 1 MiB this client accepts")));
            }
            if self.raw.len() < size {
                self.raw.reserve(size - self.raw.len());
                return Ok(());
            }
            let frame = self.raw.split_to(size);
            self.check_frame(header, frame)?;
        }
    }

    fn check_frame(&mut self, header: FrameHeader, mut frame: BytesMut) -> io::Result<()> {
        let body_at = header.body_offset();
        let Some((code, end)) = frame::performative(&frame[body_at..], MAX_DEPTH)
            .map_err(|e| refused(format!("a frame on channel {}: {e}", header.channel)))?
        else {
            self.checked.extend_from_slice(&frame); // A heartbeat.
            return Ok(());
        };
        let performative_end = body_at + end;
        match (header.frame_type, code) {
            (frame::TYPE_SASL, frame::SASL_OUTCOME) => self.expect_header = true,
            (frame::TYPE_AMQP, frame::TRANSFER) => {
                let transfer: Transfer = serde_amqp::from_slice(&frame[body_at..performative_end])
                    .map_err(|e| refused(format!("a transfer: {e}")))?;
                let keep = self.check_payload(header.channel, &transfer, &frame[performative_end..]);
                if keep < frame.len() - performative_end {
                    frame.truncate(performative_end + keep);
                    let size = frame.len() as u32;
                    frame[..4].copy_from_slice(&size.to_be_bytes());
                }
            }
            (frame::TYPE_AMQP, DETACH) => {
                if let Ok(d) = serde_amqp::from_slice::<Detach>(&frame[body_at..performative_end]) {
                    self.deliveries.remove(&(header.channel, d.handle.0));
                }
            }
            (frame::TYPE_AMQP, END) => self.deliveries.retain(|(channel, _), _| *channel != header.channel),
            _ => {}
        }
        self.checked.extend_from_slice(&frame);
        Ok(())
    }

    /// Walks a transfer's payload; returns how many of its bytes to pass on.
    fn check_payload(&mut self, channel: u16, transfer: &Transfer, payload: &[u8]) -> usize {
        let key = (channel, transfer.handle.0);
        if transfer.aborted {
            self.deliveries.remove(&key);
            return payload.len();
        }
        // A transfer naming another delivery starts afresh (the last one ended or was abandoned).
        let mut delivery = match self.deliveries.remove(&key) {
            Some(d) if transfer.delivery_id.is_none() || transfer.delivery_id == d.id() => d,
            _ => Delivery::Walking { id: transfer.delivery_id, walker: Box::new(Walker::new(MAX_DEPTH)) },
        };
        let keep = match &mut delivery {
            Delivery::Refused { .. } => 0,
            Delivery::Walking { id, walker } => {
                let before = walker.fed();
                match walker.feed(payload) {
                    Ok(()) => payload.len(),
                    Err(e) => {
                        tracing::warn!(
                            channel,
                            handle = transfer.handle.0,
                            delivery_id = ?id,
                            "refusing a message from the broker ({e}); it reaches the receiver as undecodable"
                        );
                        let keep = e.at().saturating_sub(before) as usize;
                        delivery = Delivery::Refused { id: *id };
                        keep.min(payload.len())
                    }
                }
            }
        };
        if transfer.more {
            self.deliveries.insert(key, delivery);
        }
        keep
    }
}

fn refused(what: String) -> io::Error {
    let message = format!("the broker sent a malformed or too deeply nested {what}; closing the connection");
    tracing::warn!("{message}");
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.checked.is_empty() {
                let n = this.checked.len().min(buf.remaining());
                buf.put_slice(&this.checked[..n]);
                this.checked.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.raw.capacity() - this.raw.len() < 8 * 1024 {
                this.raw.reserve(64 * 1024);
            }
            if ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw))? == 0 {
                return Poll::Ready(Ok(())); // End of stream.
            }
            this.check_available()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
