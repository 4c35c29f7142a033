//! `cargo xtask setup | test | demo`.
//!
//! `setup` installs what a fresh machine lacks (Debian packages, nightly's rust-src,
//! bpf-linker built against nightly's own LLVM); it is idempotent and takes seconds when
//! everything is present. `test` and `demo` run it first.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};

/// Debian packages the build, the lab and the tests use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "tcpdump",
    "nftables",
    "python3",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    "clang",
    "llvm",
    "m4",
    "pkg-config",
    "stress-ng",
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask setup | test [--repeat N] [--load] [TEST FILTER] | demo [baton demo options] | bench [NAME] [--quick]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map_or_else(
            || PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"),
            PathBuf::from,
        )
        .join("bin")
}

/// PATH with cargo's bin directory (bpf-linker) first.
fn path_env() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).unwrap()
}

fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", path_env()).current_dir(root_dir());
    c
}

fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

fn output(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("packages {missing:?} are missing and installing them needs root: run as root");
        }
        println!("setup: installing {}", missing.join(" "));
        run(cmd("apt-get").args(["update", "-qq"]))?;
        run(cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))?;
    }
    let toolchains = output(cmd("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        run(cmd("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(cmd("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly");
        run(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if output(cmd("bpf-linker").arg("--version")).is_err() {
        install_bpf_linker()?;
    }
    Ok(())
}

/// bpf-linker must use the LLVM of the nightly that compiles the eBPF crate: link it
/// against nightly's own libLLVM (names derived from what is installed).
fn install_bpf_linker() -> Result<()> {
    let sysroot =
        PathBuf::from(output(cmd("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("nightly has no libLLVM.so.* in its sysroot")?;
    let major: String = lib["libLLVM.so.".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot read the LLVM version from {lib}");
    }
    let prefix = root_dir().join("target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)?;
    }
    println!("setup: building bpf-linker against nightly's LLVM {major} (a few minutes)");
    run(cmd("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            "~0.13",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}")))
}

/// `cargo xtask test [--repeat N] [--load] [FILTER...]`.
struct TestArgs {
    /// Runs of the root-only tests (the unit tests run once).
    repeat: u32,
    /// CPU hogs on every core for the whole run.
    load: bool,
    /// Passed to the test harness (test name filters).
    filter: Vec<String>,
}

fn test_args(args: &[String]) -> Result<TestArgs> {
    let mut t = TestArgs {
        repeat: 1,
        load: false,
        filter: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--load" => t.load = true,
            "--repeat" => {
                let n = it.next().context("--repeat needs a number")?;
                t.repeat = n
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .with_context(|| format!("--repeat must be a number ≥ 1, not {n:?}"))?;
            }
            _ => t.filter.push(a.clone()),
        }
    }
    Ok(t)
}

/// The longest a load run's CPU hogs may live, whatever happens to this process: ample for
/// one repeat of every root-only test (about 10 minutes on 2 cores).
const LOAD_SECS_PER_REPEAT: u32 = 1800;

fn test(args: &[String]) -> Result<()> {
    let args = test_args(args)?;
    setup()?;
    if !is_root() {
        bail!("the lab and XDP tests need root (network namespaces, BPF): run as root");
    }
    println!("== building baton and the tests");
    run(cmd("cargo").args(["build", "-p", "baton", "--bin", "baton"]))?;
    run(cmd("cargo").args(["test", "--no-run"]))?;
    run(cmd("cargo").args(["test", "-p", "baton-tests", "--no-run"]))?;
    let baton = root_dir().join("target/debug/baton");
    let _load = if args.load {
        Some(CpuLoad::start(LOAD_SECS_PER_REPEAT * args.repeat)?)
    } else {
        None
    };
    let start = std::time::Instant::now();
    println!("== unit tests");
    run(cmd("cargo").arg("test"))?;
    let mut failed: Vec<(u32, Vec<String>)> = Vec::new();
    for i in 1..=args.repeat {
        // Whatever a crashed earlier run left.
        run(cmd(baton.to_str().unwrap()).args(["lab", "down"]))?;
        println!(
            "== privileged tests (lab, XDP, AF_XDP), run {i} of {}",
            args.repeat
        );
        let t = std::time::Instant::now();
        let mut c = cmd("cargo");
        c.env("BATON_BIN", &baton)
            .args(["test", "-p", "baton-tests"]);
        if args.repeat > 1 || args.load {
            // Every test runs in every repeat, so the report names all that failed.
            c.arg("--no-fail-fast");
        }
        c.arg("--").args(&args.filter).arg("--test-threads=1");
        let (ok, names) = run_tests(&mut c)?;
        let took = t.elapsed().as_secs_f64();
        if ok {
            println!("== run {i}: passed ({took:.1} s)");
        } else {
            println!("== run {i}: FAILED ({took:.1} s): {}", or_unknown(&names));
            failed.push((i, names));
        }
    }
    run(cmd(baton.to_str().unwrap()).args(["lab", "down"]))?;
    let load = if args.load {
        format!(" under load ({} CPU hogs)", nproc())
    } else {
        String::new()
    };
    println!(
        "== {} run(s){load}: {} passed, {} failed; {:.1} s in all",
        args.repeat,
        args.repeat as usize - failed.len(),
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        let what: Vec<String> = failed
            .iter()
            .map(|(i, names)| format!("run {i}: {}", or_unknown(names)))
            .collect();
        bail!("tests failed: {}", what.join("; "));
    }
    Ok(())
}

fn or_unknown(names: &[String]) -> String {
    if names.is_empty() {
        "(no test named; see the output above)".into()
    } else {
        names.join(", ")
    }
}

/// Runs a `cargo test`, passing its output through; whether it passed and the tests the
/// harness reported failed.
fn run_tests(c: &mut Command) -> Result<(bool, Vec<String>)> {
    use std::io::{BufRead, Write};
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {c:?}"))?;
    let mut names = Vec::new();
    let out = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        let _ = std::io::stdout().flush();
        // libtest: "test NAME ... FAILED"
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            names.push(name.to_string());
        }
    }
    let status = child.wait()?;
    Ok((status.success(), names))
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `stress-ng --cpu <cores>` for as long as this lives (and at most its timeout, should this
/// process be killed); stopped on drop, also when a test fails.
struct CpuLoad(std::process::Child);

impl CpuLoad {
    fn start(timeout_secs: u32) -> Result<Self> {
        let cores = nproc();
        println!("== load: stress-ng --cpu {cores} --timeout {timeout_secs}s");
        let child = cmd("stress-ng")
            .args(["--cpu", &cores.to_string(), "--timeout"])
            .arg(format!("{timeout_secs}s"))
            .arg("--quiet")
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting stress-ng (cargo xtask setup installs it)")?;
        Ok(CpuLoad(child))
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        // SIGTERM lets stress-ng stop its workers (they also die with it, by their
        // parent-death signal); SIGKILL if it has not within 5 s.
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                println!("== load stopped");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        println!("== load killed");
    }
}

/// Runs `setup`, checks for root (`why` says what needs it) and builds `binaries`
/// ((package, binary) pairs) in release mode.
fn prepare_release(why: &str, binaries: &[(&str, &str)]) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("{why}: run as root");
    }
    for (package, bin) in binaries {
        run(cmd("cargo").args(["build", "--release", "-p", package, "--bin", bin]))?;
    }
    Ok(())
}

fn release_bin(name: &str) -> Command {
    cmd(root_dir()
        .join("target/release")
        .join(name)
        .to_str()
        .unwrap())
}

fn demo(args: &[String]) -> Result<()> {
    prepare_release(
        "the demo builds network namespaces and loads XDP programs",
        &[("baton", "baton")],
    )?;
    run(release_bin("baton").arg("demo").args(args))
}

fn bench(args: &[String]) -> Result<()> {
    // The membership benchmark runs a lab of release `baton` daemons.
    prepare_release(
        "the benchmarks load XDP programs and build network namespaces",
        &[("baton-benches", "baton-bench"), ("baton", "baton")],
    )?;
    // The criterion micro-benchmarks run first: baton-bench's `micro` turns what they
    // leave in target/criterion/ into its figures.
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if names.is_empty() || names.iter().any(|n| *n == "micro") {
        // Quick: seconds for the whole file. Full: short of criterion's defaults (3 s
        // warm-up, 5 s measurement per function), so all of micro stays near a minute.
        let opts: &[&str] = if args.iter().any(|a| a == "--quick") {
            &[
                "--warm-up-time",
                "0.2",
                "--measurement-time",
                "0.5",
                "--noplot",
            ]
        } else {
            &["--warm-up-time", "1", "--measurement-time", "3", "--noplot"]
        };
        run(cmd("cargo")
            .args(["bench", "-p", "baton-benches", "--bench", "micro", "--"])
            .args(opts))?;
    }
    run(release_bin("baton-bench").args(args))
}
