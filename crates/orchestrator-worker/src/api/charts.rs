//! Per-runner daily statistics and the SVG charts drawn from them on the
//! server: pass rate, and p50/p95 test duration, per day for 30 days.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::store::{ExecState, ExecutionRecord};

/// Days on a chart.
pub const DAYS: u64 = 30;
const DAY_MS: u64 = 86_400_000;

/// One runner's day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    /// Settled executions.
    pub settled: u32,
    /// Of them, passed.
    pub passed: u32,
    /// Test durations (ms) of those with a result, sorted.
    pub durations: Vec<u64>,
}

impl Day {
    /// Passed over settled, if any settled.
    pub fn pass_rate(&self) -> Option<f64> {
        (self.settled > 0).then(|| f64::from(self.passed) / f64::from(self.settled))
    }

    /// The `q` quantile (nearest rank) of the durations.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.durations.is_empty() {
            return None;
        }
        let rank =
            ((q * self.durations.len() as f64).ceil() as usize).clamp(1, self.durations.len());
        Some(self.durations[rank - 1])
    }
}

/// Runner → the last [`DAYS`] days (index 0 the oldest, ending today).
pub fn daily(records: &[ExecutionRecord], now_ms: u64) -> BTreeMap<String, Vec<Day>> {
    let today = now_ms / DAY_MS;
    let mut out: BTreeMap<String, Vec<Day>> = BTreeMap::new();
    for r in records {
        if !r.state.is_settled() {
            continue;
        }
        let at = r.settled_ms.unwrap_or(r.updated_ms) / DAY_MS;
        if at > today || today - at >= DAYS {
            continue;
        }
        let days = out
            .entry(r.new.runner.clone())
            .or_insert_with(|| vec![Day::default(); DAYS as usize]);
        let day = &mut days[(DAYS - 1 - (today - at)) as usize];
        day.settled += 1;
        if r.state == ExecState::Passed {
            day.passed += 1;
        }
        if let Some(result) = &r.result {
            day.durations.push(result.duration_ms);
        }
    }
    for days in out.values_mut() {
        for d in days {
            d.durations.sort_unstable();
        }
    }
    out
}

const W: f64 = 620.0;
const H: f64 = 160.0;
const LEFT: f64 = 50.0;
const BOTTOM: f64 = 20.0;

fn x_of(i: usize) -> f64 {
    LEFT + (W - LEFT - 10.0) * (i as f64 + 0.5) / DAYS as f64
}

fn frame(svg: &mut String, title: &str, top_label: &str) {
    let _ = write!(
        svg,
        "<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{W}' height='{H}' viewBox='0 0 {W} {H}' role='img'><title>{title}</title>\
         <line x1='{LEFT}' y1='10' x2='{LEFT}' y2='{}' stroke='#888'/>\
         <line x1='{LEFT}' y1='{}' x2='{}' y2='{}' stroke='#888'/>\
         <text x='{}' y='14' font-size='10' text-anchor='end'>{top_label}</text>\
         <text x='{}' y='{}' font-size='10' text-anchor='end'>0</text>\
         <text x='{LEFT}' y='{}' font-size='10'>-{} d</text><text x='{}' y='{}' font-size='10' text-anchor='end'>today</text>",
        H - BOTTOM,
        H - BOTTOM,
        W - 10.0,
        H - BOTTOM,
        LEFT - 4.0,
        LEFT - 4.0,
        H - BOTTOM,
        H - 4.0,
        DAYS - 1,
        W - 10.0,
        H - 4.0
    );
}

/// Bars of the daily pass rate (0-100 %).
pub fn pass_rate_svg(runner: &str, days: &[Day]) -> String {
    let mut svg = String::new();
    frame(
        &mut svg,
        &format!("{} pass rate per day", escape(runner)),
        "100%",
    );
    let plot = H - BOTTOM - 10.0;
    let bar = (W - LEFT - 10.0) / DAYS as f64 * 0.7;
    for (i, d) in days.iter().enumerate() {
        if let Some(rate) = d.pass_rate() {
            let h = (plot * rate).max(1.0);
            let colour = if rate >= 0.95 {
                "#2e7d32"
            } else if rate >= 0.7 {
                "#f9a825"
            } else {
                "#c62828"
            };
            let _ = write!(
                svg,
                "<rect x='{:.1}' y='{:.1}' width='{bar:.1}' height='{h:.1}' fill='{colour}'><title>{:.0}% of {}</title></rect>",
                x_of(i) - bar / 2.0,
                H - BOTTOM - h,
                rate * 100.0,
                d.settled
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Lines of the daily p50 and p95 test duration.
pub fn duration_svg(runner: &str, days: &[Day]) -> String {
    let max = days
        .iter()
        .filter_map(|d| d.quantile(0.95))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut svg = String::new();
    frame(
        &mut svg,
        &format!("{} p50 and p95 duration per day", escape(runner)),
        &format!("{:.1}s", max / 1000.0),
    );
    let plot = H - BOTTOM - 10.0;
    for (q, colour, label) in [(0.5, "#1565c0", "p50"), (0.95, "#ef6c00", "p95")] {
        let points: Vec<String> = days
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                d.quantile(q)
                    .map(|v| format!("{:.1},{:.1}", x_of(i), H - BOTTOM - plot * v as f64 / max))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = write!(
            svg,
            "<polyline fill='none' stroke='{colour}' stroke-width='2' points='{}'/>",
            points.join(" ")
        );
        for p in &points {
            if let Some((x, y)) = p.split_once(',') {
                let _ = write!(svg, "<circle cx='{x}' cy='{y}' r='2.5' fill='{colour}'/>");
            }
        }
        let y = if label == "p50" { 26.0 } else { 38.0 };
        let _ = write!(
            svg,
            "<text x='{}' y='{y}' font-size='10' fill='{colour}'>{label}</text>",
            LEFT + 6.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rates() {
        let d = Day {
            settled: 4,
            passed: 3,
            durations: vec![10, 20, 30, 40],
        };
        assert_eq!(d.pass_rate(), Some(0.75));
        assert_eq!(d.quantile(0.5), Some(20));
        assert_eq!(d.quantile(0.95), Some(40));
        assert_eq!(Day::default().quantile(0.5), None);
        let svg = duration_svg("<x>", &[d]);
        assert!(
            svg.contains("&lt;x&gt;") && svg.contains("polyline"),
            "{svg}"
        );
    }
}
