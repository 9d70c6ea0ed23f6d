//! Builds the kernel programs (`agent-ebpf`, nightly + bpf-linker) into `OUT_DIR`, where
//! `capture::load` embeds them. `cargo xtask setup` installs what this needs.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("agent-ebpf");
    // AYA_BUILD_SKIP=1 (pure decoder work, fuzzing) builds the agent without kernel programs;
    // such a binary refuses to start capture with a clear error instead of loading garbage.
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        if !object.exists() {
            fs::write(&object, [])?;
        }
        return Ok(());
    }
    let ebpf_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .join("..")
        .join("agent-ebpf");
    let root_dir = ebpf_dir.to_str().expect("path is UTF-8").to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
