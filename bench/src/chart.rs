//! A PNG chart: latency percentiles, direct vs gateway, one panel per scenario.
//!
//! Text is drawn with an embedded DejaVu Sans Mono (assets/, Bitstream Vera license), so the
//! chart renders on a machine without any system font.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::load::Summary;
use crate::report::{Group, Report, Scenario};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

const DIRECT: RGBColor = RGBColor(70, 120, 200);
const GATEWAY: RGBColor = RGBColor(235, 130, 40);

struct Panel {
    title: String,
    subtitle: String,
    what: &'static str,
    direct: Option<[f64; 3]>,
    gateway: Option<[f64; 3]>,
    gateway_label: &'static str,
    direct_label: &'static str,
}

fn pcts(s: &Summary) -> [f64; 3] {
    [s.p50_ms, s.p90_ms, s.p99_ms]
}

fn krps(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn panel(s: &Scenario) -> Panel {
    let use_ttfc = matches!(s.group, Group::HttpStream | Group::GrpcStream);
    let pick = |side: &crate::report::Side| -> [f64; 3] {
        if use_ttfc {
            side.ttfc.as_ref().map_or([0.0; 3], pcts)
        } else {
            pcts(&side.latency)
        }
    };
    let grpc = matches!(
        s.group,
        Group::GrpcUnary | Group::GrpcStream | Group::GrpcPaced
    );
    let title = match s.group {
        Group::Http => format!("HTTP non-stream c={}", s.concurrency),
        Group::HttpStream => format!("HTTP stream c={}: first chunk", s.concurrency),
        Group::Paced => format!("Paced 32x10ms c={}: total", s.concurrency),
        Group::GrpcUnary => format!("gRPC unary c={}", s.concurrency),
        Group::GrpcStream => format!("gRPC stream c={}: first msg", s.concurrency),
        Group::GrpcPaced => format!("gRPC paced c={}: total", s.concurrency),
        Group::Fault => format!("Fault mix c={}", s.concurrency),
    };
    let subtitle = match (&s.direct, &s.gateway) {
        (Some(d), Some(g)) => format!(
            "req/s: direct {}, gateway {} ({:.0}%)",
            krps(d.rps),
            krps(g.rps),
            100.0 * g.rps / d.rps.max(1e-9)
        ),
        (Some(d), None) => format!("{} req/s direct; gateway not measured", krps(d.rps)),
        _ => String::new(),
    };
    Panel {
        title,
        subtitle,
        what: if use_ttfc { "first chunk" } else { "latency" },
        direct: s.direct.as_ref().map(pick),
        gateway: s.gateway.as_ref().map(pick),
        direct_label: if grpc { "HTTP direct" } else { "direct" },
        gateway_label: if grpc { "gRPC gateway" } else { "gateway" },
    }
}

pub fn draw(r: &Report, path: &Path) -> Result<(), String> {
    draw_inner(r, path).map_err(|e| e.to_string())
}

fn draw_inner(r: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for style in [FontStyle::Normal, FontStyle::Bold] {
        plotters::style::register_font("sans-serif", style, FONT)
            .map_err(|_| "embedded font is invalid")?;
    }
    let panels: Vec<Panel> = r.scenarios.iter().map(panel).collect();
    if panels.is_empty() {
        return Err("no scenarios to draw".into());
    }
    let cols = 4usize;
    // One more cell for memory, startup and the targets' verdicts.
    let rows = (panels.len() + 1).div_ceil(cols);
    let (w, ph) = (1800u32, 380u32);
    let header = 90u32;
    let root = BitMapBackend::new(path, (w, header + ph * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(header);
    top.draw_text(
        "megallm-gateway vs direct call: latency percentiles p50 / p90 / p99 (ms, lower is better)",
        &("sans-serif", 26)
            .into_font()
            .style(FontStyle::Bold)
            .color(&BLACK),
        (20, 12),
    )?;
    top.draw_text(
        &format!(
            "{}  |  {} cores ({}) shared by load generator, gateway and mock upstream; nothing pinned  |  {} mode",
            r.generated_at, r.machine.nproc, r.machine.cpu_model, r.settings.mode
        ),
        &("sans-serif", 16).into_font().color(&RGBColor(60, 60, 60)),
        (20, 50),
    )?;
    let areas = body.split_evenly((rows, cols));
    for (area, p) in areas.iter().zip(panels.iter()) {
        let mut ymax = 0.0f64;
        for v in p.direct.iter().chain(p.gateway.iter()) {
            for x in v {
                ymax = ymax.max(*x);
            }
        }
        let ymax = if ymax > 0.0 { ymax * 1.3 } else { 1.0 };
        let (head, plot) = area.split_vertically(54);
        head.draw_text(
            &p.title,
            &("sans-serif", 19)
                .into_font()
                .style(FontStyle::Bold)
                .color(&BLACK),
            (74, 8),
        )?;
        head.draw_text(
            &p.subtitle,
            &("sans-serif", 14).into_font().color(&RGBColor(80, 80, 80)),
            (74, 33),
        )?;
        let ystep = ymax / 6.0;
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .margin_top(4)
            .x_label_area_size(28)
            .y_label_area_size(62)
            .build_cartesian_2d(-0.5f64..2.5f64, 0f64..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(3)
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() > 1e-6 {
                    return String::new();
                }
                match i as i64 {
                    0 => "p50".into(),
                    1 => "p90".into(),
                    2 => "p99".into(),
                    _ => String::new(),
                }
            })
            .y_labels(6)
            .y_label_formatter(&|v| {
                if ystep >= 5.0 {
                    format!("{v:.0}")
                } else if ystep >= 0.5 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.2}")
                }
            })
            .y_desc(format!("{} ms", p.what))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        let bars = [
            (p.direct, DIRECT, -0.40f64, p.direct_label),
            (p.gateway, GATEWAY, 0.02f64, p.gateway_label),
        ];
        for (vals, color, off, label) in bars {
            let Some(vals) = vals else { continue };
            chart
                .draw_series(vals.iter().enumerate().map(|(i, v)| {
                    let x = i as f64 + off;
                    Rectangle::new([(x, 0.0), (x + 0.38, *v)], color.filled())
                }))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            chart.draw_series(vals.iter().enumerate().map(|(i, v)| {
                let x = i as f64 + off + 0.01;
                Text::new(
                    fmt_val(*v),
                    (x, *v + ymax * 0.015),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )
                .into_dyn()
            }))?;
            let _ = label;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(RGBColor(180, 180, 180))
            .background_style(WHITE.mix(0.85))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    if let Some(area) = areas.get(panels.len()) {
        summary_panel(r, area)?;
    }
    root.present()?;
    Ok(())
}

fn mb(k: Option<u64>) -> String {
    k.map_or("not measured".into(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    })
}

fn summary_panel<DB: DrawingBackend>(
    r: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let title = ("sans-serif", 19)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK);
    let text = ("sans-serif", 15).into_font().color(&RGBColor(40, 40, 40));
    let mut y = 8;
    let mut line = |s: &str, bold: bool| -> Result<(), Box<dyn std::error::Error>> {
        area.draw_text(s, if bold { &title } else { &text }, (74, y))?;
        y += if bold { 30 } else { 22 };
        Ok(())
    };
    line("Memory and startup (gateway)", true)?;
    line(
        &format!("RSS idle:        {}", mb(r.memory.idle_kib)),
        false,
    )?;
    line(
        &format!("RSS after load:  {}", mb(r.memory.after_load_kib)),
        false,
    )?;
    for h in &r.memory.streams {
        let partial = if h.opened < h.target {
            format!(" ({} open)", h.opened)
        } else {
            String::new()
        };
        line(
            &format!(
                "RSS {:>6} streams: {}{partial}",
                h.target,
                mb(h.gateway_rss_kib)
            ),
            false,
        )?;
    }
    line(
        &format!(
            "startup to /healthz 200: {}",
            r.startup
                .median_ms
                .map_or("not measured".into(), |m| format!("{m:.1} ms (median)"))
        ),
        false,
    )?;
    line("", false)?;
    let pass = r.targets.iter().filter(|t| t.verdict == "PASS").count();
    let miss = r.targets.iter().filter(|t| t.verdict == "MISS").count();
    let na = r.targets.len() - pass - miss;
    line("Targets", true)?;
    line(
        &format!("{pass} PASS, {miss} MISS, {na} not measured"),
        false,
    )?;
    line("(see latest.md)", false)?;
    Ok(())
}

fn fmt_val(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
