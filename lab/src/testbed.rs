//! The testbed: the test and benchmark eBPF programs (`ebpf/test-programs`, an object of
//! their own, never loaded by an orchestrator or member) with their maps, and
//! `BPF_PROG_TEST_RUN` of any XDP program — these or the production ones as an
//! orchestrator configured them — on crafted frames.

use std::time::{Duration, Instant};

use aya::{
    maps::{Array, CpuMap, DevMap, MapData},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use baton_common::testbed::{bench, GenConf};
use baton_dataplane::{loader, LoadError};

/// The test programs' object, built by `build.rs`.
pub static TEST_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baton-test-ebpf"));

/// The test programs and their maps, loaded once. Dropping it detaches what it attached.
pub struct Testbed {
    ebpf: Ebpf,
}

impl Testbed {
    /// Loads the test object (root only).
    pub fn load() -> Result<Self, LoadError> {
        Ok(Self {
            ebpf: loader::load(TEST_OBJECT)?,
        })
    }

    /// Attaches `prog` (`sink`, `bare_redirect`, `to_stack`, `sync_loss`) to `iface` in
    /// driver mode.
    pub fn attach(&mut self, prog: &'static str, iface: &str) -> Result<(), LoadError> {
        loader::attach(&mut self.ebpf, prog, iface, XdpMode::Driver)
    }

    /// Points entry `index` of devmap `name` (`BENCH_PORTS`, `GEN_PORTS`) at `ifindex`.
    pub fn set_devmap(
        &mut self,
        name: &'static str,
        index: u32,
        ifindex: u32,
    ) -> Result<(), LoadError> {
        let mut m: DevMap<&mut MapData> = loader::map(&mut self.ebpf, name)?;
        m.set(index, ifindex, None, 0)?;
        Ok(())
    }

    /// Configures the `generate` program.
    pub fn set_generator(&mut self, conf: GenConf) -> Result<(), LoadError> {
        let mut m: Array<&mut MapData, GenConf> = loader::map(&mut self.ebpf, bench::GEN_CONF)?;
        m.set(0, conf, 0)?;
        Ok(())
    }

    /// Points `to_stack` at CPU 0's map thread, with a queue of `qsize` frames.
    pub fn set_stack_cpu(&mut self, qsize: u32) -> Result<(), LoadError> {
        let mut m: CpuMap<&mut MapData> = loader::map(&mut self.ebpf, bench::STACK_CPUS)?;
        m.set(0, qsize, None, 0)
            .map_err(|e| LoadError::Config(format!("CPU map entry: {e}")))?;
        Ok(())
    }

    /// Frames and bytes the sinks dropped, summed over CPUs.
    pub fn sink_stats(&self) -> Result<(u64, u64), LoadError> {
        let c = loader::sum_counters(&self.ebpf, bench::SINK_STATS, &["packets", "bytes"])?;
        Ok((c[0].1, c[1].1))
    }

    /// Per-CPU counters of map `name`, summed (the fault injector's).
    pub(crate) fn counters(
        &self,
        name: &'static str,
        labels: &[&'static str],
    ) -> Result<Vec<(&'static str, u64)>, LoadError> {
        loader::sum_counters(&self.ebpf, name, labels)
    }

    /// Writes word 0 of `u32` array `name` (the fault injector's setting).
    pub(crate) fn set_word(&mut self, name: &'static str, value: u32) -> Result<(), LoadError> {
        let mut m: Array<&mut MapData, u32> = loader::map(&mut self.ebpf, name)?;
        m.set(0, value, 0)?;
        Ok(())
    }

    /// One of the test programs, loaded, for [`test_run`] and [`test_run_repeat`].
    pub fn program(&mut self, prog: &'static str) -> Result<&mut Xdp, LoadError> {
        loader::loaded(&mut self.ebpf, prog)
    }

    /// Sends `count` copies of `frame` through `prog` as live frames (the kernel's fast
    /// in-kernel generator: whatever the program redirects is really transmitted).
    /// Returns the wall time the kernel took.
    pub fn live_frames(
        &mut self,
        prog: &'static str,
        frame: &[u8],
        ingress_ifindex: u32,
        count: u32,
        batch: u32,
    ) -> Result<Duration, LoadError> {
        let p = self.program(prog)?;
        let ctx = xdp_md(frame, ingress_ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        };
        let start = Instant::now();
        p.test_run(opts).map_err(|e| LoadError::Program(prog, e))?;
        Ok(start.elapsed())
    }
}

/// The `struct xdp_md` of a frame of `frame.len()` bytes arriving on `ingress_ifindex`:
/// data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
fn xdp_md(frame: &[u8], ingress_ifindex: u32) -> Vec<u8> {
    let md: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
    md.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Runs `prog` once on `frame` in the kernel (`BPF_PROG_TEST_RUN`) as if it arrived on
/// `ingress_ifindex`. Returns the XDP action and the frame as the program left it.
pub fn test_run(
    prog: &mut Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
) -> Result<(u32, Vec<u8>), LoadError> {
    let mut out = vec![0u8; frame.len() + 256];
    let (action, len, _) = test_run_repeat(prog, frame, ingress_ifindex, 1, Some(&mut out))?;
    out.truncate(len);
    Ok((action, out))
}

/// Like [`test_run`], `repeat` times; also returns the kernel's mean time per run.
pub fn test_run_repeat(
    prog: &mut Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
    out: Option<&mut [u8]>,
) -> Result<(u32, usize, Duration), LoadError> {
    let ctx = xdp_md(frame, ingress_ifindex);
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: out,
        ctx_in: Some(&ctx),
        repeat,
        ..TestRunOptions::new()
    };
    let r = prog
        .test_run(opts)
        .map_err(|e| LoadError::Program("test_run", e))?;
    Ok((r.return_value, r.data_size_out as usize, r.duration))
}
