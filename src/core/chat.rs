//! A chat request's way through the core, the same for both doors: the caller's `models=` and
//! limits first (a refusal spends no key), then the dispatcher, with a usage [`Meter`] that
//! goes with the request to its end. A stream whose client did not ask for usage is asked
//! for it upstream, and the meter hides the extra chunk again. The forwarded endpoints
//! ([`super::forward`]) go the same way, through the helpers at the end.

use std::borrow::Cow;

use crate::chat::{ChatRequest, ChunkStream, Completion, Dispatched, Events, RequestContext};
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
        let meter = self.meter(req, ctx, caller, door);
        let estimate = u64::from(req.token_estimate());
        let mut meter = match self.admit(meter, Some(req.model()), estimate, caller).await {
            Ok(meter) => meter,
            Err(refused) => return refused,
        };
        let dispatched = self.dispatcher.complete(req, ctx).await;
        end_whole(&mut meter, &dispatched).await;
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
        let meter = self.meter(req, ctx, caller, door);
        let estimate = u64::from(req.token_estimate());
        let meter = match self.admit(meter, Some(req.model()), estimate, caller).await {
            Ok(meter) => meter,
            Err(refused) => return refused,
        };
        let asked = req.ask_stream_usage();
        let dispatched = self
            .dispatcher
            .stream(asked.as_ref().unwrap_or(req), ctx)
            .await;
        with_meter(meter, dispatched, asked.is_some(), Events::Data)
    }

    fn meter(&self, req: &ChatRequest, ctx: &RequestContext, caller: &Caller, door: Door) -> Meter {
        let subject = Subject {
            client: caller.name(),
            model: Some(req.model()),
            door: door.name(),
            endpoint: Cow::Borrowed(CHAT),
        };
        Meter::new(self.usage.clone(), ctx, subject, req.body().clone())
    }

    /// The caller's `models=` and limits for a request naming `model` (or none), reserving
    /// `estimate` tokens: the admission rides on the meter; a refusal is the request's
    /// record and its answer.
    pub(super) async fn admit<T>(
        &self,
        mut meter: Meter,
        model: Option<&str>,
        estimate: u64,
        caller: &Caller,
    ) -> Result<Meter, Dispatched<T>> {
        match self.clients.admit(caller, model, estimate).await {
            Ok(admission) => {
                meter.admitted(admission);
                Ok(meter)
            }
            Err(error) => {
                meter.finish(Outcome::Error);
                Err(Dispatched {
                    result: Err(error),
                    attempts: Default::default(),
                })
            }
        }
    }
}

/// Ends a whole answer's meter: its usage, and the client's limits settled before the client
/// has the answer.
pub(super) async fn end_whole(meter: &mut Meter, dispatched: &Dispatched<Completion>) {
    meter.set_key(dispatched.attempts.last_key());
    match &dispatched.result {
        Ok(completion) => {
            meter.answered(&completion.body);
            meter.finish_settled(Outcome::Completed).await;
        }
        Err(error) => meter.finish(Meter::outcome_of(error)),
    }
}

/// A stream's chunks with its meter (`hide`: the gateway asked for the usage chunk, which the
/// client must not see); a stream that never started ends the meter at once.
pub(super) fn with_meter(
    mut meter: Meter,
    dispatched: Dispatched<ChunkStream>,
    hide: bool,
    events: Events,
) -> Dispatched<ChunkStream> {
    meter.set_key(dispatched.attempts.last_key());
    let Dispatched { result, attempts } = dispatched;
    let result = match result {
        Ok(chunks) => Ok(Box::pin(Metered::new(chunks, meter, hide, events)) as ChunkStream),
        Err(error) => {
            meter.finish(Meter::outcome_of(&error));
            Err(error)
        }
    };
    Dispatched { result, attempts }
}
