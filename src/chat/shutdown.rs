//! The end of an open stream when the gateway stops: once the shutdown grace is over, a chunk
//! stream yields [`GatewayError::ShuttingDown`] and ends, so each door closes it in its own
//! words (an HTTP error event, a gRPC UNAVAILABLE status) instead of a cut connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{ChunkStream, GatewayError};

pin_project_lite::pin_project! {
    struct UntilShutdown {
        chunks: ChunkStream,
        #[pin]
        stopping: WaitForCancellationFutureOwned,
        ended: bool,
    }
}

/// `chunks`, ended with [`GatewayError::ShuttingDown`] as soon as `stopping` is cancelled.
pub fn until_shutdown(chunks: ChunkStream, stopping: CancellationToken) -> ChunkStream {
    Box::pin(UntilShutdown {
        chunks,
        // A child per stream: each waits on its own token, not on one shared by every stream.
        stopping: stopping.child_token().cancelled_owned(),
        ended: false,
    })
}

impl Stream for UntilShutdown {
    type Item = Result<bytes::Bytes, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if this.stopping.poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(Some(Err(GatewayError::ShuttingDown)));
        }
        let next = this.chunks.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            *this.ended = true;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_ends_with_shutting_down_once_stopped() {
        let stop = CancellationToken::new();
        let chunks: ChunkStream = Box::pin(
            futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"one"))])
                .chain(futures_util::stream::pending()),
        );
        let mut s = until_shutdown(chunks, stop.clone());
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"one");
        stop.cancel();
        assert!(matches!(
            s.next().await,
            Some(Err(GatewayError::ShuttingDown))
        ));
        assert!(s.next().await.is_none());
    }
}
