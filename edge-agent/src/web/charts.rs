//! Bar charts drawn by the server as inline SVG: nothing to download, nothing to run in the
//! browser, and they scale to a phone's width. Colours are SVG attributes, not styles, so the
//! page's content security policy needs no `unsafe-inline`.

use maud::{html, Markup, PreEscaped};

use crate::base::svg::{Svg, PALETTE};

// A small canvas, so text stays readable when a phone scales the chart down.
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 6.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;

pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// How bars of several series share a day: on top of each other, or side by side.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Stacked,
    Grouped,
}

/// The smallest "nice" number (1, 2 or 5 times a power of ten) at or above `value`.
fn nice_step(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|s| *s >= value).unwrap_or(10.0 * power)
}

fn format_tick(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{}", value as i64)
    } else {
        format!("{value:.1}")
    }
}

/// A bar chart over `labels` (one slot each) with a legend; `title` is also its accessible name.
pub fn bar_chart(title: &str, labels: &[String], series: &[Series], layout: Layout) -> Markup {
    let slots = labels.len().max(1);
    let highest = (0..slots)
        .map(|i| {
            let values = series.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0));
            match layout {
                Layout::Stacked => values.sum::<f64>(),
                Layout::Grouped => values.fold(0.0, f64::max),
            }
        })
        .fold(0.0, f64::max);
    let step = nice_step(highest / 4.0);
    let top_value = (highest / step).ceil().max(1.0) * step;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot_width = plot_width / slots as f64;
    let y = |value: f64| TOP + plot_height * (1.0 - value / top_value);
    let label_every = slots.div_ceil(7);
    let ticks: Vec<f64> = (0..=((top_value / step).round() as usize)).map(|i| i as f64 * step).collect();
    let mut svg = Svg::in_page(WIDTH, HEIGHT, title);
    for tick in &ticks {
        let y = y(*tick);
        svg.shape(
            "line",
            &[
                ("x1", &LEFT),
                ("x2", &(WIDTH - RIGHT)),
                ("y1", &y),
                ("y2", &y),
                ("stroke", &"#e5e7eb"),
                ("stroke-width", &"1"),
            ],
        );
        svg.text(
            "text",
            &[
                ("x", &(LEFT - 6.0)),
                ("y", &(y + 4.0)),
                ("text-anchor", &"end"),
                ("font-size", &"13"),
                ("fill", &"#6b7280"),
            ],
            &format_tick(*tick),
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let slot_left = LEFT + slot_width * i as f64;
        let mut stacked = 0.0;
        let group_width = slot_width * 0.7 / series.len().max(1) as f64;
        for (s, one) in series.iter().enumerate() {
            let value = one.values.get(i).copied().unwrap_or(0.0);
            if value <= 0.0 {
                continue;
            }
            let (x, width, bottom) = match layout {
                Layout::Stacked => (slot_left + slot_width * 0.15, slot_width * 0.7, stacked),
                Layout::Grouped => (slot_left + slot_width * 0.15 + group_width * s as f64, group_width, 0.0),
            };
            let top = bottom + value;
            if layout == Layout::Stacked {
                stacked = top;
            }
            let (top_y, height) = (y(top), (y(bottom) - y(top)).max(0.5));
            svg.titled(
                "rect",
                &[
                    ("class", &"bar"),
                    ("x", &format_args!("{x:.1}")),
                    ("y", &format_args!("{top_y:.1}")),
                    ("width", &format_args!("{width:.1}")),
                    ("height", &format_args!("{height:.1}")),
                    ("fill", &PALETTE[s % PALETTE.len()]),
                ],
                &format_args!("{label} · {}: {}", one.name, format_tick(value)),
            );
        }
    }
    for (i, label) in labels.iter().enumerate().filter(|(i, _)| i % label_every == 0) {
        let x = LEFT + slot_width * (i as f64 + 0.5);
        svg.text(
            "text",
            &[
                ("x", &format_args!("{x:.1}")),
                ("y", &(HEIGHT - 7.0)),
                ("text-anchor", &"middle"),
                ("font-size", &"13"),
                ("fill", &"#374151"),
            ],
            label,
        );
    }
    let base = y(0.0);
    svg.shape(
        "line",
        &[
            ("x1", &LEFT),
            ("x2", &(WIDTH - RIGHT)),
            ("y1", &base),
            ("y2", &base),
            ("stroke", &"#9ca3af"),
            ("stroke-width", &"1"),
        ],
    );
    html! {
        figure.chart {
            figcaption { (title) }
            (PreEscaped(svg.finish()))
            @if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
                ul.legend {
                    @for (s, one) in series.iter().enumerate() {
                        li {
                            svg.swatch width="12" height="12" viewBox="0 0 12 12" aria-hidden="true" {
                                rect width="12" height="12" rx="2" fill=(PALETTE[s % PALETTE.len()]) {}
                            }
                            (one.name)
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round_numbers() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn a_stacked_chart_has_one_bar_per_nonzero_value_and_a_legend() {
        let labels = vec!["05-01".to_string(), "05-02".to_string()];
        let series = vec![
            Series { name: "object".into(), values: vec![3.0, 0.0] },
            Series { name: "litter<x>".into(), values: vec![1.0, 2.0] },
        ];
        let svg = bar_chart("Events", &labels, &series, Layout::Stacked).into_string();
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 3, "{svg}");
        assert!(svg.contains("litter&lt;x&gt;"), "names are escaped");
        assert!(!svg.contains("style="), "no inline styles: {svg}");
        assert!(svg.contains("05-02"));
    }
}
