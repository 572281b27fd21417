//! The bodies the connection layer wraps around every request and response: [`TimedBody`]
//! gives a request body its `client_body` deadline (both doors read through it, so a body sent
//! a byte a second fails the same way for HTTP and gRPC; it fails with
//! [`crate::core::BodyTimeout`]), and [`Tracked`] holds the
//! connection's "a request is open" mark until the response body is done.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::activity::Busy;
use crate::chat::{GatewayError, RequestContext};
use crate::core::BodyTimeout;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The gRPC status of a body that outlasted `limit` (tonic answers with it).
pub fn timeout_status(limit: Duration, request_id: Option<&str>) -> tonic::Status {
    crate::grpc::to_status(
        &BodyTimeout::error_for(limit),
        &RequestContext::new(request_id),
        None,
    )
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimeout`] once its deadline passes before its end.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        deadline: Instant,
        limit: Duration,
        // Made on the first read that has to wait: most bodies arrive with their head.
        timer: Option<Pin<Box<Sleep>>>,
        request_id: Option<http::HeaderValue>,
        fired: bool,
        flag: Option<Arc<AtomicBool>>,
    }
}

impl<B> TimedBody<B> {
    pub fn new(
        inner: B,
        start: Instant,
        limit: Duration,
        request_id: Option<http::HeaderValue>,
    ) -> Self {
        TimedBody {
            inner,
            deadline: start + limit,
            limit,
            timer: None,
            request_id,
            fired: false,
            flag: None,
        }
    }

    /// `flag` is set when the deadline fires, for whoever needs to know after the body is gone.
    pub fn flag_on_timeout(mut self, flag: Option<Arc<AtomicBool>>) -> Self {
        self.flag = flag;
        self
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.fired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        *this.fired = true;
        if let Some(flag) = this.flag {
            flag.store(true, Ordering::Relaxed);
        }
        let request_id = this.request_id.as_ref().and_then(|v| v.to_str().ok());
        let error = BodyTimeout::new(*this.limit, timeout_status(*this.limit, request_id));
        tracing::info!(error = %error, "closing a slow request body");
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn is_end_stream(&self) -> bool {
        self.fired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection marked busy until it is done or dropped, so
    /// that the idle timeout never cuts a response (a long stream included). A gRPC one also
    /// ends with UNAVAILABLE "shutting down" trailers once the shutdown grace is over, should
    /// its service not end it first (chat streams do, through `chat::until_shutdown`; health
    /// `Watch` and reflection streams would otherwise be cut with their connection).
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        busy: Busy,
        #[pin]
        drain: Option<WaitForCancellationFutureOwned>,
        ended: bool,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, busy: Busy) -> Self {
        Tracked {
            inner,
            busy,
            drain: None,
            ended: false,
        }
    }

    /// Ends the body with a gRPC UNAVAILABLE status once `drain` is cancelled.
    pub fn grpc_until(mut self, drain: Option<&CancellationToken>) -> Self {
        self.drain = drain.map(|d| d.clone().cancelled_owned());
        self
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let poll = this.inner.poll_frame(cx);
        if poll.is_pending() {
            if let Some(drain) = this.drain.as_pin_mut() {
                if drain.poll(cx).is_ready() {
                    *this.ended = true;
                    let status = crate::grpc::to_status(
                        &GatewayError::ShuttingDown,
                        &RequestContext::new(None),
                        None,
                    );
                    let mut trailers = http::HeaderMap::new();
                    let _ = status.add_header(&mut trailers);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
