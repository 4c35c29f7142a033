//! `baton-bench [NAME] [--quick]`: runs the benchmarks (all, or one by name), prints one
//! line per figure and writes target/bench-report/<name>.json. Needs root.

use std::time::Instant;

use baton_benches::{
    distributor::{self, Size},
    hypersync, membership, plot,
    report::{self, Figure},
    scaling, sgm,
};

fn line(f: &Figure) {
    match f.name.as_str() {
        "distributor_cost" => println!(
            "distributor_cost ns_per_pkt={:.1} baseline_ns_per_pkt={:.1} ratio={:.2}",
            f.median, f.baseline_median, f.ratio
        ),
        "sgm_throughput" => println!(
            "sgm_throughput mpps={:.2} baseline_mpps={:.2} ratio={:.2}",
            f.median, f.baseline_median, f.ratio
        ),
        "distributor_throughput" => println!(
            "distributor_throughput mpps={:.2} baseline_mpps={:.2} ratio={:.2}",
            f.median, f.baseline_median, f.ratio
        ),
        _ => println!(
            "{} {}={:.3} baseline={:.3} ratio={:.2}",
            f.name, f.unit, f.median, f.baseline_median, f.ratio
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let size = if quick { Size::quick() } else { Size::full() };
    let names: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let all = [
        "micro",
        "distributor",
        "sgm",
        "scaling",
        "membership",
        "hypersync",
        "nftables",
    ];
    for name in &names {
        if !all.contains(name) {
            anyhow::bail!("unknown benchmark {name:?}; known: {}", all.join(", "));
        }
    }
    let selected: Vec<&str> = if names.is_empty() {
        all.to_vec()
    } else {
        names
    };
    let started = Instant::now();
    let total = selected.len();
    for (i, name) in selected.into_iter().enumerate() {
        let t = Instant::now();
        eprintln!(
            "[{}/{total}] {name}{} — {:.0} s elapsed",
            i + 1,
            if quick { " (quick)" } else { "" },
            started.elapsed().as_secs_f64()
        );
        let figures = match name {
            // Criterion's own run (`cargo xtask bench` starts it first) read back.
            "micro" => {
                let figures = baton_benches::micro::report()?;
                figures.iter().for_each(line);
                figures
            }
            "scaling" => {
                let figures = scaling::run(size, quick)?;
                figures.iter().for_each(line);
                figures
            }
            "distributor" => {
                let cost = distributor::cost(size)?;
                line(&cost);
                let tput = distributor::throughput(size)?;
                line(&tput);
                vec![cost, tput]
            }
            "sgm" => {
                let ct = sgm::conntrack(quick)?;
                println!(
                    "conntrack lookups_per_s={:.0} bytes_per_conn={:.1} rss_bytes_per_conn={:.1} inserts_per_s={:.0} connections={}",
                    ct.lookups.median, ct.bytes_per_conn, ct.rss_bytes_per_conn, ct.inserts_per_s, ct.connections
                );
                let tput = sgm::throughput(size)?;
                line(&tput);
                let flows = sgm::throughput_vs_flows(size, quick)?;
                line(&flows);
                let bytes = report::figure(
                    "conntrack_bytes_per_conn",
                    "bytes",
                    &[ct.bytes_per_conn],
                    &[ct.rss_bytes_per_conn],
                    "≤ 128 bytes per connection (baseline column: RSS growth per connection)",
                );
                vec![ct.lookups, bytes, tput, flows]
            }
            "membership" => {
                let (detect, election) = membership::detection(if quick { 3 } else { 21 })?;
                println!(
                    "member_detection median_ms={:.1} max_ms={:.1} configured_ms={:.0} kills={}",
                    detect.median, detect.max, detect.baseline_median, detect.samples
                );
                println!(
                    "smo_election median_ms={:.2} max_ms={:.2} master_kills={}",
                    election.median, election.max, election.samples
                );
                vec![detect, election]
            }
            "nftables" => {
                let f = baton_benches::nft::versus(size)?;
                line(&f);
                let mut figures = vec![f];
                for c in baton_benches::nft::connections_versus(quick)? {
                    line(&c);
                    figures.push(c);
                }
                figures
            }
            "hypersync" => {
                let records = hypersync::records(if quick { 100_000 } else { 1_000_000 })?;
                println!(
                    "sync_records records_per_s={:.0} baseline_encode_per_s={:.0}",
                    records.median, records.baseline_median
                );
                let kills = if quick { 2 } else { 10 };
                let mut figures = vec![records];
                // The lab's default heartbeat (100 ms × 3), and a fast one (20 ms × 3).
                for (hb, suffix) in [(100, ""), (20, "_fast")] {
                    let (mut gap, mut stall) = hypersync::failover(kills, 60, hb)?;
                    gap.name += suffix;
                    stall.name += suffix;
                    println!(
                        "{} median_ms={:.1} max_ms={:.1} configured_dead_ms={:.0} kills={}",
                        gap.name, gap.median, gap.max, gap.baseline_median, gap.samples
                    );
                    println!(
                        "{} median_ms={:.0} max_ms={:.0}",
                        stall.name, stall.median, stall.max
                    );
                    figures.extend([gap, stall]);
                }
                let (tput, cps) = hypersync::overhead(if quick { 1 } else { 3 }, quick)?;
                line(&tput);
                line(&cps);
                figures.extend([tput, cps]);
                figures
            }
            _ => unreachable!(),
        };
        let path = report::write(name, &figures)?;
        eprintln!(
            "[{}/{total}] {name} done in {:.0} s, wrote {}",
            i + 1,
            t.elapsed().as_secs_f64(),
            path.display()
        );
    }
    for svg in plot::write_all()? {
        eprintln!("wrote {}", svg.display());
    }
    eprintln!("wrote {}", report::write_summary()?.display());
    Ok(())
}
