//! The report: a markdown table and an HTML page with plots (inline SVG,
//! no scripts, no external files).

use std::fmt::Write as _;

use crate::compare::Report;

/// The systems measured: etcd first when it ran, then the protocols.
fn systems(report: &Report) -> Vec<String> {
    let mut systems: Vec<String> = report
        .spec
        .protocols
        .iter()
        .map(|p| p.name().to_string())
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
        "{} nodes per cluster (real processes, RocksDB, fsync on, {}), {} s per run after {} s warm-up, \
         {}-byte values over {} keys ({:?}), network delay {} ± {}, {}, reads of optimized and nilext by {}; machine: {} cores.\n",
        s.nodes,
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
    let _ = writeln!(
        out,
        "| workload | protocol | clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | syncs/s per node | writes per sync per node | CPU s per 1000 ops | max RSS MiB per node | data MiB per node at end |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|---|"
    );
    let workloads = workload_names(report);
    for workload in &workloads {
        for run in report.runs.iter().filter(|r| r.workload == *workload) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.3} | {} | {} |",
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

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart: one series per name, points (x, y).
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (width, height, margin) = (560.0, 300.0, 55.0);
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let tx = |x: f64| if log_x { x.max(1.0).log2() } else { x };
    let (x_min, x_max) = xs.clone().fold((f64::MAX, f64::MIN), |(a, b), x| {
        (a.min(tx(x)), b.max(tx(x)))
    });
    let y_max = ys.fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let x_span = (x_max - x_min).max(1e-9);
    let px = |x: f64| margin + (tx(x) - x_min) / x_span * (width - 2.0 * margin);
    let py = |y: f64| height - margin + 10.0 - y / y_max * (height - 2.0 * margin);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\
         <text x='{}' y='16' text-anchor='middle' font-size='13'>{}</text>\
         <line x1='{margin}' y1='{}' x2='{}' y2='{}' stroke='#333'/>\
         <line x1='{margin}' y1='{}' x2='{margin}' y2='{}' stroke='#333'/>\
         <text x='{}' y='{}' text-anchor='middle'>{}</text>\
         <text x='12' y='{}' transform='rotate(-90 12 {})' text-anchor='middle'>{}</text>\
         <text x='{}' y='{}' text-anchor='end'>{:.0}</text>",
        width / 2.0,
        escape(title),
        height - margin + 10.0,
        width - margin,
        height - margin + 10.0,
        height - margin + 10.0,
        margin - 10.0,
        width / 2.0,
        height - 12.0,
        escape(x_label),
        height / 2.0,
        height / 2.0,
        escape(y_label),
        margin - 4.0,
        margin - 6.0,
        y_max
    );
    let mut ticks: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    if ticks.len() <= 12 {
        for x in ticks {
            let _ = write!(
                svg,
                "<text x='{:.1}' y='{}' text-anchor='middle'>{}</text>",
                px(x),
                height - margin + 24.0,
                x
            );
        }
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
            path.join(" ")
        );
        if points.len() <= 12 {
            for (x, y) in points {
                let _ = write!(
                    svg,
                    "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/>",
                    px(*x),
                    py(*y)
                );
            }
        }
        let _ = write!(
            svg,
            "<rect x='{}' y='{}' width='10' height='10' fill='{color}'/><text x='{}' y='{}'>{}</text>",
            width - margin - 100.0,
            28.0 + 14.0 * i as f64,
            width - margin - 86.0,
            37.0 + 14.0 * i as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
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
            line_chart(
                &format!("{workload}: throughput"),
                "clients",
                "ops/s",
                &throughput,
                true
            )
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
            line_chart(
                &format!("{workload}: latency percentiles, most clients"),
                "percentile",
                "ms",
                &latency,
                false
            )
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
                line_chart(
                    &format!("{workload}, most clients: resident memory of each node"),
                    "seconds",
                    "MiB",
                    &series,
                    false
                )
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
                (
                    format!(
                        "{} (kill at {:.1} s)",
                        a.protocol,
                        a.kill_at_ms as f64 / 1000.0
                    ),
                    points,
                )
            })
            .collect();
        let _ = write!(
            body,
            "<h2>Throughput over time across a leader kill</h2>{}",
            line_chart(
                "writes per second, leader SIGKILLed at a third of the run",
                "seconds",
                "ops/s",
                &series,
                false
            )
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
            line_chart(
                "writes per second, each node restarted in turn, 3 s apart",
                "seconds",
                "ops/s",
                &series,
                false
            )
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
