//! Chunks in batches: every event already at hand, handed to a door at once, so that a door
//! writes them in one write (HTTP) or one DATA frame (gRPC) instead of one syscall per event.
//!
//! "At hand" means complete in the SSE parser, or already read from the upstream socket by the
//! upstream connection: hyper's client reads on its own task and hands the body over one chunk
//! at a time, so after each event taken the batch gives the scheduler one turn (a self-wake,
//! no timer) for that task to pass on what it has already read. A turn that brings nothing
//! ends the batch: a paced stream (one event per read) goes out event by event, as before, and
//! nothing ever waits for an event that has not arrived. The first batch goes out as soon as
//! it is at hand, with no turn given (time to first chunk).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{ChunkStream, GatewayError};

/// The most events one batch holds: enough for any burst, few enough to bound a write.
pub const MAX_BATCH: usize = 64;

/// One batch of event data, in order; never empty.
pub type Batch = Vec<Bytes>;

/// `chunks` in batches; an error after events comes as its own item after their batch.
pub fn batches(chunks: ChunkStream) -> Batches {
    Batches {
        chunks,
        batch: Vec::new(),
        error: None,
        ended: false,
        first: true,
        fresh: false,
    }
}

pub struct Batches {
    chunks: ChunkStream,
    batch: Batch,
    /// An error that came after events: yielded after their batch.
    error: Option<GatewayError>,
    ended: bool,
    /// No batch has gone out yet.
    first: bool,
    /// Events came since the last turn given to the scheduler.
    fresh: bool,
}

impl Batches {
    fn take(&mut self) -> Poll<Option<Result<Batch, GatewayError>>> {
        self.first = false;
        self.fresh = false;
        Poll::Ready(Some(Ok(std::mem::take(&mut self.batch))))
    }
}

impl Stream for Batches {
    type Item = Result<Batch, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(error) = this.error.take() {
            this.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    this.batch.push(data);
                    this.fresh = true;
                    if this.batch.len() >= MAX_BATCH {
                        return this.take();
                    }
                }
                Poll::Ready(Some(Err(error))) if this.batch.is_empty() => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.error = Some(error);
                    return this.take();
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if this.batch.is_empty() {
                        return Poll::Ready(None);
                    }
                    return this.take();
                }
                Poll::Pending if this.batch.is_empty() => return Poll::Pending,
                Poll::Pending if this.fresh && !this.first => {
                    // One turn for the upstream connection's task to pass on what it read.
                    this.fresh = false;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return this.take(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn events_at_hand_go_as_one_batch_and_errors_after_them() {
        let items: Vec<Result<Bytes, GatewayError>> = vec![
            Ok(bytes("a")),
            Ok(bytes("b")),
            Ok(bytes("c")),
            Err(GatewayError::StreamBroken("cut".into())),
        ];
        let mut b = batches(Box::pin(futures_util::stream::iter(items)));
        assert_eq!(b.next().await.unwrap().unwrap(), ["a", "b", "c"]);
        assert!(matches!(
            b.next().await,
            Some(Err(GatewayError::StreamBroken(_)))
        ));
        assert!(b.next().await.is_none());
    }

    #[tokio::test]
    async fn a_paced_stream_goes_event_by_event_without_waiting() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, GatewayError>>();
        let mut b = batches(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ));
        tx.send(Ok(bytes("first"))).unwrap();
        // The first batch goes out at once, with no turn given.
        assert_eq!(
            b.next().now_or_never().unwrap().unwrap().unwrap(),
            ["first"]
        );
        for event in ["two", "three"] {
            assert!(b.next().now_or_never().is_none(), "nothing at hand");
            tx.send(Ok(bytes(event))).unwrap();
            // One turn, then the event alone: it does not wait for a next one.
            let got = tokio::time::timeout(std::time::Duration::from_millis(50), b.next())
                .await
                .expect("no waiting for more events")
                .unwrap()
                .unwrap();
            assert_eq!(got, [event]);
        }
        drop(tx);
        assert!(b.next().await.is_none());
    }
}
