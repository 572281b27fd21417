//! A forwarded endpoint's way through the core (embeddings, legacy completions, the Responses
//! API, Anthropic's messages, passthrough paths), as chat's: the caller's `models=` and limits
//! first, then the dispatcher, with a usage meter to the request's end. A legacy completions
//! stream is asked for its usage as chat's is, and the extra chunk hidden again; the Responses
//! API and Anthropic report usage in their own events, which the meter reads.

use std::borrow::Cow;

use crate::chat::{ChunkStream, Completion, Dispatched, Forward, RequestContext};
use crate::usage::{Meter, Subject};

use super::chat::{end_whole, with_meter};
use super::{Caller, Core, Door};

impl Core {
    /// A forwarded endpoint's whole answer for `caller`, metered.
    pub async fn forward(
        &self,
        req: &Forward,
        ctx: &RequestContext,
        caller: &Caller,
    ) -> Dispatched<Completion> {
        let meter = self.forward_meter(req, ctx, caller);
        let estimate = u64::from(req.token_estimate());
        let mut meter = match self.admit(meter, req.model(), estimate, caller).await {
            Ok(meter) => meter,
            Err(refused) => return refused,
        };
        let dispatched = self.dispatcher.forward(req, ctx).await;
        end_whole(&mut meter, &dispatched).await;
        dispatched
    }

    /// A forwarded endpoint's stream for `caller`: the chunks carry the meter.
    pub async fn forward_stream(
        &self,
        req: &Forward,
        ctx: &RequestContext,
        caller: &Caller,
    ) -> Dispatched<ChunkStream> {
        let meter = self.forward_meter(req, ctx, caller);
        let estimate = u64::from(req.token_estimate());
        let meter = match self.admit(meter, req.model(), estimate, caller).await {
            Ok(meter) => meter,
            Err(refused) => return refused,
        };
        let asked = req.ask_stream_usage();
        let dispatched = self
            .dispatcher
            .forward_stream(asked.as_ref().unwrap_or(req), ctx)
            .await;
        with_meter(meter, dispatched, asked.is_some(), req.endpoint().events)
    }

    fn forward_meter(&self, req: &Forward, ctx: &RequestContext, caller: &Caller) -> Meter {
        let subject = Subject {
            client: caller.name(),
            model: req.model(),
            door: Door::Http.name(),
            endpoint: Cow::Owned(req.endpoint_name().to_owned()),
        };
        Meter::new(self.usage.clone(), ctx, subject, req.body().clone())
    }
}
