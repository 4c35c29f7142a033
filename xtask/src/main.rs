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
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask setup | test [TEST FILTER] | demo [baton demo options] | bench [NAME] [--quick]");
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
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
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
        .take_while(|c| c.is_ascii_digit())
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

fn test(filter: &[String]) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("the lab and XDP tests need root (network namespaces, BPF): run as root");
    }
    println!("== unit tests");
    run(cmd("cargo").arg("test"))?;
    println!("== building baton");
    run(cmd("cargo").args(["build", "-p", "baton-control", "--bin", "baton"]))?;
    let baton = root_dir().join("target/debug/baton");
    // Whatever a crashed earlier run left.
    run(cmd(baton.to_str().unwrap()).args(["lab", "down"]))?;
    println!("== privileged tests (lab, XDP, AF_XDP)");
    let result = run(cmd("cargo")
        .env("BATON_BIN", &baton)
        .args(["test", "-p", "baton-tests", "--"])
        .args(filter)
        .arg("--test-threads=1"));
    run(cmd(baton.to_str().unwrap()).args(["lab", "down"]))?;
    result
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
        &[("baton-control", "baton")],
    )?;
    run(release_bin("baton").arg("demo").args(args))
}

fn bench(args: &[String]) -> Result<()> {
    // The membership benchmark runs a lab of release `baton` daemons.
    prepare_release(
        "the benchmarks load XDP programs and build network namespaces",
        &[("baton-benches", "baton-bench"), ("baton-control", "baton")],
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
