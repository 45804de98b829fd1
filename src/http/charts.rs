//! Charts drawn on the server as SVG: no script and no image service, readable in any browser, and
//! testable as text.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

/// One series of a bar chart: a value per bucket.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub values: &'a [i64],
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 10.0;

/// Grouped bars: one group per bucket (named by `labels`, every `label_every`-th shown under the axis),
/// one bar per series in each group, scaled to the largest value. Each bar names its value on hover.
pub fn bars(labels: &[String], label_every: usize, series: &[Series<'_>]) -> Markup {
    let n = labels.len().max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let group = plot_w / n as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    let base = TOP + plot_h;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(HEIGHT)
            viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" {
            line x1=(LEFT) y1=(base) x2=(WIDTH) y2=(base) stroke="#999" {}
            text x=(LEFT - 4.0) y=(TOP + 10.0) text-anchor="end" font-size="11" { (max) }
            text x=(LEFT - 4.0) y=(base) text-anchor="end" font-size="11" { "0" }
            @for (i, label) in labels.iter().enumerate() {
                @for (k, s) in series.iter().enumerate() {
                    @let v = s.values.get(i).copied().unwrap_or(0);
                    @if v > 0 {
                        @let h = v as f64 / max as f64 * plot_h;
                        rect.bar x=(fmt(LEFT + group * i as f64 + group * 0.1 + bar * k as f64))
                            y=(fmt(base - h)) width=(fmt(bar)) height=(fmt(h)) fill=(s.color) {
                            title { (label) " · " (s.label) ": " (v) }
                        }
                    }
                }
                @if label_every > 0 && i % label_every == 0 {
                    text x=(fmt(LEFT + group * i as f64)) y=(HEIGHT - 5.0) font-size="10" { (label) }
                }
            }
        }
        p.legend {
            @for s in series {
                span { svg width="10" height="10" { rect width="10" height="10" fill=(s.color) {} } " " (s.label) }
                " "
            }
        }
    }
}

/// One bar of a [`timeline`]: an attempt (or a wait) of the step in lane `lane`.
pub struct Span {
    pub lane: usize,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub color: &'static str,
    pub title: String,
}

const LANE: f64 = 22.0;
const NAMES: f64 = 140.0;

/// A lane per step, a bar per span, on one time axis from the first start to `now` (or the last end).
/// A bar is at least 2 px wide, so that an attempt of milliseconds still shows.
pub fn timeline(lanes: &[String], spans: &[Span], now: DateTime<Utc>) -> Markup {
    let from = spans.iter().map(|s| s.start).min().unwrap_or(now);
    let to = spans.iter().map(|s| s.end).max().unwrap_or(now).max(now);
    let total = (to - from).num_milliseconds().max(1) as f64;
    let plot = WIDTH - NAMES;
    let x = |t: DateTime<Utc>| NAMES + (t - from).num_milliseconds().max(0) as f64 / total * plot;
    let height = LANE * lanes.len() as f64 + 16.0;
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height)
            viewBox={ "0 0 " (WIDTH) " " (height) } role="img" {
            @for (i, name) in lanes.iter().enumerate() {
                text x="0" y=(fmt(LANE * i as f64 + 15.0)) font-size="12" { (name) }
                line x1=(NAMES) y1=(fmt(LANE * (i + 1) as f64)) x2=(WIDTH)
                    y2=(fmt(LANE * (i + 1) as f64)) stroke="#eee" {}
            }
            @for s in spans {
                rect.span x=(fmt(x(s.start))) y=(fmt(LANE * s.lane as f64 + 4.0))
                    width=(fmt((x(s.end) - x(s.start)).max(2.0))) height=(fmt(LANE - 8.0))
                    fill=(s.color) {
                    title { (s.title) }
                }
            }
            text x=(NAMES) y=(fmt(height - 2.0)) font-size="10" { (from.format("%H:%M:%S")) }
            text x=(WIDTH) y=(fmt(height - 2.0)) font-size="10" text-anchor="end" { (to.format("%H:%M:%S")) }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heights(svg: &str) -> Vec<f64> {
        svg.split("<rect class=\"bar\"")
            .skip(1)
            .map(|r| {
                let h = r.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn the_largest_value_fills_the_plot_and_zero_draws_nothing() {
        let labels: Vec<String> = (0..3).map(|h| format!("{h:02}h")).collect();
        let svg = bars(
            &labels,
            1,
            &[
                Series {
                    label: "signups",
                    color: "#2563eb",
                    values: &[4, 0, 2],
                },
                Series {
                    label: "activations",
                    color: "#16a34a",
                    values: &[1, 0, 0],
                },
            ],
        )
        .into_string();
        let h = heights(&svg);
        assert_eq!(h.len(), 3, "one bar per non-zero value: {svg}");
        let plot = HEIGHT - TOP - BOTTOM;
        assert_eq!(h[0], plot, "4 is the largest");
        assert_eq!(h[1], plot / 4.0, "activations 1 of 4");
        assert_eq!(h[2], plot / 2.0);
        assert!(svg.contains("<title>00h · signups: 4</title>"), "{svg}");
        assert!(svg.contains(">02h<"), "{svg}");
    }

    #[test]
    fn a_timeline_places_spans_in_their_lanes_in_proportion_to_time() {
        let t0 = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: i64| t0 + chrono::TimeDelta::seconds(s);
        let lanes = vec!["create_account".to_owned(), "await_account".to_owned()];
        let spans = [
            Span {
                lane: 0,
                start: at(0),
                end: at(10),
                color: "#16a34a",
                title: "attempt 1".into(),
            },
            Span {
                lane: 1,
                start: at(10),
                end: at(10),
                color: "#d97706",
                title: "poll".into(),
            },
        ];
        let svg = timeline(&lanes, &spans, at(40)).into_string();
        let plot = WIDTH - NAMES;
        // The first span is a quarter of the 40 s axis, from its start; the second is an instant,
        // drawn 2 px wide, in the second lane.
        assert!(
            svg.contains(&format!(
                r#"x="{}" y="4.0" width="{}""#,
                fmt(NAMES),
                fmt(plot / 4.0)
            )),
            "{svg}"
        );
        assert!(
            svg.contains(&format!(
                r#"x="{}" y="26.0" width="2.0""#,
                fmt(NAMES + plot / 4.0)
            )),
            "{svg}"
        );
        assert!(
            svg.contains(">10:00:00<") && svg.contains(">10:00:40<"),
            "{svg}"
        );
    }

    #[test]
    fn an_empty_window_draws_an_axis_and_no_bars() {
        let svg = bars(
            &[],
            1,
            &[Series {
                label: "signups",
                color: "#000",
                values: &[],
            }],
        )
        .into_string();
        assert!(heights(&svg).is_empty());
        assert!(svg.contains("<line"));
    }
}
