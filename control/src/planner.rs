//! Bucket-table planning: which member is active and which is backup for each bucket.
//!
//! Three operations, all pure functions of the current table:
//! - [`rebalance`] (a member joins or is removed administratively): moves as few active
//!   assignments as balance needs, so a join moves about B/N buckets;
//! - [`fail`] (a member died): each of its buckets switches to its backup and nothing else
//!   changes hands;
//! - both then reassign backups so that each member's buckets are backed up evenly by all
//!   the others. That pairwise balance is what keeps the table balanced after a failure:
//!   the dead member's buckets spread evenly over the survivors.

use std::collections::{BTreeMap, BTreeSet};

use baton_common::Bucket;

/// The first table for `active` members, or an empty one.
pub fn plan(active: &[u32], buckets: u32) -> Vec<Bucket> {
    rebalance(&vec![Bucket::default(); buckets as usize], active)
}

/// Balances `table` over `active` with the fewest active moves, then reassigns backups.
pub fn rebalance(table: &[Bucket], active: &[u32]) -> Vec<Bucket> {
    let members: BTreeSet<u32> = active.iter().copied().collect();
    let mut t = table.to_vec();
    if members.is_empty() {
        return vec![Bucket::default(); t.len()];
    }
    // Buckets of members that left go to their backup when it is still here.
    for b in &mut t {
        if !members.contains(&b.active) {
            b.active = if members.contains(&b.backup) {
                b.backup
            } else {
                0
            };
        }
    }
    let targets = targets(&members, t.len());
    let mut owned: BTreeMap<u32, Vec<usize>> = members.iter().map(|m| (*m, Vec::new())).collect();
    let mut free = Vec::new();
    for (i, b) in t.iter().enumerate() {
        match owned.get_mut(&b.active) {
            Some(v) => v.push(i),
            None => free.push(i),
        }
    }
    // Members over their target give up their highest buckets.
    for (m, v) in &mut owned {
        while v.len() > targets[m] {
            free.push(v.pop().unwrap());
        }
    }
    free.sort_unstable();
    let mut free = free.into_iter();
    for (m, v) in &mut owned {
        while v.len() < targets[m] {
            let i = free.next().expect("targets add up to the bucket count");
            t[i].active = *m;
            v.push(i);
        }
    }
    assign_backups(&mut t, &members);
    t
}

/// For joins with sync: per bucket, the joining member that will own or back it up once
/// `joiners` join `serving` (0: none). Their records go to it before the join takes effect.
pub fn join_extra(table: &[Bucket], serving: &[u32], joiners: &[u32]) -> Vec<u32> {
    let all: Vec<u32> = serving.iter().chain(joiners).copied().collect();
    rebalance(table, &all)
        .iter()
        .map(|b| {
            if joiners.contains(&b.active) {
                b.active
            } else if joiners.contains(&b.backup) {
                b.backup
            } else {
                0
            }
        })
        .collect()
}

/// `dead` failed and `survivors` remain: its buckets switch to their backups (a bucket
/// without one goes to the least-loaded survivor); no other bucket's active member changes.
pub fn fail(table: &[Bucket], dead: u32, survivors: &[u32]) -> Vec<Bucket> {
    let mut members: BTreeSet<u32> = survivors.iter().copied().collect();
    members.remove(&dead);
    let mut t = table.to_vec();
    if members.is_empty() {
        return vec![Bucket::default(); t.len()];
    }
    let mut load: BTreeMap<u32, usize> = members.iter().map(|m| (*m, 0)).collect();
    for b in &t {
        if let Some(c) = load.get_mut(&b.active) {
            *c += 1;
        }
    }
    for b in t.iter_mut().filter(|b| b.active == dead) {
        b.active = if members.contains(&b.backup) {
            b.backup
        } else {
            *load.iter().min_by_key(|(m, c)| (**c, **m)).unwrap().0
        };
        *load.get_mut(&b.active).unwrap() += 1;
    }
    assign_backups(&mut t, &members);
    t
}

/// Active-bucket target of each member: B/N, the remainder to the lowest ids.
fn targets(members: &BTreeSet<u32>, buckets: usize) -> BTreeMap<u32, usize> {
    let n = members.len();
    members
        .iter()
        .enumerate()
        .map(|(k, m)| (*m, buckets / n + usize::from(k < buckets % n)))
        .collect()
}

/// Gives every bucket a backup other than its active member, such that the buckets of
/// each member are backed up evenly by every other member, keeping existing backups where
/// the balance allows.
fn assign_backups(t: &mut [Bucket], members: &BTreeSet<u32>) {
    if members.len() < 2 {
        for b in t.iter_mut() {
            b.backup = 0;
        }
        return;
    }
    let mut by_active: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, b) in t.iter().enumerate() {
        by_active.entry(b.active).or_default().push(i);
    }
    // Totals across all actives, so the remainders do not pile up on the same members.
    let mut totals: BTreeMap<u32, usize> = members.iter().map(|m| (*m, 0)).collect();
    for (a, idx) in by_active {
        let others: Vec<u32> = members.iter().copied().filter(|m| *m != a).collect();
        let (q, r) = (idx.len() / others.len(), idx.len() % others.len());
        // The r members with the fewest backups so far take one more.
        let mut order = others.clone();
        order.sort_by_key(|m| (totals[m], *m));
        let quota: BTreeMap<u32, usize> = order
            .iter()
            .enumerate()
            .map(|(k, m)| (*m, q + usize::from(k < r)))
            .collect();
        let mut used: BTreeMap<u32, usize> = others.iter().map(|m| (*m, 0)).collect();
        let mut todo = Vec::new();
        for &i in &idx {
            let b = t[i].backup;
            match used.get_mut(&b) {
                Some(u) if *u < quota[&b] => *u += 1,
                _ => todo.push(i),
            }
        }
        let mut cursor = 0;
        for i in todo {
            while used[&others[cursor % others.len()]] >= quota[&others[cursor % others.len()]] {
                cursor += 1;
            }
            let m = others[cursor % others.len()];
            t[i].backup = m;
            *used.get_mut(&m).unwrap() += 1;
            cursor += 1;
        }
        for (m, u) in used {
            *totals.get_mut(&m).unwrap() += u;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn buckets_for(n: u32) -> u32 {
        4096u32.max((100 * n).next_power_of_two())
    }

    /// Balance within 1% of B for actives and backups; backups valid.
    fn check_balanced(t: &[Bucket], members: &[u32]) {
        let b = t.len() as f64;
        let n = members.len() as f64;
        for m in members {
            let a = t.iter().filter(|x| x.active == *m).count() as f64;
            assert!(
                (a - b / n).abs() <= 0.01 * b,
                "n={n} member {m}: {a} active vs {}",
                b / n
            );
            if members.len() > 1 {
                let k = t.iter().filter(|x| x.backup == *m).count() as f64;
                assert!(
                    (k - b / n).abs() <= 0.01 * b,
                    "n={n} member {m}: {k} backup vs {}",
                    b / n
                );
            }
        }
        for x in t {
            assert!(members.contains(&x.active));
            assert_ne!(x.active, x.backup);
            assert_eq!(x.backup == 0, members.len() == 1);
            if x.backup != 0 {
                assert!(members.contains(&x.backup));
            }
        }
    }

    fn moved(a: &[Bucket], b: &[Bucket]) -> usize {
        a.iter()
            .zip(b)
            .filter(|(x, y)| x.active != y.active)
            .count()
    }

    #[test]
    fn every_size_from_1_to_52() {
        for n in 1..=52u32 {
            let bsz = buckets_for(n);
            let ids: Vec<u32> = (1..=n).collect();
            let t = plan(&ids, bsz);
            check_balanced(&t, &ids);
            let slack = (0.01 * f64::from(bsz)).ceil() as usize;
            // Join: at most B/N' + 1% move.
            let mut more = ids.clone();
            more.push(n + 1);
            let joined = rebalance(&t, &more);
            check_balanced(&joined, &more);
            assert!(
                moved(&t, &joined) <= (bsz as usize).div_ceil(more.len()) + slack,
                "join n={n}"
            );
            if n > 1 {
                // Administrative removal: at most B/N + 1% move.
                let fewer: Vec<u32> = ids.iter().copied().filter(|m| *m != 1).collect();
                let removed = rebalance(&t, &fewer);
                check_balanced(&removed, &fewer);
                assert!(
                    moved(&t, &removed) <= (bsz as usize).div_ceil(n as usize) + slack,
                    "remove n={n}"
                );
                // Failure: only the dead member's buckets change, each to its backup.
                for dead in [1, n / 2 + 1, n] {
                    let survivors: Vec<u32> = ids.iter().copied().filter(|m| *m != dead).collect();
                    let after = fail(&t, dead, &survivors);
                    for (x, y) in t.iter().zip(&after) {
                        if x.active == dead {
                            assert_eq!(y.active, x.backup, "n={n} dead={dead}");
                        } else {
                            assert_eq!(
                                y.active, x.active,
                                "n={n} dead={dead}: a survivor's bucket moved"
                            );
                        }
                    }
                    check_balanced(&after, &survivors);
                }
            }
        }
    }

    #[test]
    fn empty_and_single() {
        assert!(plan(&[], 16).iter().all(|b| *b == Bucket::default()));
        assert!(plan(&[7], 16).iter().all(|b| *b
            == Bucket {
                active: 7,
                backup: 0
            }));
        assert!(fail(&plan(&[7], 16), 7, &[])
            .iter()
            .all(|b| *b == Bucket::default()));
    }

    #[test]
    fn a_joining_member_hears_of_every_bucket_it_will_hold() {
        for n in 1..=13u32 {
            let before: Vec<u32> = (1..=n).collect();
            let table = plan(&before, 4096);
            let joiner = n + 1;
            let extra = join_extra(&table, &before, &[joiner]);
            let after: Vec<u32> = (1..=joiner).collect();
            let done = rebalance(&table, &after);
            for (i, b) in done.iter().enumerate() {
                let holds = b.active == joiner || b.backup == joiner;
                assert_eq!(extra[i] == joiner, holds, "n={n} bucket {i}");
                assert!(extra[i] == 0 || extra[i] == joiner);
            }
            check_balanced(&done, &after);
        }
    }

    proptest! {
        /// Any sequence of joins, failures and removals keeps the table balanced, and each
        /// failure moves only the dead member's buckets.
        #[test]
        fn sequences_stay_balanced(ops in proptest::collection::vec((0u8..3, 1u32..=20), 1..25)) {
            let bsz = 4096u32;
            let mut members: Vec<u32> = vec![1, 2, 3];
            let mut t = plan(&members, bsz);
            for (op, id) in ops {
                match op {
                    0 if !members.contains(&id) => {
                        members.push(id);
                        t = rebalance(&t, &members);
                    }
                    1 if members.contains(&id) && members.len() > 1 => {
                        members.retain(|m| *m != id);
                        let after = fail(&t, id, &members);
                        for (x, y) in t.iter().zip(&after) {
                            prop_assert!(x.active == id || x.active == y.active);
                        }
                        t = after;
                    }
                    2 if members.contains(&id) && members.len() > 1 => {
                        members.retain(|m| *m != id);
                        t = rebalance(&t, &members);
                    }
                    _ => {}
                }
                members.sort_unstable();
                check_balanced(&t, &members);
            }
        }
    }
}
