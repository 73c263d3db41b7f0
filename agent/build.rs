//! Builds the kernel programs (the `agent-ebpf` package's binary) for the bpf target with
//! aya-build, so the agent embeds them. Needs the nightly toolchain's rust-src and bpf-linker:
//! `cargo xtask provision` installs both.
fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
