//! Chunks in batches: every event already at hand, handed to a door at once, so that a door
//! writes them in one write (HTTP) or one DATA frame (gRPC) instead of one syscall per event.
//!
//! "At hand" means ready without waiting: complete in the SSE parser (an upstream read that
//! held several events), or already buffered by the upstream connection (HTTP/2 keeps every
//! DATA frame it has read). The batch ends at the first poll that is not ready: a paced stream
//! (one event per read) goes out event by event, as before, and nothing waits for an event
//! that has not arrived.
//!
//! Not batched: events a TLS or HTTP/2 upstream sends as separate chunks (a cleartext HTTP/1.1
//! upstream is driven in the request's own task, `upstream::h1`, where they are). hyper's
//! pooled client hands a body over one chunk at a time from the connection's own task, so the
//! next chunk is never ready when the current one is taken. Giving that task a turn (a self-wake) before ending the
//! batch was tried and measured: it traded the socket writes for as many eventfd wake-ups of
//! the other worker (which then often stole the stream's task before the chunk came), with no
//! fewer writes and 5-10 % more CPU per stream, so it is not done.

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
    }
}

pub struct Batches {
    chunks: ChunkStream,
    batch: Batch,
    /// An error that came after events: yielded after their batch.
    error: Option<GatewayError>,
    ended: bool,
}

impl Batches {
    fn take(&mut self) -> Poll<Option<Result<Batch, GatewayError>>> {
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
        assert_eq!(
            b.next().now_or_never().unwrap().unwrap().unwrap(),
            ["first"]
        );
        for event in ["two", "three"] {
            assert!(b.next().now_or_never().is_none(), "nothing at hand");
            tx.send(Ok(bytes(event))).unwrap();
            // The event alone: it does not wait for a next one.
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
