//! `cargo xtask vm`: Periscope's capture tests inside other kernels, under QEMU.
//!
//! Kernels are Debian's cloud kernels, fetched with `apt-get download` and cached in
//! `target/vm-cache/kernels/<release>/` (the `vmlinuz` and its `config`). The guest is a
//! kernel plus an initramfs holding one file, `/init`: the static `vmtest` binary, which runs
//! the tests and prints one `VMTEST …` line per result on the serial console (see
//! `vmtest/src/report.rs`). Everything runs under TCG, never KVM, so it works wherever QEMU does
//! and its timings mean nothing.
//!
//! Two architectures: x86_64 kernels boot in `qemu-system-x86_64`, arm64 ones (`*-arm64`) in
//! `qemu-system-aarch64` (`virt` machine) with `vmtest` cross-built for
//! `aarch64-unknown-linux-musl` (Debian's `gcc-aarch64-linux-gnu` links it), so its kernel
//! programs are built for arm64 too (syscall numbers, `struct pt_regs`).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::util::{self, cmd, probe, run};

/// The architectures guests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    /// The architecture of a Debian kernel release (`6.1.0-57-cloud-arm64`).
    fn of_release(release: &str) -> Arch {
        if release.ends_with("-arm64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Debian's name (package suffix and `dpkg` architecture).
    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    pub fn musl(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package holding [`Arch::qemu`].
    fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }

    /// Machine options and the serial console's name.
    fn machine(self) -> (&'static [&'static str], &'static str) {
        match self {
            Arch::X86_64 => (&[], "ttyS0"),
            Arch::Aarch64 => (&["-machine", "virt", "-cpu", "max"], "ttyAMA0"),
        }
    }

    /// The console driver the guest needs, with what breaks without it.
    fn console_config(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => (
                "CONFIG_SERIAL_8250_CONSOLE",
                "no serial console: no results",
            ),
            Arch::Aarch64 => (
                "CONFIG_SERIAL_AMBA_PL011_CONSOLE",
                "no serial console: no results",
            ),
        }
    }
}

/// Kernel series tested by default: (version prefix, Debian meta-package that depends on the
/// current kernel of the series, its architecture).
const SERIES: &[(&str, &str, Arch)] = &[
    ("6.1", "linux-image-cloud-amd64", Arch::X86_64),
    ("6.12", "linux-image-6.12-cloud-amd64", Arch::X86_64),
    ("6.1", "linux-image-cloud-arm64", Arch::Aarch64),
    ("6.12", "linux-image-6.12-cloud-arm64", Arch::Aarch64),
];

/// Kernel options the tests need, with what breaks without them.
const NEEDED_CONFIG: &[(&str, &str)] = &[
    ("CONFIG_BPF_SYSCALL", "no bpf() syscall"),
    ("CONFIG_BPF_EVENTS", "no BPF programs on tracepoints"),
    ("CONFIG_FTRACE_SYSCALLS", "no syscalls:* tracepoints"),
    (
        "CONFIG_DEBUG_INFO_BTF",
        "no kernel BTF: btf.* tests are skipped",
    ),
    ("CONFIG_BLK_DEV_INITRD", "cannot boot an initramfs"),
    ("CONFIG_DEVTMPFS", "no /dev in the guest"),
];

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Kernel to test, by version prefix: `6.1`, `6.12`, `6.1.0-56` (repeatable). Default:
    /// the 6.1 and 6.12 cloud kernels plus every kernel already cached.
    #[arg(long = "kernel", value_name = "VERSION")]
    pub kernels: Vec<String>,
    /// Only kernels of this architecture (repeatable). Default: both.
    #[arg(long = "arch", value_name = "ARCH")]
    pub arches: Vec<Arch>,
    /// Seconds one guest may run before it is killed and counted as failed (arm64 guests,
    /// emulated instruction by instruction, get twice as long).
    #[arg(long, default_value_t = 240, value_name = "SECONDS")]
    pub timeout: u64,
}

pub fn vm(args: &VmArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cache = util::root().join("target/vm-cache");
    fs::create_dir_all(cache.join("kernels"))?;
    let kernels = select_kernels(&cache, &args.kernels, &args.arches)?;
    let arches: BTreeSet<Arch> = kernels.iter().map(|k| k.arch).collect();
    let mut initramfs = Vec::new();
    for arch in arches {
        ensure_tools(arch)?;
        let init = build_vmtest(arch)?;
        let path = cache.join(format!("initramfs-{}.cpio", arch.debian()));
        write_initramfs(&init, &path)?;
        initramfs.push((arch, path));
    }

    let mut results = Vec::new();
    for kernel in &kernels {
        check_config(kernel);
        let initramfs = &initramfs
            .iter()
            .find(|(arch, _)| *arch == kernel.arch)
            .expect("an initramfs per architecture")
            .1;
        let timeout = Duration::from_secs(match kernel.arch {
            Arch::X86_64 => args.timeout,
            Arch::Aarch64 => args.timeout * 2,
        });
        let mut run = boot(kernel, initramfs, timeout)?;
        if run.ended_early() {
            // A guest that stops before reporting, with no test failed (seen once in CI on
            // 6.12 under TCG, not reproduced in 6 local runs), is booted once more. Its console
            // tail stays in the log, so a kernel crash our programs cause is still visible.
            println!(
                "{}: the guest ended without VMTEST-DONE after {} tests; booting it once more. \
                 Its last console lines:\n{}",
                run.kernel,
                run.tests.len(),
                run.tail.join("\n")
            );
            run = boot(kernel, initramfs, timeout)?;
        }
        results.push(run);
    }
    print_table(&results);
    println!("cargo xtask vm: {:.0?} in all", started.elapsed());
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        for run in results.iter().filter(|r| !r.ok()) {
            println!(
                "{}: last console lines:\n{}",
                run.kernel,
                run.tail.join("\n")
            );
        }
        bail!("failures on {}", failed.join(", "));
    }
    Ok(())
}

/// Installs what guests of `arch` need if missing (idempotent): QEMU, and for arm64 the cross
/// linker and the Rust target (the musl target of the host comes with `xtask setup`).
fn ensure_tools(arch: Arch) -> anyhow::Result<()> {
    let mut packages = Vec::new();
    if probe(arch.qemu(), &["--version"]).is_none() {
        packages.push(arch.qemu_package());
    }
    if !packages.is_empty() {
        let install = || {
            run(cmd("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        if install().is_err() {
            run(cmd("apt-get").arg("update"))?;
            install()?;
        }
    }
    ensure_cross_tools(arch)
}

/// Installs what building a static binary for `arch` needs if missing (idempotent): the Rust
/// musl target, and for arm64 the cross compiler with its C headers (ring, in the agent,
/// compiles C; glibc's headers serve its freestanding code, musl's runtime comes with Rust).
pub fn ensure_cross_tools(arch: Arch) -> anyhow::Result<()> {
    let headers = Path::new("/usr/aarch64-linux-gnu/include/stdint.h");
    if arch == Arch::Aarch64
        && (probe(CROSS_LINKER, &["--version"]).is_none() || !headers.is_file())
    {
        let install = || {
            run(cmd("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"])
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        if install().is_err() {
            run(cmd("apt-get").arg("update"))?;
            install()?;
        }
    }
    let installed = probe("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == arch.musl()) {
        run(cmd("rustup").args(["target", "add", arch.musl()]))?;
    }
    Ok(())
}

/// Points a cargo build for `arch`'s musl target at the cross linker and C compiler (ring, in
/// the agent, builds C).
pub fn cross_env(arch: Arch, build: &mut Command) {
    if arch == Arch::Aarch64 {
        build
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
                CROSS_LINKER,
            )
            .env("CC_aarch64_unknown_linux_musl", CROSS_LINKER)
            .env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar");
    }
}

/// Links the arm64 `vmtest` (Rust's musl target brings its own C runtime; gcc only links).
const CROSS_LINKER: &str = "aarch64-linux-gnu-gcc";

/// A kernel ready to boot.
struct Kernel {
    release: String,
    dir: PathBuf,
    arch: Arch,
}

/// Cached kernels matching the selectors (and architectures, when given), fetching a known
/// series when nothing cached matches.
fn select_kernels(
    cache: &Path,
    selectors: &[String],
    arches: &[Arch],
) -> anyhow::Result<Vec<Kernel>> {
    let wanted = |arch: Arch| arches.is_empty() || arches.contains(&arch);
    let kernels_dir = cache.join("kernels");
    let cached = || -> anyhow::Result<BTreeSet<String>> {
        let mut releases = BTreeSet::new();
        for entry in fs::read_dir(&kernels_dir)? {
            let entry = entry?;
            if entry.path().join("vmlinuz").is_file() {
                releases.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        releases.retain(|r| wanted(Arch::of_release(r)));
        Ok(releases)
    };
    let selectors: Vec<String> = if selectors.is_empty() {
        let mut all: Vec<String> = SERIES
            .iter()
            .filter(|(.., arch)| wanted(*arch))
            .map(|(s, ..)| (*s).to_owned())
            .collect();
        all.extend(cached()?);
        all
    } else {
        selectors.to_vec()
    };
    let mut apt_updated = false;
    let mut chosen = BTreeSet::new();
    for selector in &selectors {
        let mut found: Vec<String> = cached()?
            .into_iter()
            .filter(|r| version_matches(r, selector))
            .collect();
        if found.is_empty() {
            // `6.1` names a series; `6.1.0-56` names a kernel inside one.
            for (series, meta, arch) in SERIES.iter().filter(|(.., arch)| wanted(*arch)) {
                if version_matches(series, selector) || version_matches(selector, series) {
                    let release = fetch_kernel(&kernels_dir, meta, *arch, &mut apt_updated)?;
                    if version_matches(&release, selector) {
                        found.push(release);
                    }
                }
            }
        }
        if found.is_empty() {
            let known: Vec<String> = SERIES
                .iter()
                .map(|(s, _, arch)| format!("{s} {}", arch.debian()))
                .collect();
            bail!(
                "--kernel {selector}: no cached kernel matches and the known series ({}) do not provide it; cached: {:?}",
                known.join(", "),
                cached()?
            );
        }
        chosen.extend(found);
    }
    Ok(chosen
        .into_iter()
        .map(|release| Kernel {
            dir: kernels_dir.join(&release),
            arch: Arch::of_release(&release),
            release,
        })
        .collect())
}

/// `release` starts with `prefix` at a version-component boundary: `6.1` matches
/// `6.1.0-56-cloud-amd64` but not `6.12.117`.
fn version_matches(release: &str, prefix: &str) -> bool {
    release
        .strip_prefix(prefix)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Downloads the kernel `meta` depends on and keeps its `vmlinuz` and `config`; returns the
/// release (`uname -r`). A foreign architecture's packages need it added to dpkg (which only
/// widens what `apt-get update` indexes; nothing of it is installed).
fn fetch_kernel(
    kernels_dir: &Path,
    meta: &str,
    arch: Arch,
    apt_updated: &mut bool,
) -> anyhow::Result<String> {
    let native = probe("dpkg", &["--print-architecture"]).unwrap_or_default();
    if native.trim() != arch.debian() {
        let foreign = probe("dpkg", &["--print-foreign-architectures"]).unwrap_or_default();
        if !foreign.lines().any(|l| l.trim() == arch.debian()) {
            run(cmd("dpkg").args(["--add-architecture", arch.debian()]))?;
            run(cmd("apt-get").arg("update"))?;
            *apt_updated = true;
        }
    }
    let meta = format!("{meta}:{}", arch.debian());
    let package = match kernel_package(&meta, arch) {
        Some(p) => p,
        None if !*apt_updated => {
            run(cmd("apt-get").arg("update"))?;
            *apt_updated = true;
            kernel_package(&meta, arch).with_context(|| format!("apt knows no package {meta}"))?
        }
        None => bail!("apt knows no package {meta}"),
    };
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_owned();
    let dir = kernels_dir.join(&release);
    if dir.join("vmlinuz").is_file() {
        return Ok(release);
    }
    let work = kernels_dir.join(format!(".fetch-{release}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    run(Command::new("apt-get")
        .args(["download", &format!("{package}:{}", arch.debian())])
        .current_dir(&work))?;
    let deb = fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let boot = tree.join("boot");
    fs::create_dir_all(&dir)?;
    fs::copy(boot.join(format!("vmlinuz-{release}")), dir.join("vmlinuz"))
        .with_context(|| format!("{package} has no boot/vmlinuz-{release}"))?;
    // The config is only for the feature check; a package without one still boots.
    let _ = fs::copy(boot.join(format!("config-{release}")), dir.join("config"));
    fs::remove_dir_all(&work)?;
    Ok(release)
}

/// The `linux-image-<release>` package a meta-package (`<name>:<arch>`) depends on, without
/// the `:<arch>` that apt adds to a foreign architecture's packages.
fn kernel_package(meta: &str, arch: Arch) -> Option<String> {
    let out = probe("apt-cache", &["depends", meta])?;
    let suffix = format!("-{}", arch.debian());
    out.lines().find_map(|line| {
        let dep = line.trim().strip_prefix("Depends:")?.trim();
        let dep = dep.split(':').next().unwrap_or(dep);
        (dep.starts_with("linux-image-") && dep.ends_with(&suffix)).then(|| dep.to_owned())
    })
}

/// Warns about kernel options the tests need that the kernel's config lacks.
fn check_config(kernel: &Kernel) {
    let Ok(config) = fs::read_to_string(kernel.dir.join("config")) else {
        println!(
            "{}: no config cached; cannot check kernel options",
            kernel.release
        );
        return;
    };
    let mut missing = 0;
    let needed = NEEDED_CONFIG
        .iter()
        .copied()
        .chain([kernel.arch.console_config()]);
    for (option, consequence) in needed.clone() {
        let set = config
            .lines()
            .any(|l| l == format!("{option}=y") || l == format!("{option}=m"));
        if !set {
            println!("{}: {option} is not set: {consequence}", kernel.release);
            missing += 1;
        }
    }
    if missing == 0 {
        let names: Vec<&str> = needed.map(|(o, _)| o).collect();
        println!("{}: kernel config has {}", kernel.release, names.join(" "));
    }
}

/// Builds `vmtest` as a static musl binary for `arch`; returns its path.
fn build_vmtest(arch: Arch) -> anyhow::Result<PathBuf> {
    let mut build = cmd("cargo");
    build.args([
        "build",
        "--release",
        "-p",
        "vmtest",
        "--target",
        arch.musl(),
    ]);
    cross_env(arch, &mut build);
    run(&mut build)?;
    Ok(util::target_dir().join(format!("{}/release/vmtest", arch.musl())))
}

/// Writes an uncompressed newc cpio archive holding `/init` and the directories it mounts on,
/// plus `/dev/console` so the kernel gives init a console before devtmpfs is mounted.
fn write_initramfs(init: &Path, out: &Path) -> anyhow::Result<()> {
    let binary = fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    let mut archive = Vec::with_capacity(binary.len() + 4096);
    let dirs = ["dev", "proc", "sys", "tmp"];
    let mut ino = 1;
    for dir in dirs {
        cpio_entry(&mut archive, ino, dir, 0o040_755, (0, 0), &[]);
        ino += 1;
    }
    cpio_entry(&mut archive, ino, "dev/console", 0o020_600, (5, 1), &[]);
    cpio_entry(&mut archive, ino + 1, "init", 0o100_755, (0, 0), &binary);
    cpio_entry(&mut archive, 0, "TRAILER!!!", 0, (0, 0), &[]);
    fs::write(out, archive).with_context(|| format!("writing {}", out.display()))
}

/// One newc entry: a 110-byte ASCII header, the name, the data, each padded to 4 bytes.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        if mode & 0o040_000 != 0 { 2 } else { 1 },
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One test's result in one kernel.
struct TestResult {
    name: String,
    status: String,
    detail: String,
}

/// What one guest reported.
struct KernelRun {
    kernel: String,
    /// `VMTEST-KERNEL` line: what the guest saw.
    facts: Option<String>,
    tests: Vec<TestResult>,
    /// The `VMTEST-DONE` line, if the guest got that far.
    done: Option<String>,
    timed_out: bool,
    elapsed: Duration,
    /// The console's last lines, for the summary of a guest that failed.
    tail: Vec<String>,
}

/// Console lines a failed guest's summary repeats.
const TAIL_LINES: usize = 15;

impl KernelRun {
    fn ok(&self) -> bool {
        self.done.is_some() && !self.timed_out && self.tests.iter().all(|t| t.status != "FAIL")
    }

    /// The guest stopped (no timeout) before reporting its end, and no test had failed.
    fn ended_early(&self) -> bool {
        self.done.is_none() && !self.timed_out && self.tests.iter().all(|t| t.status != "FAIL")
    }
}

/// Boots `kernel` with the initramfs and collects the results from its serial console.
fn boot(kernel: &Kernel, initramfs: &Path, timeout: Duration) -> anyhow::Result<KernelRun> {
    println!("\n== {} (QEMU, TCG) ==", kernel.release);
    let mut qemu = Command::new(kernel.arch.qemu());
    let (machine, console) = kernel.arch.machine();
    // TCG, never KVM: guests crash under KVM on this host, and TCG runs anywhere.
    qemu.args(machine)
        .args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-kernel"])
        .arg(kernel.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            &format!("console={console} panic=-1 quiet"),
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", util::display(&qemu));
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("starting {}", kernel.arch.qemu()))?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).replace('\r', "");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut run = KernelRun {
        kernel: kernel.release.clone(),
        facts: None,
        tests: Vec::new(),
        done: None,
        timed_out: false,
        elapsed: Duration::ZERO,
        tail: Vec::new(),
    };
    let mut output = Vec::new();
    let deadline = started + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                parse_line(&line, &mut run);
                output.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                run.timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    run.elapsed = started.elapsed();
    run.tail = output[output.len().saturating_sub(TAIL_LINES)..].to_vec();
    println!(
        "{}: guest finished in {:.0?} ({status}){}",
        kernel.release,
        run.elapsed,
        if run.timed_out {
            format!(", killed after the {}s timeout", timeout.as_secs())
        } else {
            String::new()
        }
    );
    if !run.ok() {
        println!(
            "--- full guest output ({}) ---\n{}\n--- end of guest output ---",
            kernel.release,
            output.join("\n")
        );
    }
    Ok(run)
}

/// Picks protocol lines out of the console (kernel messages may precede them on a line).
fn parse_line(line: &str, run: &mut KernelRun) {
    if let Some(at) = line.find("VMTEST-KERNEL ") {
        let facts = line[at + "VMTEST-KERNEL ".len()..].trim().to_owned();
        println!("  guest: {facts}");
        run.facts = Some(facts);
    } else if let Some(at) = line.find("VMTEST-DONE ") {
        let done = line[at + "VMTEST-DONE ".len()..].trim().to_owned();
        println!("  {done}");
        run.done = Some(done);
    } else if let Some(at) = line.find("VMTEST ") {
        let rest = &line[at + "VMTEST ".len()..];
        let mut parts = rest.splitn(3, ' ');
        let (Some(name), Some(status)) = (parts.next(), parts.next()) else {
            return;
        };
        let detail = parts.next().unwrap_or("").to_owned();
        println!("  {name:<24} {status:<4} {detail}");
        run.tests.push(TestResult {
            name: name.to_owned(),
            status: status.to_owned(),
            detail,
        });
    } else if line.starts_with("VMTEST-SETUP ") {
        println!("  {line}");
    }
}

/// Per-test rows, per-kernel columns.
fn print_table(runs: &[KernelRun]) {
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        for test in &run.tests {
            if !names.contains(&test.name.as_str()) {
                names.push(&test.name);
            }
        }
    }
    let width = names
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(0)
        .max("(guest)".len());
    let col = runs
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!();
    print!("{:<width$}", "test");
    for run in runs {
        print!("  {:<col$}", run.kernel);
    }
    println!();
    for name in &names {
        print!("{name:<width$}");
        for run in runs {
            let cell = run
                .tests
                .iter()
                .find(|t| t.name == *name)
                .map_or("-", |t| t.status.as_str());
            print!("  {cell:<col$}");
        }
        println!();
    }
    print!("{:<width$}", "(guest)");
    for run in runs {
        let cell = match (&run.done, run.timed_out) {
            (_, true) => format!("TIMEOUT {:.0?}", run.elapsed),
            (Some(_), false) => format!("done {:.0?}", run.elapsed),
            (None, false) => "no VMTEST-DONE".to_owned(),
        };
        print!("  {cell:<col$}");
    }
    println!();
    for run in runs {
        if let Some(facts) = &run.facts {
            println!("{}: {facts}", run.kernel);
        }
        for test in run.tests.iter().filter(|t| t.status != "PASS") {
            println!(
                "{}: {} {}: {}",
                run.kernel, test.name, test.status, test.detail
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_respect_component_boundaries() {
        assert!(version_matches("6.1.0-56-cloud-amd64", "6.1"));
        assert!(version_matches("6.1.0-56-cloud-amd64", "6.1.0-56"));
        assert!(!version_matches("6.12.117+deb12-cloud-amd64", "6.1"));
        assert!(version_matches("6.12.117+deb12-cloud-amd64", "6.12"));
        assert!(!version_matches("6.1.0-5-cloud-amd64", "6.1.0-56"));
    }

    #[test]
    fn cpio_entries_are_aligned_newc() {
        let mut out = Vec::new();
        cpio_entry(&mut out, 1, "init", 0o100_755, (0, 0), b"abc");
        assert!(out.starts_with(b"070701"));
        assert!(out.len().is_multiple_of(4));
        // Header (110) + "init\0" padded to 116, + 3 data bytes padded to 120.
        assert_eq!(out.len(), 120);
    }

    #[test]
    fn protocol_lines_are_parsed_after_kernel_noise() {
        let mut run = KernelRun {
            kernel: "k".into(),
            facts: None,
            tests: Vec::new(),
            done: None,
            timed_out: false,
            elapsed: Duration::ZERO,
            tail: Vec::new(),
        };
        assert!(run.ended_early());
        parse_line(
            "[    1.0] random: VMTEST btf.attach PASS hooks=tp_btf",
            &mut run,
        );
        parse_line("VMTEST-DONE passed=1 failed=0 skipped=0", &mut run);
        assert!(run.ok() && !run.ended_early());
        assert_eq!(run.tests[0].name, "btf.attach");
        assert_eq!(run.tests[0].detail, "hooks=tp_btf");
        assert!(run.ok());
    }
}
