//! A chat request's way through the core, the same for both doors: the caller's `models=` and
//! limits first (a refusal spends no key), then the dispatcher, with a usage [`Meter`] that
//! goes with the request to its end. A stream whose client did not ask for usage is asked
//! for it upstream, and the meter hides the extra chunk again.

use crate::chat::{ChatRequest, ChunkStream, Completion, Dispatched, RequestContext};
use crate::usage::{Meter, Metered, Outcome, Subject};

use super::{Caller, Core, Door};

/// The `endpoint` of chat records.
const CHAT: &str = "chat/completions";

impl Core {
    /// A whole chat completion for `caller`, metered.
    pub async fn complete(
        &self,
        req: &ChatRequest,
        ctx: &RequestContext,
        caller: &Caller,
        door: Door,
    ) -> Dispatched<Completion> {
        let mut meter = self.meter(req, ctx, caller, door);
        if let Err(error) = self.admit(req, caller, &mut meter).await {
            meter.finish(Outcome::Error);
            return Dispatched {
                result: Err(error),
                attempts: Default::default(),
            };
        }
        let dispatched = self.dispatcher.complete(req, ctx).await;
        meter.set_key(dispatched.attempts.last_key());
        match &dispatched.result {
            Ok(completion) => {
                meter.answered(&completion.body);
                meter.finish_settled(Outcome::Completed).await;
            }
            Err(error) => meter.finish(Meter::outcome_of(error)),
        }
        dispatched
    }

    /// A streamed chat completion for `caller`: the chunks carry the meter, which records
    /// when the stream ends or is dropped.
    pub async fn stream(
        &self,
        req: &ChatRequest,
        ctx: &RequestContext,
        caller: &Caller,
        door: Door,
    ) -> Dispatched<ChunkStream> {
        let mut meter = self.meter(req, ctx, caller, door);
        if let Err(error) = self.admit(req, caller, &mut meter).await {
            meter.finish(Outcome::Error);
            return Dispatched {
                result: Err(error),
                attempts: Default::default(),
            };
        }
        let asked = req.ask_stream_usage();
        let hide = asked.is_some();
        let dispatched = self
            .dispatcher
            .stream(asked.as_ref().unwrap_or(req), ctx)
            .await;
        meter.set_key(dispatched.attempts.last_key());
        let Dispatched { result, attempts } = dispatched;
        let result = match result {
            Ok(chunks) => Ok(Box::pin(Metered::new(chunks, meter, hide)) as ChunkStream),
            Err(error) => {
                meter.finish(Meter::outcome_of(&error));
                Err(error)
            }
        };
        Dispatched { result, attempts }
    }

    fn meter(&self, req: &ChatRequest, ctx: &RequestContext, caller: &Caller, door: Door) -> Meter {
        let subject = Subject {
            client: caller.name(),
            model: req.model(),
            door: door.name(),
            endpoint: CHAT,
        };
        Meter::new(self.usage.clone(), ctx, subject, req.body().clone())
    }

    /// The caller's `models=` and limits; the admission rides on the meter.
    async fn admit(
        &self,
        req: &ChatRequest,
        caller: &Caller,
        meter: &mut Meter,
    ) -> Result<(), crate::chat::GatewayError> {
        let admission = self
            .clients
            .admit(caller, req.model(), u64::from(req.token_estimate()))
            .await?;
        meter.admitted(admission);
        Ok(())
    }
}
