//! What a run leaves behind: `summary.json`, `latency.hgrm`, `latency.svg`, and `compare`.
//!
//! Owns the summary's shape (its field names are the tool's output contract) and the two text
//! formats. Never touches the network.

use crate::scenario::Scenario;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarises a histogram recorded in µs.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The figures of one measured window (the whole run, or one step of a stepped run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Offered rate: publishes/s (fanout, topics) or pushes/s (upstream).
    pub rate: f64,
    /// Seconds measured.
    pub window_s: f64,
    /// Messages sent inside the window.
    pub sent: u64,
    /// Deliveries expected: each message once per subscriber of its topic (upstream: once).
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    /// Joined clients that the server disconnected during the window.
    pub dropped: u64,
    pub server_cpu_percent: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub load_cpu_percent: f64,
    pub load_cpu_us_per_delivery: Option<f64>,
    pub redis_cpu_percent: Option<f64>,
    pub redis_cpu_us_per_delivery: Option<f64>,
    /// Whether this window met the step thresholds (always true without stepping when nothing was lost).
    pub sustainable: bool,
    /// 1, or 2 when this window measured again a step whose first window failed (see `step_retries`).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Cluster kind: what each server process received from Redis during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_process: Option<Vec<ProcessReceived>>,
    /// Cluster kind: each Redis master's CPU during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_master: Option<Vec<MasterCpu>>,
}

/// What one server process of a cluster run received from Redis during a step: counted from
/// before the publisher starts (warmup included) to after the drain, against every message
/// published in that time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReceived {
    pub url: String,
    /// Topics this process serves (topic t is served by process t mod processes).
    pub topics: usize,
    /// Messages published in the step (warmup and window), to every topic.
    pub published: u64,
    /// Of those, the messages published to its topics: its share.
    pub own_published: u64,
    /// Increase of its `channel_redis_messages_received_total` over the step (None: the server
    /// has no such metric).
    pub received: Option<u64>,
    /// `received / own_published`: 1 when it receives only its topics' messages, `processes`
    /// when it receives every message.
    pub ratio_to_own_share: Option<f64>,
    /// `received / published`: the fraction of all the step's messages it received.
    pub share_of_all: Option<f64>,
}

/// One Redis master's CPU in a window of a cluster run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MasterCpu {
    /// `host:port`.
    pub addr: String,
    /// Topics whose slot this master serves (where their publishes were sent).
    pub topics: usize,
    /// Messages sent to it with a stamp inside the window.
    pub published: u64,
    /// `used_cpu_sys + used_cpu_user` increase over the window, in % of one core.
    pub cpu_percent: Option<f64>,
    /// That CPU per message sent to it, in µs.
    pub cpu_us_per_message: Option<f64>,
}

fn first_attempt() -> u32 {
    1
}

/// Everything a run measured. Absent figures are `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub kind: String,
    pub url: String,
    pub server_pid: Option<u32>,
    pub started_unix_s: u64,
    pub params: Option<Scenario>,
    pub clients: usize,
    pub joined: u64,
    pub join_failures: u64,
    pub joins_per_s: f64,
    pub join_latency: Latency,
    /// CPU per join (join-storm).
    pub server_cpu_us_per_join: Option<f64>,
    pub load_cpu_us_per_join: Option<f64>,
    /// The reported window: the run's, or the highest sustainable step's (else the first step's).
    pub window: Option<Window>,
    /// Stepped runs: every step, and the highest rate that met the thresholds.
    pub steps: Vec<Window>,
    pub highest_sustainable_rate: Option<f64>,
    /// Stepped runs: the steps whose first window failed and that were measured once more before
    /// the walk would stop, with the second window's outcome (both windows are in `steps`).
    #[serde(default)]
    pub step_retries: Vec<crate::step_search::StepRetry>,
    /// Idle: the server's RSS before connecting and with every client joined (the higher of
    /// the samples after the settle and at the end of the hold).
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_joined_bytes: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
    /// Idle: the same from the sample at the end of the hold alone, once what the joins left
    /// behind (presence copies, frames in flight) has had `duration` seconds to go.
    pub rss_per_connection_end_bytes: Option<f64>,
    pub server_cpu_percent_idle: Option<f64>,
    /// The server's highest RSS of the once-a-second progress samples, and its RSS at the end of
    /// the run (after the drain, clients still connected).
    pub server_rss_max_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    /// Fanout with `slow_clients`: what the slow consumers did and how the server closed them.
    pub slow: Option<crate::slow::SlowReport>,
    /// Why the first failing client failed, if one did.
    pub first_error: Option<String>,
}

fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(sigfig));
    largest.next_power_of_two()
}

/// HdrHistogram's percentile distribution text (as `outputPercentileDistribution` writes it), with
/// values recorded in µs printed in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let scale = 1000.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {sd:>12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// The plot's size and margins (px): width, height, left, right, top, bottom.
mod frame {
    pub const W: f64 = 800.0;
    pub const H: f64 = 480.0;
    pub const L: f64 = 70.0;
    pub const R: f64 = 45.0;
    pub const T: f64 = 40.0;
    pub const B: f64 = 50.0;
}

/// The axes' ranges: decades of 1/(1-p) and milliseconds.
struct Scale {
    x_max: f64,
    y_max: f64,
}

impl Scale {
    fn px(&self, x: f64) -> f64 {
        use frame::{L, R, W};
        L + x / self.x_max * (W - L - R)
    }

    fn py(&self, y: f64) -> f64 {
        use frame::{B, H, T};
        H - B - y / self.y_max * (H - T - B)
    }
}

/// A percentile plot (x: percentile on the usual 1/(1-p) log scale, y: latency in ms), one line per
/// series, as a standalone SVG document.
pub fn svg(title: &str, series: &[(String, &Histogram<u64>)]) -> String {
    use frame::{H, W};
    let (lines, scale) = percentile_lines(series);
    let mut s = String::new();
    svg_open(&mut s, W, H, title);
    grid_and_axes(&mut s, &scale);
    for (i, (name, pts)) in lines.iter().enumerate() {
        series_line(&mut s, &scale, i, name, pts);
    }
    s.push_str("</svg>\n");
    s
}

/// Each series as points (log10(1/(1-q)), ms), and the scale that holds them all. The last point
/// (q = 1) is drawn half a decade past the previous.
#[allow(clippy::type_complexity)]
/// Opens a standalone SVG document of `width` x `height` on white, with `title` on top (every
/// plot loadtest writes starts so).
pub(crate) fn svg_open(s: &mut String, width: f64, height: f64, title: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        xml_escape(title)
    );
}

/// One plotted line: its name and its points.
type NamedLine = (String, Vec<(f64, f64)>);

fn percentile_lines(series: &[(String, &Histogram<u64>)]) -> (Vec<NamedLine>, Scale) {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut x_max: f64 = 3.0;
    let mut y_max: f64 = 0.0;
    for (name, h) in series {
        let mut pts = Vec::new();
        if !h.is_empty() {
            let mut last_x = 0.0;
            for v in h.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                let x = if q < 1.0 {
                    (1.0 / (1.0 - q)).log10()
                } else {
                    last_x + 0.5
                };
                last_x = x;
                let y = v.value_iterated_to() as f64 / 1000.0;
                pts.push((x, y));
                x_max = x_max.max(x);
                y_max = y_max.max(y);
            }
        }
        lines.push((name.clone(), pts));
    }
    let scale = Scale {
        x_max: x_max.ceil(),
        y_max: nice_ceiling(y_max.max(0.001)),
    };
    (lines, scale)
}

/// The grid, the tick labels and the axis titles.
fn grid_and_axes(s: &mut String, scale: &Scale) {
    use frame::{B, H, L, R, T, W};
    for d in 0..=(scale.x_max as u32) {
        let x = scale.px(d as f64);
        let label = percentile_label(d);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            H - B
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            H - B + 16.0
        );
    }
    for i in 0..=5 {
        let v = scale.y_max * i as f64 / 5.0;
        let y = scale.py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - R
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 6.0,
            y + 4.0,
            fmt_ms(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (L + W - R) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms)</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
}

/// Series `i`: its polyline and its legend entry.
fn series_line(s: &mut String, scale: &Scale, i: usize, name: &str, pts: &[(f64, f64)]) {
    use frame::{L, T};
    const COLORS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let color = COLORS[i % COLORS.len()];
    let mut d = String::new();
    for (j, (x, y)) in pts.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if j == 0 { "" } else { " " },
            scale.px(*x),
            scale.py(*y)
        );
    }
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{d}"/>"#
    );
    let ly = T + 16.0 + 16.0 * i as f64;
    let _ = writeln!(
        s,
        r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{color}"/>"#,
        L + 12.0,
        ly - 5.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#,
        L + 30.0,
        xml_escape(name)
    );
}

fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".into(),
        1 => "90%".into(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

pub(crate) fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Numeric leaves of a JSON value with their dotted paths (`window.latency.p99_ms`, `steps.2.rate`).
pub fn numeric_leaves(v: &serde_json::Value) -> Vec<(String, f64)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.push((prefix.to_string(), f));
                }
            }
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{prefix}.{i}"), x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// Two summaries side by side: every numeric figure of either, with B/A.
pub fn compare(a: &serde_json::Value, b: &serde_json::Value, name_a: &str, name_b: &str) -> String {
    let la = numeric_leaves(a);
    let lb = numeric_leaves(b);
    let mut keys: Vec<&String> = la.iter().map(|(k, _)| k).collect();
    for (k, _) in &lb {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let get = |l: &[(String, f64)], k: &str| l.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(10).max(10);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>16}  {:>16}  {:>9}",
        "figure",
        short(name_a),
        short(name_b),
        "B/A"
    );
    let _ = writeln!(
        out,
        "{:<width$}  {:>16}  {:>16}  {:>9}",
        "",
        text_field(a, "scenario"),
        text_field(b, "scenario"),
        ""
    );
    for k in keys {
        let (va, vb) = (get(&la, k), get(&lb, k));
        let ratio = match (va, vb) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:.3}", y / x),
            (Some(x), Some(y)) if x == y => "1.000".into(),
            _ => "-".into(),
        };
        let f = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "{k:<width$}  {:>16}  {:>16}  {ratio:>9}", f(va), f(vb));
    }
    out
}

fn text_field(v: &serde_json::Value, k: &str) -> String {
    short(v.get(k).and_then(|x| x.as_str()).unwrap_or(""))
}

fn short(s: &str) -> String {
    if s.chars().count() > 16 {
        let tail: String = s
            .chars()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    } else {
        s.to_string()
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Writes `summary.json`, `latency.hgrm` and `latency.svg` into `dir`.
pub fn write_outputs(
    dir: &std::path::Path,
    summary: &Summary,
    hist: &Histogram<u64>,
    plot: &[(String, &Histogram<u64>)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(summary)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    std::fs::write(dir.join("latency.hgrm"), hgrm(hist))?;
    let title = format!("{} ({}) — {}", summary.scenario, summary.kind, summary.url);
    std::fs::write(dir.join("latency.svg"), svg(&title, plot))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 10).unwrap(); // 10 µs .. 100 ms
        }
        h
    }

    #[test]
    fn hgrm_has_the_standard_header_lines_and_footer() {
        let text = hgrm(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert!(
            lines[2].starts_with("       0.010 0.000000000000          1           1.00"),
            "{}",
            lines[2]
        );
        let footer = &lines[lines.len() - 3..];
        assert!(
            footer[0].starts_with("#[Mean    =       50.006, StdDeviation   ="),
            "{}",
            footer[0]
        );
        assert!(
            footer[1].starts_with("#[Max     =      100.031, Total count    =        10000]"),
            "{}",
            footer[1]
        );
        assert_eq!(
            footer[2],
            "#[Buckets =           22, SubBuckets     =         2048]"
        );
    }

    #[test]
    fn hgrm_lines_are_monotonic_and_end_at_the_total() {
        let text = hgrm(&sample());
        let body: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        assert!(body.len() > 50);
        for w in body.windows(2) {
            assert!(w[1][0] >= w[0][0] && w[1][1] >= w[0][1] && w[1][2] >= w[0][2]);
        }
        let last = body.last().unwrap();
        assert_eq!(last.len(), 3, "the last line has no 1/(1-p) column");
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 10_000.0);
    }

    #[test]
    fn empty_histogram_still_writes_a_valid_file() {
        let text = hgrm(&new_histogram());
        assert!(text.contains("Total count    =            0"));
    }

    #[test]
    fn latency_summary_is_in_ms() {
        let l = Latency::of(&sample());
        assert_eq!(l.count, 10_000);
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.1, "{l:?}");
        assert!(l.max_ms >= 100.0);
    }

    #[test]
    fn svg_is_well_formed_and_has_one_line_per_series() {
        let h = sample();
        let s = svg("a <b>", &[("run 1".into(), &h), ("run 2".into(), &h)]);
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a &lt;b&gt;"));
        assert!(s.contains("99.9%"));
    }

    #[test]
    fn percentile_labels_follow_the_decades() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(4), "99.99%");
    }

    #[test]
    fn compare_prints_ratios_of_matching_figures() {
        let a = serde_json::json!({"scenario":"fanout","window":{"deliveries_per_s":1000.0,"latency":{"p99_ms":20.0}},"joined":5});
        let b = serde_json::json!({"scenario":"fanout","window":{"deliveries_per_s":3000.0,"latency":{"p99_ms":5.0}},"extra":1});
        let out = compare(&a, &b, "a.json", "b.json");
        let line = |k: &str| out.lines().find(|l| l.starts_with(k)).unwrap().to_string();
        assert!(
            line("window.deliveries_per_s")
                .trim_end()
                .ends_with("3.000"),
            "{out}"
        );
        assert!(
            line("window.latency.p99_ms").trim_end().ends_with("0.250"),
            "{out}"
        );
        assert!(line("joined").trim_end().ends_with("-"), "{out}");
        assert!(line("extra").contains('-'), "{out}");
    }

    #[test]
    fn summary_round_trips_through_json() {
        let s = Summary {
            scenario: "x".into(),
            window: Some(Window {
                rate: 5.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let j = serde_json::to_string(&s).unwrap();
        let back: Summary = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
        let leaves = numeric_leaves(&serde_json::to_value(&s).unwrap());
        assert!(leaves.iter().any(|(k, v)| k == "window.rate" && *v == 5.0));
    }
}
