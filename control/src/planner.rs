//! Bucket-table planning: which member is active and which is backup for each bucket.

use baton_common::Bucket;

/// Spreads `buckets` over the `active` members (ids, any order) round-robin, and gives each
/// bucket a backup that is never its active member, rotating so that the buckets of one
/// member are backed up by all the others in turn. With one member there is no backup;
/// with none every bucket is empty.
pub fn plan(active: &[u32], buckets: u32) -> Vec<Bucket> {
    let mut ids = active.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len();
    (0..buckets as usize)
        .map(|i| match n {
            0 => Bucket::default(),
            1 => Bucket {
                active: ids[0],
                backup: 0,
            },
            _ => {
                let a = i % n;
                let b = (a + 1 + (i / n) % (n - 1)) % n;
                Bucket {
                    active: ids[a],
                    backup: ids[b],
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_with_distinct_backups() {
        for n in 1..=52u32 {
            let ids: Vec<u32> = (1..=n).collect();
            let b = 4096u32.max((100 * n).next_power_of_two());
            let table = plan(&ids, b);
            let share = b as f64 / n as f64;
            for id in &ids {
                let a = table.iter().filter(|x| x.active == *id).count() as f64;
                assert!(
                    (a - share).abs() <= 0.01 * b as f64,
                    "n={n} active share {a} vs {share}"
                );
                if n > 1 {
                    let k = table.iter().filter(|x| x.backup == *id).count() as f64;
                    assert!(
                        (k - share).abs() <= 0.01 * b as f64,
                        "n={n} backup share {k}"
                    );
                }
            }
            for x in &table {
                assert_ne!(x.active, x.backup, "n={n}");
                assert_eq!(x.backup == 0, n == 1);
            }
        }
        assert!(plan(&[], 16).iter().all(|b| *b == Bucket::default()));
    }
}
