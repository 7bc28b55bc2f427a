//! A value over time as a standalone SVG line chart (the soak's server RSS), so that a long run
//! can be looked at, not only read as numbers.

use std::fmt::Write as _;

use crate::report::{nice_ceiling, svg_open, xml_escape};

/// `points` as (seconds, value) drawn as one line, with the axes labelled `y_label` and seconds.
/// The y axis starts at 0 so that a drift is seen at its true size.
pub fn svg(title: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 30.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let x_max = points.iter().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = nice_ceiling(points.iter().map(|p| p.1).fold(1e-9_f64, f64::max));
    let px = |x: f64| L + x / x_max * (W - L - R);
    let py = |y: f64| H - B - y / y_max * (H - T - B);
    let mut s = String::new();
    svg_open(&mut s, W, H, title);
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let y = py(v);
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
            trim(v)
        );
        let t = x_max * f64::from(i) / 5.0;
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##,
            H - B
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            H - B + 16.0,
            trim(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text>"#,
        (L + W - R) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0:.1}" text-anchor="middle" transform="rotate(-90 16 {0:.1})">{1}</text>"#,
        (T + H - B) / 2.0,
        xml_escape(y_label)
    );
    let mut d = String::new();
    for (i, (x, y)) in points.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if i == 0 { "" } else { " " },
            px(*x),
            py(*y)
        );
    }
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{d}"/>"##
    );
    s.push_str("</svg>\n");
    s
}

/// The same points as CSV (`seconds,<y_label>`), for a spreadsheet or another plotter.
pub fn csv(y_label: &str, points: &[(f64, f64)]) -> String {
    let mut s = format!("seconds,{y_label}\n");
    for (x, y) in points {
        let _ = writeln!(s, "{x},{y}");
    }
    s
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_with_a_point_per_sample_and_axes_from_zero() {
        let points = [(0.0, 31.5), (60.0, 33.9), (120.0, 34.1)];
        let svg = svg("RSS <soak>", "RSS (MiB)", &points);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        let line = svg
            .lines()
            .find(|l| l.starts_with("<polyline"))
            .expect("a polyline");
        assert_eq!(line.matches(',').count(), 3, "{line}");
        assert!(svg.contains("RSS &lt;soak&gt;"));
        assert!(svg.contains(">50<"), "y axis up to a round 50 MiB: {svg}");
        assert_eq!(csv("rss_mib", &points).lines().count(), 4);
    }
}
