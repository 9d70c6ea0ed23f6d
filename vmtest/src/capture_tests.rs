//! The capture tests, run once per syscall hook mode with the agent in this process.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_ebpf::names;
use anyhow::{bail, Context};
use periscope::capture::preflight::{self, KernelFacts};
use periscope::capture::{Capture, HookMode, Settings};
use periscope::export::prometheus::Metrics;
use periscope::pipeline::Reader;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::report::{self, test, Outcome};
use crate::worker::{self, Serve};

/// How long the metrics may take to show every exchange after the worker exits.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a worker may take to exit once told to.
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs preflight, then every test for both hook modes.
pub fn run_all() {
    let facts = match preflight::check() {
        Ok(facts) => facts,
        Err(e) => {
            report::record("preflight", Outcome::Fail(format!("{e:#}")));
            return;
        }
    };
    report::line(&format!(
        "VMTEST-KERNEL release={} btf={}",
        facts.release,
        if facts.btf { "yes" } else { "no" }
    ));
    test("none.cost", pipe_cost);
    test("syscalls.default-events", || default_syscall_events(&facts));
    for mode in [HookMode::Fexit, HookMode::Btf, HookMode::Raw] {
        run_mode(mode, &facts);
    }
    crate::trace_tests::run_all(&facts);
}

fn mode_name(mode: HookMode) -> &'static str {
    match mode {
        HookMode::Fexit => "fexit",
        HookMode::Btf => "btf",
        HookMode::Raw => "raw",
        HookMode::Auto => "auto",
    }
}

fn run_mode(mode: HookMode, facts: &KernelFacts) {
    let prefix = mode_name(mode);
    let mut session = None;
    // Set when attaching was skipped (no BTF) rather than failed.
    let mut skipped = false;
    test(&format!("{prefix}.attach"), || {
        match Session::start(mode, facts) {
            // Every kernel of the matrix has `bpf_loop` (5.17+): framing must load there.
            Ok(s) if s.hooks == mode && !s.framing => {
                Outcome::Fail("the framing exit program did not load".into())
            }
            Ok(s) if s.hooks == mode => {
                let detail = format!(
                    "hooks={} framing=on programs={}",
                    s.hooks.as_str(),
                    s.programs.len()
                );
                session = Some(s);
                Outcome::Pass(detail)
            }
            Ok(s) => Outcome::Fail(format!(
                "asked for {}, got {}",
                mode.as_str(),
                s.hooks.as_str()
            )),
            Err(e) if matches!(mode, HookMode::Btf | HookMode::Fexit) && !facts.btf => {
                skipped = true;
                Outcome::Skip(format!("kernel has no BTF: {e:#}"))
            }
            // arm64 has BPF trampolines for kernel functions only from 6.4 (ftrace direct
            // calls): before, attaching answers ENOTSUPP and `auto` uses tp_btf.
            Err(e)
                if mode == HookMode::Fexit
                    && cfg!(target_arch = "aarch64")
                    && format!("{e:#}").contains("os error 524") =>
            {
                skipped = true;
                Outcome::Skip(format!(
                    "no fexit on kernel functions (arm64 before 6.4): {e:#}"
                ))
            }
            Err(e) => Outcome::Fail(format!("{e:#}")),
        }
    });
    let names = [
        "http-threads",
        "http-threads-port",
        "http-fork",
        "http-fork-port",
        "detach",
        "tls",
    ]
    .map(|t| format!("{prefix}.{t}"));
    let Some(mut session) = session else {
        for name in names {
            let why = "capture did not start".to_owned();
            report::record(
                &name,
                if skipped {
                    Outcome::Skip(why)
                } else {
                    Outcome::Fail(why)
                },
            );
        }
        return;
    };
    for (i, serve) in [(0, Serve::Threads), (2, Serve::Fork)] {
        // One worker run gives two results: exact counts, and the server port label.
        let mut labels = None;
        test(&names[i], || {
            let (exact, port) = http_exact_counts(&session, serve);
            labels = Some(port);
            exact
        });
        let labels = labels.unwrap_or_else(|| Outcome::Fail("counts test did not finish".into()));
        report::record(&names[i + 1], labels);
    }
    test(&names[5], || tls_exact_counts(&mut session));
    test(&format!("{prefix}.cost"), pipe_cost);
    test(&format!("{prefix}.syscall-stats"), || {
        syscall_stats(mode, facts)
    });
    test(&names[4], || session.detach());
}

/// Calls the syscall worker makes.
const SYSCALL_CALLS: u64 = 1000;

/// Syscall statistics on this kernel and hook mechanism: a second capture with statistics for
/// `getppid` (with fexit I/O hooks they get exit programs of their own), and a worker in a fresh
/// cgroup that calls it exactly `SYSCALL_CALLS` times.
/// Every syscall of the `default` statistics selection has its entry event under the name the
/// agent's table of this architecture gives it (the entry hook attaches to those events).
fn default_syscall_events(facts: &KernelFacts) -> Outcome {
    use periscope::syscalls::{enter_event, syscall_name, Selection};

    let selection = match Selection::parse("default") {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(e),
    };
    let events = std::path::Path::new(facts.tracefs).join("events/syscalls");
    let mut missing = Vec::new();
    let mut found = 0;
    let mut newer = Vec::new();
    for nr in selection.numbers() {
        match enter_event(nr) {
            Some(event) if events.join(&event).is_dir() => found += 1,
            // Newer than this kernel (futex_wait came with 6.7): only ones it has must have
            // their event. Only such syscalls are called, with null arguments.
            Some(_) if !kernel_has_syscall(nr) => newer.push(syscall_name(nr)),
            Some(event) => missing.push(format!("{} ({nr}): no {event}", syscall_name(nr))),
            None => missing.push(format!("{nr}: not in the table")),
        }
    }
    if missing.is_empty() {
        Outcome::Pass(format!(
            "{found} events; newer than this kernel: {}",
            if newer.is_empty() {
                "none".to_owned()
            } else {
                newer.join(", ")
            }
        ))
    } else {
        Outcome::Fail(missing.join(", "))
    }
}

/// Whether the running kernel implements syscall `nr`: called with null arguments it fails
/// with anything but `ENOSYS`. Only for the syscalls whose event was missing (`futex_wait` and
/// the like, harmless with null arguments).
fn kernel_has_syscall(nr: u32) -> bool {
    // These would make a process even with null arguments: every kernel has them.
    let name = periscope::syscalls::syscall_name(nr);
    if ["clone", "clone3", "fork", "vfork"].contains(&name.as_str()) {
        return true;
    }
    // SAFETY: null and zero arguments; see above for which syscalls get here.
    let ret = unsafe { libc::syscall(libc::c_long::from(nr as i32), 0, 0, 0, 0, 0, 0) };
    !(ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

fn syscall_stats(mode: HookMode, facts: &KernelFacts) -> Outcome {
    match syscall_stats_counted(mode, facts) {
        Ok((how, counted)) if counted == SYSCALL_CALLS => {
            Outcome::Pass(format!("{counted} getppid counted, statistics on {how}"))
        }
        Ok((how, counted)) => Outcome::Fail(format!(
            "{counted} getppid counted, {SYSCALL_CALLS} made (statistics on {how})"
        )),
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn syscall_stats_counted(mode: HookMode, facts: &KernelFacts) -> anyhow::Result<(String, u64)> {
    use periscope::syscalls::{
        cgroup_labels, Exported, Poller, PollerSettings, Selection, SyscallLabels,
    };

    let settings = Settings {
        capture_bytes: 4096,
        ringbuf_bytes: 1 << 20,
        hooks: mode,
        framing: true,
        bpf_stats: false,
        syscalls: Some(periscope::capture::SyscallSettings {
            filter: Selection::parse("getppid")
                .map_err(anyhow::Error::msg)?
                .filter(),
            max_series: 64,
            separate_exit: false,
            entry: periscope::capture::SyscallEntry::Auto,
        }),
        udp_flows: false,
        connect_hook: periscope::capture::ConnectHook::Off,
        tls: false,
    };
    let (mut capture, _maps) = Capture::start(&settings, facts.tracefs)?;
    let how = capture.syscall_stats.as_deref().unwrap_or("off").to_owned();
    let table = capture
        .take_syscall_table()?
        .context("no syscall statistics table")?;
    let exported = Arc::new(std::sync::Mutex::new(Exported::default()));
    let mut poller = Poller::new(
        table,
        exported.clone(),
        PollerSettings {
            grace: Duration::from_secs(60),
        },
    );
    let name = format!("vmtest-{}", mode_name(mode));
    let dir = std::path::Path::new("/sys/fs/cgroup").join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding my own executable")?;
    let status = Command::new(exe)
        .args(["--role", "syscall-worker"])
        .arg(&dir)
        .arg(SYSCALL_CALLS.to_string())
        .status()
        .context("running the syscall worker")?;
    if !status.success() {
        bail!("the syscall worker failed: {status}");
    }
    poller.poll(Instant::now());
    let labels = SyscallLabels {
        syscall: "getppid".into(),
        cgroup: cgroup_labels(Some(&format!("/{name}")), None),
    };
    let counted = exported
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .totals(&labels)
        .map_or(0, |t| t.count());
    drop(poller);
    drop(capture);
    let _ = std::fs::remove_dir(&dir);
    Ok((how, counted))
}

/// Iterations of the per-syscall cost loop.
const COST_ITERATIONS: u32 = 200_000;

/// ns per syscall of a 1-byte pipe write + read loop (hooked syscalls on an fd Periscope does
/// not track) and of `getppid` (a syscall no mechanism hooks), for comparing hook mechanisms
/// within one guest. TCG is no timing reference across machines.
fn pipe_cost() -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Outcome::Fail(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let mut byte = [0u8; 1];
    let start = std::time::Instant::now();
    for _ in 0..COST_ITERATIONS {
        // SAFETY: valid fds and a 1-byte buffer.
        unsafe {
            libc::write(fds[1], byte.as_ptr().cast(), 1);
            libc::read(fds[0], byte.as_mut_ptr().cast(), 1);
        }
    }
    let pipe_ns = start.elapsed().as_nanos() as f64 / (2.0 * COST_ITERATIONS as f64);
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    // A syscall no mechanism hooks: only the every-syscall hooks (tp_btf, raw) cost here.
    let start = std::time::Instant::now();
    for _ in 0..COST_ITERATIONS {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let other_ns = start.elapsed().as_nanos() as f64 / COST_ITERATIONS as f64;
    Outcome::Pass(format!(
        "pipe {pipe_ns:.0} ns/syscall, getppid {other_ns:.0} ns/syscall"
    ))
}

/// A running capture with its reader and registry.
struct Session {
    /// `None` once detached.
    capture: Option<Capture>,
    /// The mechanism the syscall hook ended up on.
    hooks: HookMode,
    /// The I/O hooks frame PostgreSQL and Kafka messages.
    framing: bool,
    registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    reader: Option<JoinHandle<anyhow::Result<()>>>,
    /// Ids of the kernel programs this capture loaded.
    programs: BTreeSet<u32>,
}

impl Session {
    fn start(mode: HookMode, facts: &KernelFacts) -> anyhow::Result<Session> {
        let before = periscope_programs()?;
        let settings = Settings {
            capture_bytes: 4096,
            ringbuf_bytes: 8 << 20,
            hooks: mode,
            framing: true,
            bpf_stats: false,
            syscalls: None,
            udp_flows: false,
            connect_hook: periscope::capture::ConnectHook::Auto,
            tls: true,
        };
        let (capture, maps) = Capture::start(&settings, facts.tracefs)?;
        let programs = periscope_programs()?.difference(&before).copied().collect();
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let (stop, reader) = spawn_reader(Reader::new(maps, metrics))?;
        Ok(Session {
            hooks: capture.hooks,
            framing: capture.framing,
            capture: Some(capture),
            registry,
            stop: Some(stop),
            reader: Some(reader),
            programs,
        })
    }

    /// Stops the reader, drops the capture and checks that the kernel unloaded every program.
    fn detach(&mut self) -> Outcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(reader) = self.reader.take() {
            match reader.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Outcome::Fail(format!("the reader failed: {e:#}")),
                Err(_) => return Outcome::Fail("the reader panicked".into()),
            }
        }
        let loaded = self.programs.len();
        drop(self.capture.take());
        // The kernel frees programs after an RCU grace period: poll briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let remaining = match periscope_programs() {
                Ok(ids) => ids.intersection(&self.programs).count(),
                Err(e) => return Outcome::Fail(format!("{e:#}")),
            };
            if remaining == 0 {
                return Outcome::Pass(format!("{loaded} programs loaded, 0 remain"));
            }
            if Instant::now() > deadline {
                return Outcome::Fail(format!("{remaining} of {loaded} programs still loaded"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `reader` on a thread of its own (a current-thread runtime) until the sender is used.
pub fn spawn_reader(
    reader: Reader,
) -> anyhow::Result<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)> {
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                tokio::select! {
                    result = reader.run() => result,
                    _ = stopped => Ok(()),
                }
            })
        })?;
    Ok((stop, thread))
}

/// Ids of loaded kernel programs named like Periscope's.
fn periscope_programs() -> anyhow::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for program in aya::programs::loaded_programs() {
        let program = program.context("listing loaded BPF programs")?;
        // The kernel keeps at most 15 bytes of a name.
        if names::PROGRAMS
            .iter()
            .any(|name| names::kernel_name(name) == program.name())
        {
            ids.insert(program.id());
        }
    }
    Ok(ids)
}

/// Exchanges counted for one worker, by side and outcome (`[200 on /items/{id}, 404 on
/// /missing]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Server series labelled with the worker's port.
    server: [u64; 2],
    client: [u64; 2],
    /// Server series labelled `server_port="0"`: the agent counted the exchange but could not
    /// tell which listener the connection came from.
    unattributed: [u64; 2],
    /// Series for the worker's port with any other route or status.
    other: u64,
}

impl Counts {
    fn expected() -> Counts {
        let mix = [
            u64::from(worker::KEEPALIVE_ITEMS + worker::FRESH_ITEMS),
            u64::from(worker::MISSING),
        ];
        Counts {
            server: mix,
            client: mix,
            unattributed: [0; 2],
            other: 0,
        }
    }

    /// Sums the `_count` series of the request-duration histograms for `port` (and the
    /// server's `server_port="0"` series) from the text exposition.
    fn parse(exposition: &str, port: u16) -> Counts {
        let port_label = format!("server_port=\"{port}\"");
        let mut counts = Counts::default();
        for line in exposition.lines() {
            let server = line.starts_with("http_server_request_duration_seconds_count{");
            let client = line.starts_with("http_client_request_duration_seconds_count{");
            let ours = line.contains(&port_label);
            let unattributed = server && line.contains("server_port=\"0\"");
            if !(server || client) || !(ours || unattributed) {
                continue;
            }
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let outcome = if line.contains("http_route=\"/items/{id}\"")
                && line.contains("http_response_status_code=\"200\"")
            {
                Some(0)
            } else if line.contains("http_route=\"/missing\"")
                && line.contains("http_response_status_code=\"404\"")
            {
                Some(1)
            } else {
                None
            };
            let side = match (unattributed, server) {
                (true, _) => &mut counts.unattributed,
                (false, true) => &mut counts.server,
                (false, false) => &mut counts.client,
            };
            match outcome {
                Some(i) => side[i] += value as u64,
                None if ours => counts.other += value as u64,
                None => {}
            }
        }
        counts
    }

    /// `self - base` for the unattributed series (which earlier tests may have fed).
    fn since(mut self, base: &Counts) -> Counts {
        for i in 0..2 {
            self.unattributed[i] = self.unattributed[i].saturating_sub(base.unattributed[i]);
        }
        self
    }

    /// Server exchanges counted with or without the right port.
    fn combined(&self) -> Counts {
        Counts {
            server: [
                self.server[0] + self.unattributed[0],
                self.server[1] + self.unattributed[1],
            ],
            unattributed: [0; 2],
            ..*self
        }
    }

    fn exceeds(&self, limit: &Counts) -> bool {
        (0..2).any(|i| self.server[i] > limit.server[i] || self.client[i] > limit.client[i])
            || self.other > limit.other
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server 200={} 404={}, client 200={} 404={}, other={}",
            self.server[0], self.server[1], self.client[0], self.client[1], self.other
        )?;
        if self.unattributed != [0; 2] {
            write!(
                f,
                ", server_port=\"0\" 200={} 404={}",
                self.unattributed[0], self.unattributed[1]
            )?;
        }
        Ok(())
    }
}

/// The TLS uprobes on this kernel: probes this binary's own `SSL_read`/`SSL_write`
/// (`worker::tls`; the guest has no OpenSSL) and runs the worker's mix through them. Exact
/// counts on both sides mean the probes attached, the plaintext was attributed to the socket
/// used inside each call, and the socket bytes were not counted as well.
fn tls_exact_counts(session: &mut Session) -> Outcome {
    let Some(capture) = session.capture.as_mut() else {
        return Outcome::Fail("capture did not start".into());
    };
    if !capture.tls {
        return Outcome::Fail("the TLS uprobes did not load (see the log)".into());
    }
    if let Err(e) = capture.probe_tls_file(std::path::Path::new("/proc/self/exe")) {
        return Outcome::Fail(format!("probing SSL_read/SSL_write: {}", e.message()));
    }
    let (exact, _) = http_exact_counts(session, Serve::Tls);
    exact
}

/// Runs a worker; returns whether the metrics count exactly its exchanges on both sides, and
/// whether every server exchange carries the worker's port.
fn http_exact_counts(session: &Session, serve: Serve) -> (Outcome, Outcome) {
    let base = Counts::parse(&encode(&session.registry), 0);
    let mut worker = match Worker::start(&["--role", "http-worker", serve.as_str()]) {
        Ok(worker) => worker,
        Err(e) => return not_run(format!("worker: {e:#}")),
    };
    let outcomes = match worker.wait_traffic() {
        Ok(port) => check_counts(session, port, &base),
        Err(e) => not_run(format!("worker: {e:#}")),
    };
    match (worker.finish(), outcomes) {
        (Err(e), (Outcome::Pass(_), labels)) => (Outcome::Fail(format!("worker: {e:#}")), labels),
        (_, outcomes) => outcomes,
    }
}

fn not_run(why: String) -> (Outcome, Outcome) {
    (
        Outcome::Fail(why),
        Outcome::Fail("counts test failed".into()),
    )
}

/// Polls the registry until the counts for `port` are exactly the worker's mix.
fn check_counts(session: &Session, port: u16, base: &Counts) -> (Outcome, Outcome) {
    let expected = Counts::expected();
    let started = Instant::now();
    let read = || Counts::parse(&encode(&session.registry), port).since(base);
    let mut counts = Counts::default();
    while started.elapsed() < SETTLE {
        counts = read();
        if counts.combined().exceeds(&expected) {
            return not_run(format!("too many: {counts}"));
        }
        if counts.combined() == expected {
            // Give late duplicates a chance to show up before calling it exact.
            std::thread::sleep(Duration::from_millis(500));
            counts = read();
            if counts.combined() != expected {
                return not_run(format!("changed after settling: {counts}"));
            }
            let exact = Outcome::Pass(format!(
                "{} after {} ms",
                counts.combined(),
                started.elapsed().as_millis()
            ));
            let labels = if counts.unattributed == [0; 2] {
                Outcome::Pass(format!("every server series has server_port=\"{port}\""))
            } else {
                Outcome::Fail(format!(
                    "{} of {} server exchanges labelled server_port=\"0\" instead of \"{port}\"",
                    counts.unattributed[0] + counts.unattributed[1],
                    expected.server[0] + expected.server[1],
                ))
            };
            return (exact, labels);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = encode(&session.registry);
    log::warn!("registry after the failed check:\n{text}");
    not_run(format!(
        "after {}s: {counts}; expected {expected}; {}",
        SETTLE.as_secs(),
        self_metrics(&text)
    ))
}

/// The self-metrics that explain a miss: events read by kind and connection outcomes.
fn self_metrics(exposition: &str) -> String {
    let mut parts = Vec::new();
    for line in exposition.lines() {
        if !line.starts_with("periscope_") || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if value != "0" && !series.starts_with("periscope_process_") {
            parts.push(format!("{series}={value}"));
        }
    }
    parts.join(" ")
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        log::warn!("encoding the registry: {e}");
    }
    text
}

/// `<self> --role …`, running.
pub struct Worker {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    pub fn start(args: &[&str]) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("finding my own executable")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the worker {args:?}"))?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        Ok(Worker { child, stdout })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker's first line, `PORT <n>`.
    pub fn port(&mut self) -> anyhow::Result<u16> {
        let port_line = self.line()?;
        port_line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("expected `PORT <n>`, got {port_line:?}"))
    }

    /// Waits until the worker has sent all its traffic (`DONE`); returns its server port.
    fn wait_traffic(&mut self) -> anyhow::Result<u16> {
        let port = self.port()?;
        let done = self.line()?;
        if done != "DONE" {
            bail!("expected `DONE`, got {done:?} (the traffic failed; see its stderr above)");
        }
        Ok(port)
    }

    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    /// Closes the worker's stdin (its signal to exit) and waits for it.
    pub fn finish(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + WORKER_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "still running {}s after being told to exit",
                    WORKER_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_port_and_unattributed_server_series() {
        let text = "\
http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/items/{id}\",server_port=\"8080\",service_name=\"init\",container_id=\"\"} 60
http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"404\",http_route=\"/missing\",server_port=\"8080\",service_name=\"init\",container_id=\"\"} 5
http_client_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/items/{id}\",server_address=\"127.0.0.1\",server_port=\"8080\",service_name=\"init\",container_id=\"\"} 60
http_client_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"404\",http_route=\"/missing\",server_address=\"127.0.0.1\",server_port=\"8080\",service_name=\"init\",container_id=\"\"} 5
http_client_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/items/{id}\",server_address=\"127.0.0.1\",server_port=\"9090\",service_name=\"init\",container_id=\"\"} 7
http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/items/{id}\",server_port=\"0\",service_name=\"unknown\",container_id=\"\"} 3
";
        // `server_port="0"` series belong to whichever test fed them: the baseline taken
        // before the worker ran removes earlier ones.
        let base = Counts::parse(text, 0);
        assert_eq!(base.unattributed, [3, 0]);
        assert_eq!(Counts::parse(text, 8080).since(&base), Counts::expected());
        let other = Counts::parse(text, 9090);
        assert_eq!((other.client, other.unattributed), ([7, 0], [3, 0]));
        assert_eq!(other.combined().server, [3, 0]);
    }
}
