//! Figures and the JSON report.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One measured figure beside its baseline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        f64::midpoint(s[mid - 1], s[mid])
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

/// The Markdown table of every figure in `reports` (benchmark name, its figures).
pub fn markdown(reports: &[(String, Vec<Figure>)]) -> String {
    let mut s = String::from(
        "# Baton benchmark report\n\nEvery figure beside its baseline, measured in the same run \
         (medians; ratio = ours / baseline). Goals are reported, not gated.\n\n\
         | benchmark | figure | unit | median | min | max | baseline | ratio | samples | goal |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (bench, figures) in reports {
        for f in figures {
            let _ = writeln!(
                s,
                "| {bench} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} |",
                f.name,
                f.unit,
                f.median,
                f.min,
                f.max,
                f.baseline_median,
                f.ratio,
                f.samples,
                f.goal
            );
        }
    }
    s
}

/// Writes `summary.md` from every `<name>.json` in the report directory. A figure whose
/// ratio has no value (a zero baseline) was written as null: it shows as NaN.
pub fn write_summary() -> anyhow::Result<PathBuf> {
    let dir = report_dir();
    let mut reports = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    for p in names {
        let values: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let figures = values
            .iter()
            .map(|v| Figure {
                name: v["name"].as_str().unwrap_or("?").into(),
                unit: v["unit"].as_str().unwrap_or("").into(),
                median: num(v, "median"),
                min: num(v, "min"),
                max: num(v, "max"),
                baseline_median: num(v, "baseline_median"),
                ratio: num(v, "ratio"),
                samples: v["samples"].as_u64().unwrap_or(0) as usize,
                goal: v["goal"].as_str().unwrap_or("").into(),
            })
            .collect();
        let name = p
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        reports.push((name, figures));
    }
    let mut md = markdown(&reports);
    let mut plots: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        // The bench writes these files itself, named in lower case.
        .filter(|n| {
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            n.ends_with(".svg")
        })
        .collect();
    plots.sort();
    if !plots.is_empty() {
        md += "\n## Plots\n\n";
        for p in plots {
            let _ = write!(md, "![{p}]({p})\n\n");
        }
    }
    let path = dir.join("summary.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_every_figure() {
        let f = figure("sgm_throughput", "mpps", &[2.0], &[4.0], "ratio ≥ 0.8");
        let md = markdown(&[("sgm".into(), vec![f.clone()])]);
        assert!(md.contains("| sgm | sgm_throughput | mpps | 2.000 | 2.000 | 2.000 | 4.000 | 0.50 | 1 | ratio ≥ 0.8 |"), "{md}");
        // A ratio without a value (0/0) is written as null and read back as NaN.
        let dir = report_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut g = f;
        g.name = "null_ratio".into();
        g.ratio = f64::NAN;
        write("zz-unit-test", &[g]).unwrap();
        let md = std::fs::read_to_string(write_summary().unwrap()).unwrap();
        std::fs::remove_file(dir.join("zz-unit-test.json")).unwrap();
        assert!(
            md.contains("| zz-unit-test | null_ratio |") && md.contains("NaN"),
            "{md}"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        let f = figure("x", "ns", &[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0], "");
        assert_eq!(f.ratio, 2.0);
    }
}
