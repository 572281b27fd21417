//! Keeps `grpc.health.v1.Health` in step with the key pool: SERVING for `""` and
//! `megallm.v1.ChatService` while at least one key can serve now, NOT_SERVING otherwise (the
//! same test as `GET /readyz`). The pool has no change event, so a small task polls it.

use std::sync::Weak;
use std::time::Duration;

use futures_util::FutureExt;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::core::Core;

/// How often the pool is asked. Fast enough for a load balancer's health checks, cheap enough
/// to be invisible (one pass over the keys).
const POLL: Duration = Duration::from_millis(250);

/// Starts the polling task. It holds only a `Weak<Core>`, so it does not keep a stopped
/// gateway alive: it ends on the first tick after the core is gone.
pub fn spawn(core: Weak<Core>, reporter: HealthReporter) {
    // The first status is set before the server accepts a call, so no check can see the
    // service as unknown. The lock is new and uncontended: the futures are ready at once.
    let mut last = None;
    if let Some(now) = core.upgrade().map(|c| status(&c)) {
        let _ = reporter.set_service_status("", now).now_or_never();
        let _ = reporter
            .set_service_status(super::SERVICE_NAME, now)
            .now_or_never();
        last = Some(now);
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(core) = core.upgrade() else { return };
            let status = status(&core);
            drop(core);
            // Only changes are sent: watchers (`Health/Watch`) hear of each change once.
            if last != Some(status) {
                reporter.set_service_status("", status).await;
                reporter
                    .set_service_status(super::SERVICE_NAME, status)
                    .await;
                last = Some(status);
            }
        }
    });
}

fn status(core: &Core) -> ServingStatus {
    if core.can_serve_now() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// `grpc.health.v1.Health` as health.proto says it: tonic-health's service, except that
/// `Watch` on a service the gateway does not know sends SERVICE_UNKNOWN and keeps the call
/// open (tonic-health fails it with NOT_FOUND, which a watching client reads as an error).
pub(super) struct Health(pub tonic_health::server::HealthService);

type WatchStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>,
            > + Send,
    >,
>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        self.0.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        use futures_util::StreamExt;
        match self.0.watch(request).await {
            Ok(stream) => Ok(tonic::Response::new(Box::pin(stream.into_inner()))),
            Err(status) if status.code() == tonic::Code::NotFound => {
                let unknown = tonic_health::pb::HealthCheckResponse {
                    status: tonic_health::pb::health_check_response::ServingStatus::ServiceUnknown
                        as i32,
                };
                let stream = futures_util::stream::once(async move { Ok(unknown) })
                    .chain(futures_util::stream::pending());
                Ok(tonic::Response::new(Box::pin(stream)))
            }
            Err(status) => Err(status),
        }
    }
}
