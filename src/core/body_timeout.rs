//! The error a request body gives when it does not arrive whole within
//! `--client-body-timeout`. The server's `TimedBody` makes it (both doors read through that
//! body); the HTTP door finds it in the error chain ([`BodyTimeout::find`]) and answers 408,
//! tonic finds the `tonic::Status` the server attached as its source and answers with that.
//! It lives here, not in `server/`, so that the HTTP door need not import the server.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::chat::{GatewayError, TimeoutKind};

type BoxError = Box<dyn StdError + Send + Sync>;

/// The request body did not arrive whole within its limit.
#[derive(Debug)]
pub struct BodyTimeout {
    limit: Duration,
    /// The gRPC door's rendering of [`BodyTimeout::error`] (a `tonic::Status`), the error's
    /// source so that tonic, which looks for a status along the source chain, answers with it.
    rendered: BoxError,
}

impl BodyTimeout {
    /// `rendered`: the same error as another door answers it, found along the source chain.
    pub fn new(limit: Duration, rendered: impl Into<BoxError>) -> Self {
        BodyTimeout {
            limit,
            rendered: rendered.into(),
        }
    }

    /// The core error for a body that outlasted `limit`.
    pub fn error_for(limit: Duration) -> GatewayError {
        GatewayError::Timeout {
            kind: TimeoutKind::ClientBody,
            detail: format!(
                "the request body did not arrive within {}",
                humantime::format_duration(limit)
            ),
        }
    }

    /// The core error for this timeout.
    pub fn error(&self) -> GatewayError {
        Self::error_for(self.limit)
    }

    /// A `BodyTimeout` anywhere in `error`'s source chain.
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a BodyTimeout> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<BodyTimeout>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error().fmt(f)
    }
}

impl StdError for BodyTimeout {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.rendered)
    }
}
