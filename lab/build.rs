//! Builds the test and benchmark eBPF programs (ebpf/test-programs) for bpfel-unknown-none
//! with the nightly toolchain and bpf-linker, as dataplane/build.rs does for the production
//! object; the ELF lands in OUT_DIR and is embedded by `testbed`.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/test-programs");
    let ebpf = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    println!("cargo:rerun-if-changed={ebpf}/common/src");
    // The test programs share the production programs' packet access and runtime.
    println!("cargo:rerun-if-changed={ebpf}/programs/src/parse.rs");
    println!("cargo:rerun-if-changed={ebpf}/programs/src/runtime.rs");
    aya_build::build_ebpf(
        [Package {
            name: "baton-test-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
