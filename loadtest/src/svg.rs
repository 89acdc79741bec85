//! An SVG plot of one or more runs, to open in a browser: latency percentiles (p50
//! dashed, p99 solid) per second over the run, and the latency distribution as a
//! percentile spectrum (x: 0 to 99.99 %, log scale towards the tail).

use std::fmt::Write;

use crate::tally::Report;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 330.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// Renders `runs` (label, report) under `title`.
pub fn render(title: &str, runs: &[(&str, &Report)]) -> String {
    let mut svg = String::new();
    let height = 80.0 + 2.0 * (PANEL + 50.0);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="16">{}</text>"#,
        escape(title)
    );
    for (i, (label, report)) in runs.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="44" fill="{}">■ {} ({:.0} req/s, p99 {:.2} ms)</text>"#,
            LEFT + 260.0 * i as f64,
            COLORS[i % COLORS.len()],
            escape(label),
            report.throughput,
            report.latency.p99_ms
        );
    }
    over_time(&mut svg, 80.0, runs);
    spectrum(&mut svg, 80.0 + PANEL + 50.0, runs);
    svg.push_str("</svg>\n");
    svg
}

fn over_time(svg: &mut String, top: f64, runs: &[(&str, &Report)]) {
    let seconds = runs
        .iter()
        .map(|(_, r)| r.per_second.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let y_max = nice(
        runs.iter()
            .flat_map(|(_, r)| r.per_second.iter().map(|p| p.p99_ms))
            .fold(0.0, f64::max),
    );
    let x = |s: f64| LEFT + (WIDTH - LEFT - RIGHT) * s / seconds as f64;
    let y = |ms: f64| top + PANEL - PANEL * ms / y_max;
    axes(
        svg,
        top,
        y_max,
        "latency per second of the run (ms): p50 dashed, p99 solid",
    );
    for s in 0..=seconds {
        if seconds <= 20 || s % (seconds / 10).max(1) == 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{s}s</text>"#,
                x(s as f64),
                top + PANEL + 16.0
            );
        }
    }
    for (i, (_, report)) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (dash, pick) in [
            (
                "6,4",
                (|p: &crate::tally::Percentiles| p.p50_ms) as fn(&_) -> f64,
            ),
            ("", |p| p.p99_ms),
        ] {
            let points: Vec<String> = report
                .per_second
                .iter()
                .enumerate()
                .filter(|(_, p)| p.count > 0)
                .map(|(s, p)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(pick(p))))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
                points.join(" ")
            );
        }
    }
}

/// Percentile `p` (0 to 99.99) on a log scale of 1 / (1 − p): 0, 90, 99, 99.9, 99.99
/// equally spaced.
fn tail_position(p: f64) -> f64 {
    (1.0 / (1.0 - (p / 100.0).min(0.9999))).log10() / 4.0
}

fn spectrum(svg: &mut String, top: f64, runs: &[(&str, &Report)]) {
    let y_max = nice(
        runs.iter()
            .flat_map(|(_, r)| {
                r.spectrum
                    .iter()
                    .filter(|(p, _)| *p < 100.0)
                    .map(|(_, ms)| *ms)
            })
            .fold(0.0, f64::max),
    );
    let x = |p: f64| LEFT + (WIDTH - LEFT - RIGHT) * tail_position(p);
    let y = |ms: f64| top + PANEL - PANEL * (ms / y_max).min(1.0);
    axes(svg, top, y_max, "latency by percentile (ms)");
    for p in [0.0, 50.0, 90.0, 99.0, 99.9, 99.99] {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{p}%</text>"#,
            x(p),
            top + PANEL + 16.0
        );
    }
    for (i, (_, report)) in runs.iter().enumerate() {
        let points: Vec<String> = report
            .spectrum
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, ms)| format!("{:.1},{:.1}", x(*p), y(*ms)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLORS[i % COLORS.len()],
            points.join(" ")
        );
    }
}

fn axes(svg: &mut String, top: f64, y_max: f64, title: &str) {
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}">{}</text><rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{PANEL}" fill="none" stroke="#888"/>"##,
        top - 6.0,
        escape(title),
        WIDTH - LEFT - RIGHT
    );
    for k in 0..=4 {
        let ms = y_max * f64::from(k) / 4.0;
        let y = top + PANEL - PANEL * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            trim(ms)
        );
    }
}

/// A round axis maximum at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * magnitude)
}

fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::{Answer, Tally};
    use std::time::Duration;

    #[test]
    fn plots_both_panels_for_every_run() {
        let mut t = Tally::new();
        for ms in 1..=300u64 {
            t.answer(&Answer {
                request: "r",
                latency: Duration::from_millis(ms % 17 + 1),
                at: Duration::from_millis(ms * 10),
                status: http::StatusCode::OK,
                node: None,
                refused: None,
                timing: None,
                expected: true,
            });
        }
        let report = t.report(Duration::from_secs(3));
        let svg = render("a <test>", &[("one", &report), ("two", &report)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;"));
        // Per run: a p50 and a p99 line over time, and one spectrum line.
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(0.42), 0.5);
        assert!((tail_position(99.0) - 0.5).abs() < 1e-9);
    }
}
