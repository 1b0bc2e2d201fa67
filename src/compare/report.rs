//! The compare report: a Markdown table of every figure and two SVG charts (plotters).

use std::fmt::Write as _;

use plotters::prelude::*;

use super::{Mode, Report};

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn ms(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), |v| format!("{v:.0} ms"))
}

fn shares(counts: &[u64]) -> String {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| format!("{:.0}", *c as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" / ")
}

pub(super) fn markdown(r: &Report) -> String {
    let o = &r.options;
    let mut s = String::new();
    let _ = writeln!(s, "# Round robin vs consistent hash\n");
    let _ = writeln!(
        s,
        "doorman {} ({} build) on {}, {} CPU(s). Command: `{}`\n",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        command_line(r),
    );
    let _ = writeln!(
        s,
        "Workload: {} replicas on loopback, each serving {} request(s) at a time for {:?} \
         (a fixed capacity, so an overloaded replica queues); {} closed-loop HTTP/1.1 \
         keep-alive clients through doorman's plain listener; {} GET requests per run over {} \
         keys sent as `x-session-id` (the sticky key); the same key sequence for every mode. \
         Everything shares this machine's cores, so compare rows with each other, not with \
         other machines.\n",
        o.replicas, o.replica_workers, o.service_time, o.concurrency, o.requests, o.keys,
    );

    let _ = writeln!(s, "## Throughput, latency and load spread\n");
    let _ = writeln!(
        s,
        "| keys | mode | requests | errors | req/s | p50 | p99 | max/mean | CV | share per replica (%) | affinity violations |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for l in &r.loads {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.3} | {} | {} ({}) |",
            l.population,
            l.mode.label(),
            l.requests,
            l.errors,
            l.rps(),
            l.p50_ms,
            l.p99_ms,
            l.max_over_mean(),
            l.cv(),
            shares(&l.per_replica),
            l.affinity_violations,
            pct(l.affinity_violations as f64 / l.requests.max(1) as f64),
        );
    }
    let _ = writeln!(
        s,
        "\nmax/mean: the busiest replica's requests over the mean (1.00 = even). CV: standard \
         deviation over mean of the per-replica counts. Affinity violation: a request whose \
         key landed on another replica than that key's first request.\n"
    );
    let _ = writeln!(s, "![load spread per replica](load-spread.svg)\n");

    let _ = writeln!(s, "## Keys remapped when the replica set changes\n");
    let _ = writeln!(
        s,
        "Each of the {} keys sent once before and once after the change.\n",
        o.keys
    );
    let _ = writeln!(
        s,
        "| change | mode | keys moved | fraction | consistent-hash ideal | needless moves |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for m in &r.remaps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            m.change,
            m.mode.label(),
            m.moved,
            pct(m.moved as f64 / m.keys.max(1) as f64),
            pct(m.theory),
            m.needless,
        );
    }
    let _ = writeln!(
        s,
        "\nNeedless moves: keys that changed replica although theirs stayed (and, on adding, \
         did not go to the new one). Round robin has no key-to-replica mapping at all: its \
         rows show that a key's next request lands anywhere, which stateless replicas do not \
         mind.\n"
    );

    let _ = writeln!(s, "## Failover: replica 1 killed mid-run\n");
    let _ = writeln!(
        s,
        "Uniform keys; replica 1 is killed (listener closed, every connection dropped) after \
         {:.0}% of the requests. GETs are retried on another replica.\n",
        super::KILL_AT * 100.0
    );
    let _ = writeln!(
        s,
        "| mode | requests | client errors | last error after kill | dead replica ejected after | p99 before / after | affinity violations | of which keys of surviving replicas |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in &r.failovers {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} / {:.2} ms | {} | {} |",
            f.mode.label(),
            f.requests,
            f.errors,
            ms(f.last_error_after_ms),
            ms(f.ejected_after_ms),
            f.p99_before_ms,
            f.p99_after_ms,
            f.affinity_violations,
            f.survivor_violations,
        );
    }
    let _ = writeln!(
        s,
        "\nEjected after: from the kill until doorman stopped offering the dead replica requests \
         (passive ejection after consecutive connection failures); until then each attempt on \
         it was refused at connect and retried elsewhere.\n"
    );
    let _ = writeln!(s, "![requests per replica over time](failover.svg)");
    s
}

fn command_line(r: &Report) -> String {
    let o = &r.options;
    let mut c = format!(
        "doorman compare --requests {} --keys {} --replicas {} --concurrency {} --replica-workers {} --service-time {} --seed {}",
        o.requests,
        o.keys,
        o.replicas,
        o.concurrency,
        o.replica_workers,
        humantime::format_duration(o.service_time),
        o.seed
    );
    if let Some(p) = &o.config {
        let _ = write!(c, " --config {}", p.display());
    }
    c
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into())
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// One panel per load run: each replica's share of the requests, against the even share.
pub(super) fn load_chart(r: &Report) -> Result<String, String> {
    let mut svg = String::new();
    {
        let cols = r.loads.len().div_ceil(2).max(1);
        let root = SVGBackend::with_string(&mut svg, (300 * cols as u32, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                "Share of requests per replica (dashed: even share)",
                ("sans-serif", 20),
            )
            .map_err(err)?;
        let replicas = r.options.replicas;
        let even = 100.0 / replicas as f64;
        let top = r
            .loads
            .iter()
            .map(|l| {
                let total: u64 = l.per_replica.iter().sum();
                l.per_replica.iter().copied().max().unwrap_or(0) as f64 * 100.0
                    / total.max(1) as f64
            })
            .fold(even * 1.5, f64::max)
            * 1.1;
        for (panel, l) in root.split_evenly((2, cols)).iter().zip(&r.loads) {
            let total: u64 = l.per_replica.iter().sum();
            // A segmented range a..b has segments a..=b.
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{}: {}", l.population, l.mode.label()),
                    ("sans-serif", 13),
                )
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(36)
                .build_cartesian_2d((0..replicas - 1).into_segmented(), 0f64..top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => format!("r{}", i + 1),
                    _ => String::new(),
                })
                .y_label_formatter(&|y| format!("{y:.0}%"))
                .draw()
                .map_err(err)?;
            chart
                .draw_series(l.per_replica.iter().enumerate().map(|(i, c)| {
                    let share = *c as f64 * 100.0 / total.max(1) as f64;
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), share),
                        ],
                        color(i).filled(),
                    );
                    bar.set_margin(0, 0, 6, 6);
                    bar
                }))
                .map_err(err)?;
            chart
                .draw_series(DashedLineSeries::new(
                    [(SegmentValue::Exact(0), even), (SegmentValue::Last, even)],
                    6,
                    4,
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Requests completed per replica over time in each failover run, the kill marked.
pub(super) fn failover_chart(r: &Report) -> Result<String, String> {
    let mut svg = String::new();
    {
        let rows = r.failovers.len().max(1);
        let root = SVGBackend::with_string(&mut svg, (900, 300 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (panel, f) in root.split_evenly((rows, 1)).iter().zip(&r.failovers) {
            let buckets = f.timeline.first().map_or(1, Vec::len);
            let end_ms = buckets as f64 * f.bucket_ms;
            let per_s = 1000.0 / f.bucket_ms;
            let top = f.timeline.iter().flatten().copied().max().unwrap_or(1) as f64 * per_s * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!(
                        "{}: replica 1 killed at {:.0} ms ({} client errors)",
                        mode_title(f.mode),
                        f.killed_at_ms,
                        f.errors
                    ),
                    ("sans-serif", 15),
                )
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..end_ms, 0f64..top.max(1.0))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("ms since start")
                .y_desc("requests/s")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(err)?;
            for (i, t) in f.timeline.iter().enumerate() {
                let points: Vec<(f64, f64)> = t
                    .iter()
                    .enumerate()
                    .map(|(b, c)| ((b as f64 + 0.5) * f.bucket_ms, f64::from(*c) * per_s))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points, color(i).stroke_width(2)))
                    .map_err(err)?
                    .label(format!("replica {}", i + 1))
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color(i).stroke_width(2))
                    });
            }
            chart
                .draw_series(LineSeries::new(
                    [(f.killed_at_ms, 0.0), (f.killed_at_ms, top)],
                    RED.stroke_width(1),
                ))
                .map_err(err)?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn mode_title(m: Mode) -> String {
    let mut t = m.label();
    if let Some(c) = t.get_mut(0..1) {
        c.make_ascii_uppercase();
    }
    t
}
