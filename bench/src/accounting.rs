//! What accounting costs (issue 12): the main gateway (open, no usage log: the usage meter
//! still runs and keeps its in-memory totals, since it cannot be turned off) against a gateway
//! whose one client token has a name and every limit (`rpm`, `tpm`, `max_concurrent`,
//! `daily_tokens`, all far above anything reached, so every request takes and settles each
//! counter and nothing is refused) and that writes every usage record to `--usage-log`.
//!
//! At each point the phases run off, on, off, back to back, and "on" is compared with the mean
//! of the two "off" runs, so a drift of the machine's load over the three shows as the gap
//! between the two "off" rows instead of as a cost.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::load::HttpTarget;
use crate::procs;
use crate::report::{self, Side};
use crate::{chat_body, log_side, measured_side, Ctx, HEALTHY_KEYS};

const TOKEN: &str = "bench-client-token";
/// Limits no phase reaches (a phase sends at most a few hundred thousand requests).
const LIMITS: &str =
    "rpm=1000000000 tpm=1000000000000 max_concurrent=100000 daily_tokens=1000000000000";

pub(crate) struct AccountingEnv<'a> {
    pub bin: &'a Path,
    pub upstream: &'a str,
    pub logs: &'a Path,
    /// The main gateway (no tokens, no usage log) and its pid.
    pub off: (&'a HttpTarget, u32),
}

/// One phase: a mode (`off` or `on`), a load point, what was measured.
#[derive(Clone, Debug, Serialize)]
pub struct AccountingPhase {
    pub mode: String,
    pub stream: bool,
    pub concurrency: usize,
    pub side: Side,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct AccountingBench {
    pub phases: Vec<AccountingPhase>,
    /// Usage records the "on" gateway wrote, and the requests it answered.
    pub records_written: Option<u64>,
    pub requests_answered: u64,
    pub notes: Vec<String>,
}

impl AccountingBench {
    /// The "on" phase at a point and the mean of its two "off" phases: (rps, p50 ms) each.
    pub fn pair(&self, stream: bool, c: usize) -> Option<((f64, f64), (f64, f64))> {
        let of = |mode: &str| {
            self.phases
                .iter()
                .filter(|p| p.mode == mode && p.stream == stream && p.concurrency == c)
                .map(|p| (p.side.rps, p.side.latency.p50_ms))
                .collect::<Vec<_>>()
        };
        let off = of("off");
        let on = *of("on").first()?;
        if off.is_empty() {
            return None;
        }
        let n = off.len() as f64;
        let mean = (
            off.iter().map(|o| o.0).sum::<f64>() / n,
            off.iter().map(|o| o.1).sum::<f64>() / n,
        );
        Some((mean, on))
    }
}

/// Runs the scenario; what it could not measure is said in the notes.
pub(crate) async fn scenario(ctx: &mut Ctx, env: AccountingEnv<'_>) -> AccountingBench {
    let mut out = AccountingBench::default();
    let tokens = env.logs.join("accounting-tokens.txt");
    let usage_log = env.logs.join("accounting-usage.jsonl");
    let _ = std::fs::remove_file(&usage_log);
    if let Err(e) = std::fs::write(&tokens, format!("{TOKEN} name=bench {LIMITS}\n")) {
        out.notes
            .push(format!("Skipped: {}: {e}", tokens.display()));
        return out;
    }
    let extra: Vec<String> = [
        "--auth-tokens-file",
        &tokens.display().to_string(),
        "--usage-log",
        &usage_log.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let on = match procs::spawn_gateway_with(
        env.bin,
        env.upstream,
        &HEALTHY_KEYS,
        &extra,
        &env.logs.join("gateway-accounting.log"),
    )
    .await
    {
        Ok(g) => g,
        Err(e) => {
            out.notes
                .push(format!("The accounting gateway did not start: {e}"));
            return out;
        }
    };
    let on_t = HttpTarget {
        addr: on.addr,
        path: "/v1/chat/completions".into(),
        bearer: Some(TOKEN.into()),
    };
    let (off_t, off_pid) = env.off;
    let all = [off_pid, on.proc.pid, ctx.mock.pid];
    let pids_for = |serving: u32| -> Vec<u32> {
        let mut v = vec![serving];
        v.extend(all.iter().copied().filter(|p| *p != serving));
        v
    };
    for (stream, c) in [(false, 64usize), (false, 1), (true, 64)] {
        let spec = if stream {
            ctx.spec(c, true, chat_body(true, 8, 0), Some(9))
        } else {
            ctx.spec(c, false, chat_body(false, 0, 0), None)
        };
        ctx.step += 1;
        let id = format!("accounting {}c={c}", if stream { "stream " } else { "" });
        let runs = [
            ("off", off_t, off_pid),
            ("on", &on_t, on.proc.pid),
            ("off", off_t, off_pid),
        ];
        for (mode, t, pid) in runs {
            let side = measured_side(
                spec.warmup,
                &pids_for(pid),
                &format!("HTTP → gateway (accounting {mode}) → mock"),
                crate::load::run(t, &spec),
            )
            .await;
            log_side(ctx.step, &id, mode, &side);
            if mode == "on" {
                out.requests_answered += side.attempted;
            }
            out.phases.push(AccountingPhase {
                mode: mode.into(),
                stream,
                concurrency: c,
                side,
            });
        }
    }
    on.proc.stop().await;
    // The writer flushes in batches and on shutdown: count what reached the file.
    out.records_written = std::fs::read(&usage_log)
        .ok()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    out
}

/// The report's section.
pub(crate) fn section(o: &mut String, a: &AccountingBench) {
    let _ = writeln!(o, "## Accounting (client token limits and the usage log)\n");
    o.push_str("**off** = the main gateway: open, no usage log (the usage meter still runs and keeps its in-memory totals: it cannot be turned off). **on** = a gateway whose one client token has a name and every limit (`rpm`, `tpm`, `max_concurrent`, `daily_tokens`, far above anything reached, so each request takes and settles every counter and nothing is refused) and which writes every usage record to `--usage-log`. At each point the phases run off, on, off back to back; \"vs off\" compares with the mean of the two off rows.\n\n");
    for n in &a.notes {
        let _ = writeln!(o, "- {n}");
    }
    if let Some(w) = a.records_written {
        let _ = writeln!(
            o,
            "The accounting gateway wrote {w} usage records for the {} requests it was sent (warm-up included; a request cut off when a phase ended is recorded as cancelled).\n",
            a.requests_answered
        );
    }
    if a.phases.is_empty() {
        return;
    }
    o.push_str("| mode | kind | c | RPS | RPS vs off | p50 | p50 vs off | p99 | errors | gateway CPU µs/req | other CPU % |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
    for p in &a.phases {
        let s = &p.side;
        let vs = a
            .pair(p.stream, p.concurrency)
            .filter(|_| p.mode == "on")
            .map(|(off, _)| off);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            p.mode,
            if p.stream {
                "stream (8 events)"
            } else {
                "non-stream"
            },
            p.concurrency,
            s.rps,
            vs.map_or("–".into(), |off| report::ratio_pct(off.0, s.rps)),
            report::ms(s.latency.p50_ms),
            vs.map_or("–".into(), |off| report::added(off.1, s.latency.p50_ms)),
            report::ms(s.latency.p99_ms),
            report::errs(s),
            report::cpu(s),
            report::other(s)
        );
    }
    o.push('\n');
}
