//! Figures and the JSON report.

use std::path::PathBuf;

use serde::Serialize;

/// One measured figure beside its baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub baseline_median: f64,
    /// ours / baseline (medians).
    pub ratio: f64,
    pub samples: usize,
    pub goal: String,
}

/// Median, min and max of `v` (not empty).
pub fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

pub fn figure(name: &str, unit: &str, ours: &[f64], baseline: &[f64], goal: &str) -> Figure {
    let (median, min, max) = summary(ours);
    let (baseline_median, _, _) = summary(baseline);
    Figure {
        name: name.into(),
        unit: unit.into(),
        median,
        min,
        max,
        baseline_median,
        ratio: median / baseline_median,
        samples: ours.len(),
        goal: goal.into(),
    }
}

pub fn report_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/bench-report"
    ))
}

/// Writes `<name>.json` in the report directory.
pub fn write(name: &str, figures: &[Figure]) -> anyhow::Result<PathBuf> {
    let dir = report_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(figures)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        let f = figure("x", "ns", &[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0], "");
        assert_eq!(f.ratio, 2.0);
    }
}
