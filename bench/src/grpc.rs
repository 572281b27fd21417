//! gRPC scenarios: `CreateChatCompletion` and `StreamChatCompletion` through the gateway, with
//! a tonic client generated from proto/megallm/v1/chat.proto. There is no gRPC mock, so each
//! is compared with the same work done over HTTP directly against the mock (measured earlier
//! in the same run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::load::{self, Shared, Spec, WorkerOut};
use crate::report::{Group, Scenario, Side};
use crate::{log_side, measured_side, procs, Ctx};

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("megallm.v1");
}

use pb::chat_service_client::ChatServiceClient;

fn message(role: &str, text: &str) -> pb::Message {
    pb::Message {
        role: role.into(),
        content: vec![pb::ContentPart {
            part: Some(pb::content_part::Part::Text(text.into())),
        }],
        ..Default::default()
    }
}

/// The same conversation the HTTP scenarios send. The mock reads `mock-<chunks>x<delay_ms>`
/// model names as stream settings (gRPC requests carry no free-form fields by default).
fn request(model: &str) -> pb::ChatCompletionRequest {
    pb::ChatCompletionRequest {
        model: model.into(),
        messages: vec![
            message("system", "You are a benchmark."),
            message("user", "Say hello to the benchmark in a few words."),
        ],
        temperature: Some(0.2),
        max_tokens: Some(16),
        ..Default::default()
    }
}

async fn connect(addr: SocketAddr) -> Result<ChatServiceClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(ChatServiceClient::new(channel))
}

fn code_kind(s: &tonic::Status) -> String {
    format!("grpc {:?}", s.code())
}

/// One worker: its own channel (one HTTP/2 connection), requests back to back.
async fn worker(
    addr: SocketAddr,
    req: pb::ChatCompletionRequest,
    stream: bool,
    expect: Option<usize>,
    shared: Arc<Shared>,
) -> WorkerOut {
    let mut out = WorkerOut::new();
    let mut client = None;
    while shared.next().is_some() {
        if client.is_none() {
            let t0 = Instant::now();
            match connect(addr).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    out.error(&shared, t0, Instant::now(), "connect".into());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected");
        let t0 = Instant::now();
        if !stream {
            match c.create_chat_completion(req.clone()).await {
                Ok(_) => out.ok(&shared, t0, Instant::now(), None),
                Err(s) => out.error(&shared, t0, Instant::now(), code_kind(&s)),
            }
            continue;
        }
        let mut msgs = match c.stream_chat_completion(req.clone()).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                out.error(&shared, t0, Instant::now(), code_kind(&s));
                continue;
            }
        };
        let mut first = None;
        let mut n = 0usize;
        let result = loop {
            match msgs.message().await {
                Ok(Some(_)) => {
                    if first.is_none() {
                        first = Some(t0.elapsed());
                    }
                    n += 1;
                }
                Ok(None) => break Ok(()),
                Err(s) => break Err(s),
            }
        };
        let t1 = Instant::now();
        match result {
            Err(s) => out.error(&shared, t0, t1, code_kind(&s)),
            Ok(()) if expect.is_some_and(|e| e != n) => {
                out.error(&shared, t0, t1, format!("messages={n}"))
            }
            Ok(()) => out.ok(&shared, t0, t1, first),
        }
    }
    out
}

async fn measure(addr: SocketAddr, spec: &Spec, model: &str, pids: &[u32], path: &str) -> Side {
    let req = request(model);
    let stream = spec.stream;
    let expect = spec.expect_events;
    let phase = load::run_workers(spec, |shared| {
        worker(addr, req.clone(), stream, expect, shared)
    });
    measured_side(spec.warmup, pids, path, phase).await
}

/// Whether the gateway answers gRPC at all (a unary call and a stream).
async fn probe(addr: SocketAddr) -> Result<(), String> {
    let fut = async {
        let mut c = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        c.create_chat_completion(request("mock-model"))
            .await
            .map_err(|s| format!("CreateChatCompletion: {:?} {}", s.code(), s.message()))?;
        let mut s = c
            .stream_chat_completion(request("mock-8x0"))
            .await
            .map_err(|s| format!("StreamChatCompletion: {:?} {}", s.code(), s.message()))?
            .into_inner();
        let mut n = 0;
        while let Some(_m) = s
            .message()
            .await
            .map_err(|s| format!("StreamChatCompletion: {:?} {}", s.code(), s.message()))?
        {
            n += 1;
        }
        if n != 8 {
            return Err(format!(
                "StreamChatCompletion: {n} messages for 8 upstream chunks"
            ));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

pub async fn scenarios(
    ctx: &mut Ctx,
    gw: &procs::GatewayStart,
    scenarios: &mut Vec<Scenario>,
    notes: &mut Vec<String>,
) {
    if let Err(e) = probe(gw.addr).await {
        notes.push(format!(
            "gRPC scenarios skipped: the gateway does not answer gRPC yet ({e})."
        ));
        eprintln!("gRPC skipped: {e}");
        return;
    }
    let direct_of = |group: Group, c: usize| -> Option<Side> {
        scenarios
            .iter()
            .find(|s| s.group == group && s.concurrency == c)
            .and_then(|s| s.direct.clone())
    };
    let mut plan: Vec<(Group, usize, Spec, &str, Group)> = Vec::new();
    let name = |g: Group| match g {
        Group::GrpcUnary => "unary",
        Group::GrpcStream => "stream",
        _ => "paced",
    };
    for c in [1usize, 16, 64, 256] {
        let spec = ctx.spec(c, false, bytes::Bytes::new(), None);
        plan.push((Group::GrpcUnary, c, spec, "mock-model", Group::Http));
    }
    for c in [1usize, 64] {
        let spec = ctx.spec(c, true, bytes::Bytes::new(), Some(8));
        plan.push((Group::GrpcStream, c, spec, "mock-8x0", Group::HttpStream));
    }
    {
        let mut spec = ctx.spec(64, true, bytes::Bytes::new(), Some(32));
        spec.duration = ctx.paced_duration;
        spec.warmup = ctx.warmup.max(Duration::from_millis(400));
        plan.push((Group::GrpcPaced, 64, spec, "mock-32x10", Group::Paced));
    }
    let mut out = Vec::new();
    for (group, c, spec, model, direct_group) in plan {
        ctx.step += 1;
        let id = format!("grpc {} c={c}", name(group));
        let pids = [gw.proc.pid, ctx.mock.pid];
        let g = measure(gw.addr, &spec, model, &pids, "gRPC → gateway → mock").await;
        log_side(ctx.step, &id, "gateway", &g);
        out.push(Scenario {
            id,
            group,
            title: format!("gRPC {} c={c}", name(group)),
            concurrency: c,
            direct: direct_of(direct_group, c),
            gateway: Some(g),
            note: None,
        });
    }
    scenarios.extend(out);
}
