//! `cargo xtask image`: the agent's container image, built without a container daemon.
//!
//! The agent is built as a static musl binary for each architecture (x86_64 and arm64 by
//! default; arm64 is cross-linked with Debian's `gcc-aarch64-linux-gnu`), and the image is
//! written by hand as an OCI image layout in a tar archive (`oci-archive`): `oci-layout`,
//! `index.json` and per architecture three blobs (one gzip layer holding `/periscope`, the
//! image config, the manifest). With more than one architecture, `index.json` names one image
//! index blob that lists the per-architecture manifests with their platforms (a multi-arch
//! image: a node pulls its own). It is what `deploy/Containerfile` describes (FROM scratch,
//! USER 0, ENTRYPOINT /periscope), and is reproducible: every timestamp is the epoch, so the
//! same binaries give the same digests.
//!
//! Push or load it with the usual tools, e.g. `skopeo copy --all oci-archive:<file>
//! docker://<registry>/periscope:<tag>` (`--all`: every architecture), or
//! `ctr -n k8s.io images import --all-platforms <file>` on a node.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::util::{cmd, root, run};
use crate::vm::Arch;
/// The image's name in `index.json` (`org.opencontainers.image.ref.name`), without the tag.
/// `localhost/` is how podman and CRI-O name images that come from no registry; the manifests
/// in deploy/ use the same name.
const IMAGE_NAME: &str = "localhost/periscope";
/// Every timestamp in the image: the epoch, so that builds are reproducible.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// Options of `cargo xtask image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Architectures of the image (repeatable) [default: x86_64 and aarch64].
    #[arg(long = "arch", value_name = "ARCH")]
    pub arches: Vec<Arch>,
    /// Put this binary in the image instead of building the agent (it should be static: the
    /// image has nothing else in it); needs exactly one `--arch`, the binary's.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Where to write the archive [default: <cargo target dir>/periscope-image.oci.tar].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The image tag [default: the agent's version].
    #[arg(long)]
    pub tag: Option<String>,
}

/// Builds the static agent per architecture (unless `--binary`), writes the archive and
/// prints its digest.
pub fn image(args: &ImageArgs) -> anyhow::Result<()> {
    let arches = if args.arches.is_empty() {
        vec![Arch::X86_64, Arch::Aarch64]
    } else {
        args.arches.clone()
    };
    let binaries = match &args.binary {
        Some(binary) if arches.len() == 1 && !args.arches.is_empty() => {
            vec![(arches[0], binary.clone())]
        }
        Some(_) => bail!("--binary needs exactly one --arch: the binary's"),
        None => arches
            .iter()
            .map(|arch| Ok((*arch, build_static_agent(*arch)?)))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| target_dir().join("periscope-image.oci.tar"));
    let tag = args.tag.clone().unwrap_or_else(agent_version);
    let digest = write_oci_archive(&binaries, &format!("{IMAGE_NAME}:{tag}"), &output)?;
    println!(
        "[image] {} ({IMAGE_NAME}:{tag}, digest {digest})",
        output.display()
    );
    println!(
        "[image] inspect: skopeo inspect oci-archive:{}",
        output.display()
    );
    Ok(())
}

/// `cargo build --release -p agent --target <arch>-unknown-linux-musl`: a static-pie binary
/// (musl links statically by default), eBPF programs embedded as usual by the agent's
/// build script, built for the same architecture (`bpf_target_arch`).
fn build_static_agent(arch: Arch) -> anyhow::Result<PathBuf> {
    crate::vm::ensure_cross_tools(arch)?;
    let mut build = cmd("cargo");
    build.args([
        "build",
        "--release",
        "-p",
        "agent",
        "--bin",
        "periscope",
        "--target",
        arch.musl(),
    ]);
    crate::vm::cross_env(arch, &mut build);
    run(&mut build)?;
    let binary = target_dir().join(arch.musl()).join("release/periscope");
    if !binary.is_file() {
        bail!("cargo reported success but {} is missing", binary.display());
    }
    Ok(binary)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        _ => root().join("target"),
    }
}

/// The agent crate's version, from its Cargo.toml (it inherits the workspace's).
fn agent_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// The CA bundle the image carries (Debian's `ca-certificates`, on the build machine), so that
/// an https OTLP collector with a public certificate works without mounting one.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One architecture's image: its blobs and the manifest's descriptor (its fields, without the
/// braces, so that annotations can join them).
struct PlatformImage {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    descriptor: String,
}

/// Writes an OCI image archive with, per `(architecture, binary)`, one layer holding the
/// binary as `/periscope` (mode 0755, owned by root) and the CA bundle at [`CA_BUNDLE`]
/// (`SSL_CERT_FILE` names it), with `/periscope` as entrypoint, user 0 and port 9464 exposed.
/// `reference` (e.g. `localhost/periscope:0.1.0`) names the image in `index.json`. Returns the
/// digest `reference` points at (`sha256:…`): the manifest's for one architecture, the image
/// index's for several.
pub fn write_oci_archive(
    binaries: &[(Arch, PathBuf)],
    reference: &str,
    output: &Path,
) -> anyhow::Result<String> {
    let bundle = std::fs::read(CA_BUNDLE).with_context(|| {
        format!("reading {CA_BUNDLE} (Debian's ca-certificates package) for the image")
    })?;
    let version = json_escape(reference.rsplit(':').next().unwrap_or_default());
    let images = binaries
        .iter()
        .map(|(arch, binary)| platform_image(*arch, binary, &bundle, &version))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reference = json_escape(reference);
    // Two names for the same thing: the OCI annotation (skopeo, podman) and containerd's
    // (`ctr images import`).
    let annotations = format!(
        r#""annotations":{{"org.opencontainers.image.ref.name":"{reference}","io.containerd.image.name":"{reference}"}}"#
    );
    let (top, nested_index, digest) = match images.as_slice() {
        [one] => (
            format!("{{{},{annotations}}}", one.descriptor),
            None,
            sha256(&one.manifest),
        ),
        _ => {
            let manifests: Vec<String> = images
                .iter()
                .map(|i| format!("{{{}}}", i.descriptor))
                .collect();
            let nested = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
                manifests.join(",")
            )
            .into_bytes();
            let digest = sha256(&nested);
            (
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{digest}","size":{},{annotations}}}"#,
                    nested.len()
                ),
                Some(nested),
                digest,
            )
        }
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{top}]}}"#
    )
    .into_bytes();

    let blob_path = |data: &[u8]| format!("blobs/sha256/{}", &sha256(data)["sha256:".len()..]);
    let mut blobs: Vec<(String, &[u8])> = Vec::new();
    for image in &images {
        for data in [&image.layer, &image.config, &image.manifest] {
            blobs.push((blob_path(data), data));
        }
    }
    if let Some(nested) = &nested_index {
        blobs.push((blob_path(nested), nested));
    }
    let mut entries = vec![
        TarEntry {
            path: "oci-layout",
            mode: 0o644,
            data: br#"{"imageLayoutVersion":"1.0.0"}"#,
        },
        TarEntry {
            path: "index.json",
            mode: 0o644,
            data: &index,
        },
    ];
    entries.extend(blobs.iter().map(|(path, data)| TarEntry {
        path,
        mode: 0o644,
        data,
    }));
    let archive = tar(&entries)?;
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(output, archive).with_context(|| format!("writing {}", output.display()))?;
    Ok(digest)
}

/// The layer, config and manifest of `binary` for `arch`.
fn platform_image(
    arch: Arch,
    binary: &Path,
    bundle: &[u8],
    version: &str,
) -> anyhow::Result<PlatformImage> {
    let program = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let layer_tar = tar(&[
        TarEntry {
            path: "periscope",
            mode: 0o755,
            data: &program,
        },
        TarEntry {
            path: &CA_BUNDLE[1..],
            mode: 0o644,
            data: bundle,
        },
    ])?;
    let diff_id = sha256(&layer_tar);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar)?;
    let layer = gz.finish().context("compressing the layer")?;
    // OCI platform: Go's GOARCH names, and arm64's variant.
    let platform = match arch {
        Arch::X86_64 => r#""architecture":"amd64","os":"linux""#,
        Arch::Aarch64 => r#""architecture":"arm64","os":"linux","variant":"v8""#,
    };

    let config = format!(
        concat!(
            r#"{{"created":"{created}",{platform},"#,
            r#""config":{{"User":"0","Entrypoint":["/periscope"],"#,
            r#""Env":["SSL_CERT_FILE={bundle}"],"#,
            r#""ExposedPorts":{{"9464/tcp":{{}}}},"#,
            r#""Labels":{{"org.opencontainers.image.title":"periscope","#,
            r#""org.opencontainers.image.version":"{version}"}}}},"#,
            r#""rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"#,
            r#""history":[{{"created":"{created}","created_by":"cargo xtask image"}}]}}"#
        ),
        created = CREATED,
        platform = platform,
        bundle = CA_BUNDLE,
        version = version,
        diff_id = diff_id,
    )
    .into_bytes();
    let manifest = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
            r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"#,
            r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#
        ),
        sha256(&config),
        config.len(),
        sha256(&layer),
        layer.len(),
    )
    .into_bytes();
    let descriptor = format!(
        r#""mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{{platform}}}"#,
        sha256(&manifest),
        manifest.len(),
    );
    Ok(PlatformImage {
        layer,
        config,
        manifest,
        descriptor,
    })
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Escapes `s` for a JSON string literal (image names and tags are plain ASCII, but a tag
/// given on the command line must not break the document).
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

struct TarEntry<'a> {
    path: &'a str,
    mode: u32,
    data: &'a [u8],
}

/// A ustar archive of regular files (parent directories are implied, as OCI layers and
/// layouts allow), owned by 0:0 with mtime 0, ended by the two zero blocks.
fn tar(entries: &[TarEntry<'_>]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in entries {
        if entry.path.len() > 100 {
            bail!("tar path {:?} is longer than 100 bytes", entry.path);
        }
        let mut header = [0u8; 512];
        header[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        let mut octal = |at: usize, width: usize, value: u64| {
            // width - 1 octal digits, then NUL.
            let text = format!("{value:0w$o}", w = width - 1);
            header[at..at + width - 1].copy_from_slice(text.as_bytes());
        };
        octal(100, 8, u64::from(entry.mode)); // mode
        octal(108, 8, 0); // uid
        octal(116, 8, 0); // gid
        octal(124, 12, entry.data.len() as u64); // size
        octal(136, 12, 0); // mtime
        header[156] = b'0'; // regular file
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[265..269].copy_from_slice(b"root");
        header[297..301].copy_from_slice(b"root");
        // The checksum is computed with its own field as eight spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(entry.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn tar_headers_are_valid_ustar() {
        let data = tar(&[TarEntry {
            path: "dir/file",
            mode: 0o755,
            data: b"hello",
        }])
        .unwrap();
        // header + one data block + two end blocks
        assert_eq!(data.len(), 512 * 4);
        assert_eq!(&data[..8], b"dir/file");
        assert_eq!(&data[124..135], b"00000000005");
        let stored = std::str::from_utf8(&data[148..154]).unwrap();
        let mut header = data[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&data[512..517], b"hello");
    }

    fn tool(program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} (`cargo xtask setup` installs it): {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The archive is read by two independent OCI implementations: skopeo (containers/image)
    /// reads the manifest and config, umoci unpacks the layer, which must hold the binary
    /// byte for byte.
    #[test]
    fn skopeo_and_umoci_read_the_archive() {
        // Any real executable will do; a small one keeps the (unoptimised) gzip quick.
        let binary = std::path::PathBuf::from("/usr/bin/true");
        let binaries = [(Arch::X86_64, binary.clone())];
        let dir = harness::TempDir::new("oci").unwrap();
        let archive = dir.path().join("image.oci.tar");
        let digest = write_oci_archive(&binaries, "localhost/periscope:9.9.9", &archive).unwrap();
        // Reproducible: the same input gives the same manifest.
        let again = dir.path().join("again.oci.tar");
        assert_eq!(
            write_oci_archive(&binaries, "localhost/periscope:9.9.9", &again).unwrap(),
            digest
        );
        assert_eq!(
            std::fs::read(&archive).unwrap(),
            std::fs::read(&again).unwrap()
        );

        let source = format!("oci-archive:{}", archive.display());
        let inspect = tool("skopeo", &["inspect", &source]);
        for needle in [
            format!(r#""Digest": "{digest}""#),
            r#""Architecture": "amd64""#.to_owned(),
            r#""Os": "linux""#.to_owned(),
            r#""org.opencontainers.image.version": "9.9.9""#.to_owned(),
        ] {
            assert!(inspect.contains(&needle), "{needle} not in:\n{inspect}");
        }
        let config = tool("skopeo", &["inspect", "--config", &source]);
        let compact: String = config.split_whitespace().collect();
        for needle in [
            r#""User":"0""#,
            r#""Entrypoint":["/periscope"]"#,
            r#""ExposedPorts":{"9464/tcp":{}}"#,
            r#""Env":["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]"#,
        ] {
            assert!(compact.contains(needle), "{needle} not in:\n{config}");
        }
        // By the name given in index.json, too.
        tool(
            "skopeo",
            &["inspect", &format!("{source}:localhost/periscope:9.9.9")],
        );

        // umoci works on an OCI layout directory: unpack the archive's outer tar first.
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        tool(
            "tar",
            &[
                "-xf",
                archive.to_str().unwrap(),
                "-C",
                layout.to_str().unwrap(),
            ],
        );
        let bundle = dir.path().join("bundle");
        tool(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:localhost/periscope:9.9.9", layout.display()),
                bundle.to_str().unwrap(),
            ],
        );
        let unpacked = bundle.join("rootfs/periscope");
        assert_eq!(
            std::fs::read(&unpacked).unwrap(),
            std::fs::read(&binary).unwrap()
        );
        assert_eq!(
            std::fs::read(bundle.join("rootfs").join(&CA_BUNDLE[1..])).unwrap(),
            std::fs::read(CA_BUNDLE).unwrap(),
            "the CA bundle"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&unpacked).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let runtime_config = std::fs::read_to_string(bundle.join("config.json")).unwrap();
        let compact: String = runtime_config.split_whitespace().collect();
        assert!(
            compact.contains(r#""args":["/periscope"]"#),
            "{runtime_config}"
        );
    }

    /// Two architectures: the name points at an image index listing both manifests with their
    /// platforms, and skopeo picks each one's own binary by platform.
    #[test]
    fn a_multi_arch_archive_lists_each_platform() {
        let dir = harness::TempDir::new("oci-multi").unwrap();
        // Stand-ins for the two binaries: different content, so the layers differ.
        let (amd64, arm64) = (dir.path().join("amd64"), dir.path().join("arm64"));
        std::fs::write(&amd64, b"amd64 binary").unwrap();
        std::fs::write(&arm64, b"arm64 binary").unwrap();
        let binaries = [(Arch::X86_64, amd64), (Arch::Aarch64, arm64)];
        let archive = dir.path().join("image.oci.tar");
        let digest = write_oci_archive(&binaries, "localhost/periscope:9.9.9", &archive).unwrap();
        let source = format!(
            "oci-archive:{}:localhost/periscope:9.9.9",
            archive.display()
        );
        let raw = tool("skopeo", &["inspect", "--raw", &source]);
        let compact: String = raw.split_whitespace().collect();
        assert!(
            compact.contains(r#""mediaType":"application/vnd.oci.image.index.v1+json""#),
            "{raw}"
        );
        assert_eq!(
            compact
                .matches(r#""mediaType":"application/vnd.oci.image.manifest.v1+json""#)
                .count(),
            2,
            "{raw}"
        );
        let mut layers = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
            let mut args = vec!["--override-arch", arch];
            if let Some(variant) = variant {
                args.extend(["--override-variant", variant]);
            }
            args.extend(["inspect", &source]);
            let inspect = tool("skopeo", &args);
            assert!(
                inspect.contains(&format!(r#""Architecture": "{arch}""#)),
                "{arch}: {inspect}"
            );
            let layer = inspect
                .split("\"Layers\": [")
                .nth(1)
                .and_then(|rest| rest.split('"').nth(1))
                .unwrap_or_else(|| panic!("no layer in {inspect}"))
                .to_owned();
            layers.push(layer);
        }
        assert_ne!(layers[0], layers[1], "each platform has its own layer");
        let index = tool("tar", &["-xOf", archive.to_str().unwrap(), "index.json"]);
        assert!(index.contains(&digest), "{index}");
    }
}
