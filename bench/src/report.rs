//! The report: a markdown table and an HTML page with plots (inline SVG,
//! no scripts, no external files).

use std::fmt::Write as _;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::compare::Report;

/// The systems measured: etcd first when it ran, then the protocols.
/// (Each protocol once per durability setting: `optimized`,
/// `optimized/memory`.)
fn systems(report: &Report) -> Vec<String> {
    let mut systems: Vec<String> = report
        .spec
        .durabilities
        .iter()
        .flat_map(|&d| {
            report
                .spec
                .protocols
                .iter()
                .map(move |&p| crate::compare::system_label(p, d))
        })
        .collect();
    if report.spec.etcd {
        systems.insert(0, "etcd".into());
    }
    systems
}

/// The workloads run, each once, in the order first run.
fn workload_names(report: &Report) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for run in &report.runs {
        if !names.contains(&run.workload) {
            names.push(run.workload.clone());
        }
    }
    names
}

fn fmt_list(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The report as markdown.
pub fn markdown(report: &Report) -> String {
    let s = &report.spec;
    let mut out = String::new();
    let _ = writeln!(out, "# Protocol comparison\n");
    let _ = writeln!(
        out,
        "{} nodes per cluster (real processes, RocksDB, {}, {}), {} s per run after {} s warm-up, \
         {}-byte values over {} keys ({:?}), network delay {} ± {}, {}, reads of optimized and nilext by {}; machine: {} cores.\n",
        s.nodes,
        match s.durabilities[..] {
            [consensus::config::Durability::Sync] => "fsync on",
            [consensus::config::Durability::Memory] => "fsync OFF (--durability memory)",
            _ => "fsync on, and off in the /memory rows",
        },
        if s.node_dirs.is_empty() {
            "every node's data on one file system".to_string()
        } else {
            let dirs: Vec<String> = s
                .node_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            format!("node data in {}", dirs.join(", "))
        },
        s.duration.as_secs_f64(),
        s.warmup.as_secs_f64(),
        s.value_bytes,
        s.keys,
        s.distribution,
        consensus::config::format_duration(s.net_delay),
        consensus::config::format_duration(s.net_jitter),
        match (s.rate, s.connections) {
            (Some(rate), 0) => format!("open loop at {rate:.0} ops/s, a connection per client"),
            (None, 0) => "closed-loop clients, a connection each".into(),
            (Some(rate), n) =>
                format!("open loop at {rate:.0} ops/s, clients sharing {n} connection(s) per node"),
            (None, n) => format!("closed-loop clients sharing {n} connection(s) per node"),
        },
        s.read_mode,
        report.cores
    );
    if s.durabilities
        .contains(&consensus::config::Durability::Memory)
    {
        let _ = writeln!(
            out,
            "**Rows labelled `/memory` ran with `--durability memory`: logs and votes written \
             without fsync. UNSAFE against the loss of a majority of machines: what they \
             acknowledged survives a killed process, not a crashed machine (the Skyros paper's \
             setting). The other rows sync every log write.**\n"
        );
    }
    let _ = writeln!(
        out,
        "| workload | protocol | clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | syncs/s per node | writes per sync per node | read-cache hits | CPU s per 1000 ops | max RSS MiB per node | data MiB per node at end |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---|"
    );
    let workloads = workload_names(report);
    for workload in &workloads {
        for run in report.runs.iter().filter(|r| r.workload == *workload) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.3} | {} | {} |",
                run.workload,
                run.protocol,
                run.clients,
                run.throughput,
                run.p50_ms,
                run.p90_ms,
                run.p99_ms,
                run.p999_ms,
                run.errors,
                fmt_list(&run.syncs_per_second, 0),
                fmt_list(&run.writes_per_sync, 1),
                run.cache_hit_ratio
                    .map_or("-".to_string(), |r| format!("{:.1}%", 100.0 * r)),
                run.cpu_seconds_per_1000_ops,
                fmt_list(&run.rss_mib_max, 0),
                fmt_list(&run.data_mib_end, 0)
            );
        }
    }
    // Ratios to etcd when it ran, else to the first protocol.
    let systems = systems(report);
    if let Some(base) = systems.first() {
        let _ = writeln!(out, "\n## Throughput relative to {base}\n");
        let _ = writeln!(out, "| workload | clients | {} |", systems.join(" | "));
        let _ = writeln!(out, "|---|---:|{}", "---:|".repeat(systems.len()));
        for workload in &workloads {
            for &clients in &s.clients {
                let of = |p: &str| {
                    report
                        .runs
                        .iter()
                        .find(|r| {
                            r.workload == *workload && r.clients == clients && r.protocol == p
                        })
                        .map(|r| r.throughput)
                };
                let Some(base_tp) = of(base).filter(|t| *t > 0.0) else {
                    continue;
                };
                let cells: Vec<String> = systems
                    .iter()
                    .map(|p| of(p).map_or("-".into(), |t| format!("{:.1}x", t / base_tp)))
                    .collect();
                let _ = writeln!(out, "| {workload} | {clients} | {} |", cells.join(" | "));
            }
        }
    }
    if !report.availability.is_empty() {
        let _ = writeln!(
            out,
            "\n## Availability: the leader killed (SIGKILL) under write load\n"
        );
        let _ = writeln!(
            out,
            "| protocol | clients | killed at s | first write issued after the kill done after, ms | ops/s before | lowest ops/s after (100 ms buckets) | ops/s in the last second |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for a in &report.availability {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {} | {:.0} | {:.0} | {:.0} |",
                a.protocol,
                a.clients,
                a.kill_at_ms as f64 / 1000.0,
                a.time_to_first_write_ms
                    .map_or("none".into(), |t| t.to_string()),
                a.throughput_before,
                a.throughput_dip,
                a.throughput_after
            );
        }
    }
    if !report.redis_benchmark.is_empty() {
        let first = &report.redis_benchmark[0];
        let _ = writeln!(
            out,
            "\n## redis-benchmark through the Redis-protocol endpoint, beside bench\n\n\
             redis-benchmark (Debian's redis-tools) against the leader's `--resp-addr`: {} requests \
             per test, {} connections, random keys over {}, {}-byte values. Each connection is a \
             client session of the store, one loopback hop behind the endpoint (`kvnode::resp`). \
             Beside it, bench's own run with as many clients: `write` for SET, `ycsb-c` for GET.\n",
            first.requests, first.clients, s.keys, s.value_bytes
        );
        let _ = writeln!(
            out,
            "| protocol | test | redis-benchmark ops/s | p50 ms | p99 ms | bench workload | bench ops/s | p50 ms | p99 ms |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|---:|");
        for r in &report.redis_benchmark {
            let workload = if r.test == "SET" { "write" } else { "ycsb-c" };
            let own = report.runs.iter().find(|b| {
                b.protocol == r.protocol && b.workload == workload && b.clients == r.clients
            });
            let own = own.map_or("not run | - | - | -".to_string(), |b| {
                format!(
                    "{workload} | {:.0} | {:.2} | {:.2}",
                    b.throughput, b.p50_ms, b.p99_ms
                )
            });
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {own} |",
                r.protocol, r.test, r.rps, r.p50_ms, r.p99_ms
            );
        }
    }
    if !report.rolling_restarts.is_empty() {
        let _ = writeln!(
            out,
            "\n## Availability: a rolling restart (each node in turn: SIGTERM, start again) under write load\n"
        );
        let _ = writeln!(
            out,
            "| protocol | leader hands over on SIGTERM | clients | longest time with no write done, ms | failed writes | ops/s before | lowest ops/s (100 ms buckets) |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for r in &report.rolling_restarts {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                r.protocol,
                if r.hand_over { "yes" } else { "no" },
                r.clients,
                r.longest_gap_ms,
                r.errors,
                r.throughput_before,
                r.throughput_dip
            );
        }
    }
    out
}

/// The series' colours (matplotlib's first six).
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How an axis places values.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    Linear,
    /// Logarithmic (latency; client counts).
    Log,
    /// Percentiles, the nines evenly spaced: 50, 90, 99, 99.9 one step
    /// apart (values are the percentiles; placed by [`NINES`]).
    Nines,
}

/// The percentiles a [`Scale::Nines`] axis shows, one step apart.
const NINES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

impl Scale {
    /// Where `value` goes on the axis's coordinate.
    fn place(self, value: f64) -> f64 {
        match self {
            Scale::Nines => NINES
                .iter()
                .position(|p| (p - value).abs() < 1e-9)
                .map_or(-1.0, |i| i as f64),
            Scale::Linear | Scale::Log => value,
        }
    }

    /// The axis's range for values placed between `lo` and `hi`.
    fn range(self, lo: f64, hi: f64) -> (f64, f64) {
        match self {
            Scale::Nines => (-0.25, NINES.len() as f64 - 0.75),
            Scale::Linear => (lo.min(0.0), if hi > lo { hi * 1.08 } else { lo + 1.0 }),
            Scale::Log => {
                let lo = lo.max(1e-3);
                (lo / 1.5, hi.max(lo * 2.0) * 1.5)
            }
        }
    }

    /// A tick's label.
    fn label(self, value: f64) -> String {
        match self {
            Scale::Nines => {
                let i = value.round();
                if (value - i).abs() > 1e-6 || i < 0.0 || i as usize >= NINES.len() {
                    String::new()
                } else {
                    format!("p{}", NINES[i as usize])
                }
            }
            Scale::Linear | Scale::Log => short_number(value),
        }
    }
}

/// A number as a tick label: 12k, 1.5M, 0.25.
fn short_number(value: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{}M", trim(format!("{:.1}", value / 1e6)))
    } else if magnitude >= 1e3 {
        format!("{}k", trim(format!("{:.1}", value / 1e3)))
    } else if magnitude >= 1.0 || magnitude == 0.0 {
        trim(format!("{value:.1}"))
    } else {
        trim(format!("{value:.3}"))
    }
}

/// 1, 2 and 5 times the powers of ten between `lo` and `hi`.
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    let mut keys = Vec::new();
    let mut decade = 10f64.powf(lo.max(1e-9).log10().floor());
    while decade <= hi {
        for step in [1.0, 2.0, 5.0] {
            let key = decade * step;
            if key >= lo && key <= hi {
                keys.push(key);
            }
        }
        decade *= 10.0;
    }
    keys
}

/// A line chart (SVG, drawn with plotters): one series per name, with
/// ticks, gridlines, axis titles and a legend.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x: Scale,
    y: Scale,
    series: &'a [(String, Vec<(f64, f64)>)],
    /// Vertical lines across the plot, labelled (a leader kill).
    marks: Vec<(f64, String)>,
}

impl Chart<'_> {
    fn svg(&self) -> String {
        // Each series' points where the axes place them, those an axis
        // cannot show left out: computed once, for the ranges and the lines.
        let placed: Vec<(&str, Vec<(f64, f64)>)> = self
            .series
            .iter()
            .map(|(name, points)| {
                let points = points
                    .iter()
                    .map(|&(x, y)| (self.x.place(x), y))
                    .filter(|&(x, y)| {
                        x.is_finite()
                            && (self.x != Scale::Log || x > 0.0)
                            && (self.y != Scale::Log || y > 0.0)
                    })
                    .collect();
                (name.as_str(), points)
            })
            .collect();
        let points = || placed.iter().flat_map(|(_, p)| p.iter().copied());
        let span = |values: &mut dyn Iterator<Item = f64>| {
            values
                .fold(None, |range: Option<(f64, f64)>, v| {
                    Some(range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
                })
                .unwrap_or((0.0, 1.0))
        };
        let (x_lo, x_hi) = span(&mut points().map(|(x, _)| x));
        let (y_lo, y_hi) = span(&mut points().map(|(_, y)| y));
        let (x_lo, x_hi) = self.x.range(x_lo, x_hi);
        let (y_lo, y_hi) = self.y.range(y_lo, y_hi);
        // Log axes are labelled at the values measured (client counts),
        // or at 1, 2, 5 times the powers of ten.
        let mut measured: Vec<f64> = points().map(|(x, _)| x).filter(|x| *x > 0.0).collect();
        measured.sort_by(f64::total_cmp);
        measured.dedup();
        let x_keys = if measured.len() <= 12 {
            measured
        } else {
            one_two_five(x_lo, x_hi)
        };
        let y_keys = one_two_five(y_lo, y_hi);
        let mut svg = String::new();
        let drawn = match (self.x == Scale::Log, self.y == Scale::Log) {
            (false, false) => self.draw(&mut svg, &placed, x_lo..x_hi, y_lo..y_hi),
            (true, false) => self.draw(
                &mut svg,
                &placed,
                (x_lo..x_hi).log_scale().with_key_points(x_keys),
                y_lo..y_hi,
            ),
            (false, true) => self.draw(
                &mut svg,
                &placed,
                x_lo..x_hi,
                (y_lo..y_hi).log_scale().with_key_points(y_keys),
            ),
            (true, true) => self.draw(
                &mut svg,
                &placed,
                (x_lo..x_hi).log_scale().with_key_points(x_keys),
                (y_lo..y_hi).log_scale().with_key_points(y_keys),
            ),
        };
        match drawn {
            Ok(()) => svg,
            Err(error) => format!(
                "<p>(chart \"{}\" not drawn: {error})</p>",
                escape(self.title)
            ),
        }
    }

    fn draw<X, Y>(
        &self,
        svg: &mut String,
        placed: &[(&str, Vec<(f64, f64)>)],
        x: X,
        y: Y,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let root = SVGBackend::with_string(svg, (620, 340)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(58)
            .build_cartesian_2d(x, y)?;
        let (x_scale, y_scale) = (self.x, self.y);
        let x_format = move |v: &f64| x_scale.label(*v);
        let y_format = move |v: &f64| y_scale.label(*v);
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_labels(if self.x == Scale::Nines {
                NINES.len()
            } else {
                10
            })
            .y_labels(8)
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            // Log axes' key points are gridlines enough.
            .x_max_light_lines(if self.x == Scale::Linear { 4 } else { 0 })
            .y_max_light_lines(if self.y == Scale::Linear { 4 } else { 0 })
            .bold_line_style(RGBColor(0xcc, 0xcc, 0xcc))
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .draw()?;
        let (y_lo, y_hi) = {
            let range = chart.y_range();
            (range.start, range.end)
        };
        for (at, label) in &self.marks {
            let grey = RGBColor(0x55, 0x55, 0x55);
            chart.draw_series(DashedLineSeries::new(
                [(*at, y_lo), (*at, y_hi)],
                6,
                4,
                grey.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (*at, y_lo + 0.97 * (y_hi - y_lo)),
                ("sans-serif", 12).into_font().color(&grey),
            )))?;
        }
        for (i, (name, points)) in placed.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let dots = points.len() <= 12;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            if dots {
                chart.draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 3, color.filled())),
                )?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xbb, 0xbb, 0xbb))
            .label_font(("sans-serif", 12))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// The report as an HTML page with plots.
pub fn html(report: &Report) -> String {
    let mut body = String::new();
    let workloads = workload_names(report);
    for workload in &workloads {
        let throughput: Vec<(String, Vec<(f64, f64)>)> = systems(report)
            .iter()
            .map(|p| {
                let points = report
                    .runs
                    .iter()
                    .filter(|r| &r.workload == workload && &r.protocol == p)
                    .map(|r| (r.clients as f64, r.throughput))
                    .collect();
                (p.clone(), points)
            })
            .collect();
        let _ = write!(
            body,
            "<h2>{}</h2><div class='row'>{}",
            escape(workload),
            Chart {
                title: &format!("{workload}: throughput"),
                x_label: "clients (log scale)",
                y_label: "ops/s",
                x: Scale::Log,
                y: Scale::Linear,
                series: &throughput,
                marks: Vec::new(),
            }
            .svg()
        );
        let latency: Vec<(String, Vec<(f64, f64)>)> = systems(report)
            .iter()
            .flat_map(|p| {
                let max_clients = report
                    .runs
                    .iter()
                    .filter(|r| &r.workload == workload && &r.protocol == p)
                    .map(|r| r.clients)
                    .max();
                report
                    .runs
                    .iter()
                    .filter(move |r| {
                        &r.workload == workload
                            && &r.protocol == p
                            && Some(r.clients) == max_clients
                    })
                    .map(|r| {
                        (
                            format!("{} x{}", r.protocol, r.clients),
                            vec![
                                (50.0, r.p50_ms),
                                (90.0, r.p90_ms),
                                (99.0, r.p99_ms),
                                (99.9, r.p999_ms),
                            ],
                        )
                    })
            })
            .collect();
        let _ = write!(
            body,
            "{}</div>",
            Chart {
                title: &format!("{workload}: latency percentiles, most clients"),
                x_label: "percentile",
                y_label: "latency, ms (log scale)",
                x: Scale::Nines,
                y: Scale::Log,
                series: &latency,
                marks: Vec::new(),
            }
            .svg()
        );
    }
    // Resident memory over time: each node of each system, in the run
    // with the most clients of the first workload.
    if let Some(workload) = workloads.first() {
        let mut series = Vec::new();
        for system in systems(report) {
            let Some(run) = report
                .runs
                .iter()
                .filter(|r| &r.workload == workload && r.protocol == system)
                .max_by_key(|r| r.clients)
            else {
                continue;
            };
            let nodes = run.memory.first().map_or(0, |m| m.rss_mib.len());
            for node in 0..nodes {
                let points = run
                    .memory
                    .iter()
                    .map(|m| (m.at_s.round(), m.rss_mib[node]))
                    .collect();
                series.push((format!("{system} node {}", node + 1), points));
            }
        }
        if !series.is_empty() {
            let _ = write!(
                body,
                "<h2>Resident memory per node</h2>{}",
                Chart {
                    title: &format!("{workload}, most clients: resident memory of each node"),
                    x_label: "seconds into the run",
                    y_label: "MiB",
                    x: Scale::Linear,
                    y: Scale::Linear,
                    series: &series,
                    marks: Vec::new(),
                }
                .svg()
            );
        }
    }
    if !report.availability.is_empty() {
        let bucket_s = crate::load::TIMELINE_BUCKET.as_secs_f64();
        let series: Vec<(String, Vec<(f64, f64)>)> = report
            .availability
            .iter()
            .map(|a| {
                let points = a
                    .timeline
                    .iter()
                    .enumerate()
                    .map(|(i, ops)| (i as f64 * bucket_s, *ops as f64 / bucket_s))
                    .collect();
                (a.protocol.clone(), points)
            })
            .collect();
        // One mark per kill time (the same for every protocol of a run).
        let mut marks: Vec<(f64, String)> = Vec::new();
        for a in &report.availability {
            let at = a.kill_at_ms as f64 / 1000.0;
            if !marks.iter().any(|(m, _)| (m - at).abs() < 1e-3) {
                marks.push((at, format!(" leader killed at {at:.1} s")));
            }
        }
        let _ = write!(
            body,
            "<h2>Throughput over time across a leader kill</h2>{}",
            Chart {
                title: "writes per second, leader SIGKILLed at a third of the run",
                x_label: "seconds into the run",
                y_label: "ops/s (100 ms buckets)",
                x: Scale::Linear,
                y: Scale::Linear,
                series: &series,
                marks,
            }
            .svg()
        );
    }
    if !report.rolling_restarts.is_empty() {
        let bucket_s = crate::load::TIMELINE_BUCKET.as_secs_f64();
        let series: Vec<(String, Vec<(f64, f64)>)> = report
            .rolling_restarts
            .iter()
            .map(|r| {
                let points = r
                    .timeline
                    .iter()
                    .enumerate()
                    .map(|(i, ops)| (i as f64 * bucket_s, *ops as f64 / bucket_s))
                    .collect();
                let hand_over = if r.hand_over {
                    "hand-over"
                } else {
                    "no hand-over"
                };
                (format!("{} ({hand_over})", r.protocol), points)
            })
            .collect();
        let _ = write!(
            body,
            "<h2>Throughput over time across a rolling restart</h2>{}",
            Chart {
                title: "writes per second, each node restarted in turn, 3 s apart",
                x_label: "seconds into the run",
                y_label: "ops/s (100 ms buckets)",
                x: Scale::Linear,
                y: Scale::Linear,
                series: &series,
                marks: Vec::new(),
            }
            .svg()
        );
    }
    let table = markdown_table_to_html(&markdown(report));
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>Protocol comparison</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}.row{{display:flex;flex-wrap:wrap;gap:1em}}</style>\
         </head><body><h1>Protocol comparison</h1>{body}<h2>All numbers</h2>{table}</body></html>"
    )
}

/// Renders the markdown report's tables and paragraphs as HTML.
fn markdown_table_to_html(markdown: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            if !in_table {
                out.push_str("<table>");
                in_table = true;
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            out.push_str("<tr>");
            for cell in cells {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        } else {
            if in_table {
                out.push_str("</table>");
                in_table = false;
            }
            if let Some(title) = line.strip_prefix("## ") {
                let _ = write!(out, "<h3>{}</h3>", escape(title));
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                let _ = write!(out, "<p>{}</p>", escape(line));
            }
        }
    }
    if in_table {
        out.push_str("</table>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The x position of each tick label of an SVG chart, by text.
    fn label_positions(svg: &str) -> Vec<(String, f64)> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let (attributes, rest) = t.split_once('>')?;
                let (text, _) = rest.split_once("</text>")?;
                let x = attributes.split_once("x=\"")?.1.split_once('"')?.0;
                Some((text.trim().to_string(), x.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn the_nines_are_evenly_spaced_and_latency_is_on_a_log_axis() {
        let series = vec![(
            "optimized x64".to_string(),
            vec![(50.0, 0.4), (90.0, 0.9), (99.0, 3.0), (99.9, 40.0)],
        )];
        let svg = Chart {
            title: "latency",
            x_label: "percentile",
            y_label: "ms",
            x: Scale::Nines,
            y: Scale::Log,
            series: &series,
            marks: Vec::new(),
        }
        .svg();
        let labels = label_positions(&svg);
        let at = |name: &str| {
            labels
                .iter()
                .find(|(text, _)| text == name)
                .map(|(_, x)| *x)
                .unwrap_or_else(|| panic!("no label {name}: {labels:?}"))
        };
        let steps = [
            at("p90") - at("p50"),
            at("p99") - at("p90"),
            at("p99.9") - at("p99"),
        ];
        assert!(steps[0] > 50.0, "{steps:?}");
        assert!(
            steps.iter().all(|s| (s - steps[0]).abs() <= 2.0),
            "evenly spaced: {steps:?}"
        );
        // A log axis: 1, 2, 5 times powers of ten from 0.4 to 40 ms.
        for key in ["0.5", "1", "2", "5", "10", "20"] {
            at(key);
        }
    }

    fn run(protocol: &str, throughput: f64) -> crate::compare::RunResult {
        crate::compare::RunResult {
            protocol: protocol.into(),
            workload: "write".into(),
            clients: 1,
            ops: 100,
            writes: 100,
            errors: 0,
            seconds: 1.0,
            throughput,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            p999_ms: 4.0,
            syncs_per_second: vec![100.0; 3],
            writes_per_sync: vec![1.0; 3],
            cache_hit_ratio: None,
            cpu_seconds_per_1000_ops: 0.1,
            rss_mib_max: vec![50.0; 3],
            data_mib_end: vec![1.0; 3],
            memory: Vec::new(),
        }
    }

    /// Rows of memory mode are labelled, and the report says what they
    /// promise.
    #[test]
    fn memory_mode_is_labelled_unsafe() {
        use consensus::config::Durability;
        let mut spec = crate::compare::tests::spec(3, Vec::new());
        spec.durabilities = vec![Durability::Sync, Durability::Memory];
        let report = Report {
            spec,
            runs: vec![run("optimized", 1000.0), run("optimized/memory", 1200.0)],
            availability: Vec::new(),
            rolling_restarts: Vec::new(),
            redis_benchmark: Vec::new(),
            cores: 2,
        };
        let text = markdown(&report);
        assert!(
            text.contains("UNSAFE against the loss of a majority"),
            "{text}"
        );
        assert!(
            text.contains("fsync on, and off in the /memory rows"),
            "{text}"
        );
        assert!(text.contains("| write | optimized/memory | 1 |"), "{text}");
        assert!(text.contains("| write | 1 | 1.0x | 1.2x |"), "{text}");
        assert_eq!(
            crate::compare::system_label(consensus::config::Protocol::Nilext, Durability::Memory),
            "nilext/memory"
        );
        let sync_only = Report {
            spec: crate::compare::tests::spec(3, Vec::new()),
            runs: vec![run("optimized", 1000.0)],
            ..report
        };
        assert!(!markdown(&sync_only).contains("UNSAFE"));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short_number(12_345.0), "12.3k");
        assert_eq!(short_number(8_000.0), "8k");
        assert_eq!(short_number(2_500_000.0), "2.5M");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(16.0), "16");
        assert_eq!(
            one_two_five(0.3, 60.0),
            vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        );
    }
}
