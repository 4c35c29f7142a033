//! The criterion micro-benchmarks' names (shared with `benches/benches/micro.rs`) and their
//! conversion into report figures: one figure per group, Baton's median beside the
//! baseline's, both measured by criterion in the same run.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::{figure, Figure};

/// The function measuring Baton's code in every group.
pub const OURS: &str = "baton";
/// The function measuring the minimal baseline on the same inputs.
pub const BASELINE: &str = "baseline";

/// Connections in the table of the conntrack groups.
pub const CONNECTIONS: usize = 100_000;

/// One criterion group and the figure it becomes.
pub struct Group {
    /// Criterion's group name (its directory under `target/criterion/`).
    pub name: &'static str,
    /// The figure's name in the report.
    pub figure: &'static str,
    /// What one operation is and what it is compared with.
    pub goal: &'static str,
}

pub const CONNTRACK_LOOKUP: &str = "conntrack_lookup";
pub const CONNTRACK_INSERT: &str = "conntrack_insert";
pub const SYNC_ENCODE: &str = "sync_encode";
pub const SYNC_DECODE: &str = "sync_decode";
pub const FORWARDER: &str = "forwarder";
pub const FLOW_HASH: &str = "flow_hash";

pub const GROUPS: [Group; 6] = [
    Group {
        name: CONNTRACK_LOOKUP,
        figure: "micro_conntrack_lookup",
        goal: "reported; one lookup at 100k connections; baseline: std HashMap (ahash) of the same 5-tuples",
    },
    Group {
        name: CONNTRACK_INSERT,
        figure: "micro_conntrack_insert",
        goal: "reported; one new connection up to 100k; baseline: std HashMap (ahash) insert of the same 5-tuples",
    },
    Group {
        name: SYNC_ENCODE,
        figure: "micro_sync_encode",
        goal: "reported; one DATA frame of 30 sync records with HMAC; baseline: plain copy of the records",
    },
    Group {
        name: SYNC_DECODE,
        figure: "micro_sync_decode",
        goal: "reported; one DATA frame of 30 sync records parsed, verified and delivered; baseline: plain copy of the records",
    },
    Group {
        name: FORWARDER,
        figure: "micro_forwarder",
        goal: "reported; one UDP frame of an established flow end to end; baseline: MAC swap of the frame",
    },
    Group {
        name: FLOW_HASH,
        figure: "micro_flow_hash",
        goal: "reported; the symmetric flow hash of one flow; baseline: ahash of the same addresses and ports",
    },
];

/// Criterion's output directory: `target/criterion/`.
pub fn criterion_dir() -> PathBuf {
    let report = crate::report::report_dir();
    report
        .parent()
        .map_or_else(|| report.join(".."), Path::to_path_buf)
        .join("criterion")
}

/// One figure per group from the last criterion run (`cargo xtask bench micro`).
pub fn report() -> anyhow::Result<Vec<Figure>> {
    read(&criterion_dir())
}

/// The median of `<base>/<group>/<function>/new/estimates.json`, in nanoseconds.
fn median_ns(base: &Path, group: &str, function: &str) -> anyhow::Result<f64> {
    let path = base.join(group).join(function).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no criterion estimates at {}: run the criterion benchmarks first \
             (`cargo bench -p baton-benches --bench micro`, or `cargo xtask bench micro`)",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not criterion's estimates JSON", path.display()))?;
    v["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{} has no median.point_estimate", path.display()))
}

fn read(base: &Path) -> anyhow::Result<Vec<Figure>> {
    GROUPS
        .iter()
        .map(|g| {
            let ours = median_ns(base, g.name, OURS)?;
            let baseline = median_ns(base, g.name, BASELINE)?;
            Ok(figure(g.figure, "ns_per_op", &[ours], &[baseline], g.goal))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "baton-micro-{tag}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir_all(&p).expect("create the temporary directory");
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn estimates(base: &Path, group: &str, function: &str, median: f64) {
        let dir = base.join(group).join(function).join("new");
        std::fs::create_dir_all(&dir).expect("create the estimates directory");
        // As criterion 0.5 writes it (abridged: the reader needs only the median).
        let est = |x: f64| {
            serde_json::json!({
                "confidence_interval": {
                    "confidence_level": 0.95,
                    "lower_bound": x * 0.9,
                    "upper_bound": x * 1.1
                },
                "point_estimate": x,
                "standard_error": x * 0.01
            })
        };
        let json = serde_json::json!({
            "mean": est(median * 1.05),
            "median": est(median),
            "median_abs_dev": est(median * 0.02),
            "slope": est(median * 1.01),
            "std_dev": est(median * 0.03)
        });
        std::fs::write(dir.join("estimates.json"), json.to_string()).expect("write estimates.json");
    }

    #[test]
    fn one_figure_per_group_from_criterion_medians() {
        let tmp = TempDir::new("ok");
        for (i, g) in GROUPS.iter().enumerate() {
            estimates(&tmp.0, g.name, OURS, 10.0 * (i + 1) as f64);
            estimates(&tmp.0, g.name, BASELINE, 5.0);
        }
        let figures = read(&tmp.0).expect("read the fabricated estimates");
        assert_eq!(figures.len(), GROUPS.len());
        for (i, (f, g)) in figures.iter().zip(&GROUPS).enumerate() {
            assert_eq!(f.name, g.figure);
            assert!(f.name.starts_with("micro_"), "{}", f.name);
            assert_eq!(f.unit, "ns_per_op");
            assert_eq!(f.median, 10.0 * (i + 1) as f64);
            assert_eq!(f.baseline_median, 5.0);
            assert_eq!(f.ratio, 2.0 * (i + 1) as f64);
            assert_eq!(f.samples, 1);
            assert!(f.goal.contains("baseline"), "{}", f.goal);
        }
    }

    #[test]
    fn missing_estimates_say_to_run_criterion_first() {
        let tmp = TempDir::new("missing");
        estimates(&tmp.0, CONNTRACK_LOOKUP, OURS, 20.0);
        let e = format!("{:#}", read(&tmp.0).expect_err("the baseline is missing"));
        assert!(
            e.contains("run the criterion benchmarks first")
                && e.contains("conntrack_lookup/baseline/new/estimates.json"),
            "{e}"
        );
    }

    #[test]
    fn the_criterion_directory_is_beside_the_report() {
        let dir = criterion_dir();
        assert!(dir.ends_with("target/criterion"), "{}", dir.display());
    }
}
