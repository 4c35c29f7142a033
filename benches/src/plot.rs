//! Plots for the report: a benchmark saves a [`Series`] (lines of points and vertical
//! markers) under `target/bench-report/series/`, and [`write_all`] draws every saved series
//! as `<name>.svg` beside the JSON figures, so a report run benchmark by benchmark still
//! gets every plot.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::report::report_dir;

/// One line of a plot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A vertical line at `x` with a label (e.g. "member killed").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

/// What a plot shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Draw x on a log scale (flow counts).
    #[serde(default)]
    pub log_x: bool,
    pub lines: Vec<Line>,
    #[serde(default)]
    pub markers: Vec<Marker>,
}

fn series_dir() -> PathBuf {
    report_dir().join("series")
}

/// Saves `series` as `series/<name>.json` in the report directory.
pub fn save(name: &str, series: &Series) -> anyhow::Result<PathBuf> {
    let dir = series_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(series)?)?;
    Ok(path)
}

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// The x and y ranges that hold every point and marker, with a margin above.
fn bounds(s: &Series) -> ((f64, f64), (f64, f64)) {
    let xs = s
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .chain(s.markers.iter().map(|m| m.x));
    let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let y1 = s
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.15 } else { 1.0 };
    ((x0, x1), (0.0, y1))
}

/// A tick label: whole numbers without a fraction.
fn tick(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x:.1}")
    }
}

/// Draws `s` into an SVG file at `path`.
pub fn draw(s: &Series, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ((x0, x1), (y0, y1)) = bounds(s);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&s.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64);
    // Whole numbers (members) get one tick each when there are few.
    let whole = s
        .lines
        .iter()
        .flat_map(|l| &l.points)
        .all(|p| p.0.fract() == 0.0);
    let x_labels = if whole && !s.log_x && x1 - x0 <= 30.0 {
        (x1 - x0) as usize + 1
    } else {
        10
    };
    // The two scales are different types; one macro draws on either chart.
    macro_rules! render {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_labels(x_labels)
                .x_label_formatter(&|x| tick(*x))
                .x_desc(s.x_label.as_str())
                .y_desc(s.y_label.as_str())
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (i, m) in s.markers.iter().enumerate() {
                // Labels one under another, so markers close together stay readable.
                let y = y1 * (0.97 - 0.05 * i as f64);
                chart
                    .draw_series(LineSeries::new(
                        [(m.x, y0), (m.x, y)],
                        BLACK.mix(0.5).stroke_width(1),
                    ))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        m.label.clone(),
                        (m.x, y),
                        ("sans-serif", 14),
                    )))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            for (i, l) in s.lines.iter().enumerate() {
                let c = COLOURS[i % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .label(l.label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                if l.points.len() <= 40 {
                    chart
                        .draw_series(l.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }};
    }
    if s.log_x && x0 > 0.0 {
        render!(builder.build_cartesian_2d((x0..x1 * 1.5).log_scale(), y0..y1));
    } else {
        let pad = (x1 - x0) * 0.03;
        render!(builder.build_cartesian_2d(x0 - pad..x1 + pad, y0..y1));
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Draws every saved series as `<name>.svg` in the report directory; returns the files.
pub fn write_all() -> anyhow::Result<Vec<PathBuf>> {
    let dir = series_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let s: Series = serde_json::from_str(&std::fs::read_to_string(&p)?)
            .with_context(|| format!("reading {}", p.display()))?;
        let name = p.file_stem().context("series name")?.to_string_lossy();
        let svg = report_dir().join(format!("{name}.svg"));
        draw(&s, &svg).with_context(|| format!("drawing {}", svg.display()))?;
        out.push(svg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(log_x: bool) -> Series {
        Series {
            title: "throughput vs flows".into(),
            x_label: "flows".into(),
            y_label: "Mpps".into(),
            log_x,
            lines: vec![
                Line {
                    label: "baton member".into(),
                    points: vec![(1.0, 0.5), (100.0, 0.48), (1e6, 0.2)],
                },
                Line {
                    label: "minimal forwarder".into(),
                    points: vec![(1.0, 0.9), (100.0, 0.9), (1e6, 0.88)],
                },
            ],
            markers: vec![Marker {
                x: 100.0,
                label: "marker".into(),
            }],
        }
    }

    #[test]
    fn a_series_draws_every_line_and_label() {
        for log_x in [false, true] {
            let dir = std::env::temp_dir().join(format!("baton-plot-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("t{log_x}.svg"));
            draw(&sample(log_x), &path).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            assert!(svg.starts_with("<svg"), "{svg}");
            for text in [
                "throughput vs flows",
                "baton member",
                "minimal forwarder",
                "marker",
                "Mpps",
            ] {
                assert!(svg.contains(text), "{text} missing (log_x {log_x})");
            }
            // Two lines: two polylines at least.
            assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        }
    }

    #[test]
    fn bounds_hold_every_point_and_marker() {
        let s = sample(false);
        let ((x0, x1), (y0, y1)) = bounds(&s);
        assert_eq!((x0, x1, y0), (1.0, 1e6, 0.0));
        assert!(y1 > 0.9);
        let empty = Series {
            lines: vec![],
            markers: vec![],
            ..s
        };
        assert_eq!(bounds(&empty), ((0.0, 1.0), (0.0, 1.0)));
    }
}
