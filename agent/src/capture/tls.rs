//! TLS plaintext: which files get uprobes on their TLS read and write functions, and when.
//!
//! Uprobes belong to a file (an inode), not to a process: one set of probes on a library
//! covers every process that maps it, now or later, including processes that `dlopen` it
//! late. So the agent probes each distinct file once:
//!
//! - at start, the node's own OpenSSL libraries (`libssl.so*` in the usual library directories
//!   of `/proc/1/root`), so that host processes started later are covered from their first
//!   call;
//! - every `SCAN_INTERVAL`, every `libssl.so*` that some process maps (containers bring their
//!   own copies; the file is reached through `/proc/<pid>/root`); a process whose start time
//!   and virtual size did not move since its maps were last read is not read again;
//! - at once, when a tracked connection of a process is found speaking TLS with no plaintext
//!   seen (the pipeline sends its pid): its maps are checked and, if it maps no libssl, its
//!   executable and every other file it maps executable, which catches OpenSSL or BoringSSL
//!   linked in statically with their symbols kept (nginx builds, node, the `librdkafka` in
//!   confluent-kafka's wheel).
//!
//! A file whose symbols are missing or whose probes fail is remembered and not tried again. At
//! most `MAX_FILES` files are probed; beyond, files are counted and skipped. Files no process
//! maps any more lose their probes at the next full scan.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::export::prometheus::Metrics;
use crate::internal_events::tls::{TlsLibraryProbed, TlsLibraryReleased, TlsProbeFailed};

/// How often every process's mapped files are looked at.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Files probed at most (each costs 8 uprobes).
pub const MAX_FILES: usize = 512;

/// Where a node keeps its shared libraries.
const HOST_LIBRARY_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib",
    "usr/local/lib",
    "usr/local/lib64",
];

/// A file's identity: (device, inode).
pub type FileId = (u64, u64);

/// Attaches and detaches the TLS probes of one file (`Capture` in the agent).
pub trait Prober {
    /// Probes `path`; the handle is given back to `release`.
    fn probe(&mut self, path: &Path) -> Result<Probed, ProbeError>;
    fn release(&mut self, probed: Probed);
}

/// The links of one probed file.
pub struct Probed {
    pub links: Vec<(&'static str, aya::programs::uprobe::UProbeLinkId)>,
}

#[derive(Debug)]
pub enum ProbeError {
    /// The file has no `SSL_read`/`SSL_write` symbols (stripped, or not a TLS library).
    NoSymbols(String),
    /// The kernel refused the probe.
    Attach(String),
    /// Not a 64-bit ELF file, or not readable as one.
    Unreadable(String),
    /// Its symbol tables exceed the bounds of `capture::elf` (a hostile file, or a huge
    /// executable: its TLS traffic is not decoded).
    TooLarge(String),
}

impl From<super::elf::ElfError> for ProbeError {
    fn from(e: super::elf::ElfError) -> Self {
        match e {
            super::elf::ElfError::NotElf(m) => ProbeError::Unreadable(m),
            super::elf::ElfError::TooLarge(m) => ProbeError::TooLarge(m),
        }
    }
}

impl ProbeError {
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::NoSymbols(_) => "no_symbols",
            ProbeError::Attach(_) => "attach_failed",
            ProbeError::Unreadable(_) => "unreadable",
            ProbeError::TooLarge(_) => "too_large",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ProbeError::NoSymbols(m)
            | ProbeError::Attach(m)
            | ProbeError::Unreadable(m)
            | ProbeError::TooLarge(m) => m,
        }
    }

    /// Whether the path went away while it was probed (the process mapping it exited): not
    /// a verdict on the file.
    fn process_gone(&self) -> bool {
        match self {
            ProbeError::Attach(m) | ProbeError::Unreadable(m) => {
                m.contains("os error 2)") || m.contains("os error 3)")
            }
            _ => false,
        }
    }

    /// Whether it only says the file is no TLS library (not counted for files tried because
    /// a process speaks TLS: most of its code files are not).
    fn not_tls(&self) -> bool {
        matches!(self, ProbeError::NoSymbols(_) | ProbeError::Unreadable(_))
    }
}

/// Whether a mapped file's name is an OpenSSL `libssl`: `libssl.so`, `libssl.so.3`, or a
/// copy vendored into a Python wheel (`libssl-6a9b88ec.so.3`, psycopg's binary package). NSS's
/// `libssl3.so` is not OpenSSL.
fn is_libssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.strip_prefix("libssl") {
        Some(rest) => rest.starts_with(".so") || (rest.starts_with('-') && rest.contains(".so")),
        None => false,
    }
}

/// The `libssl` files `/proc/<pid>/maps` names, as absolute paths inside the process's root.
pub fn mapped_libraries(maps: &str) -> Vec<String> {
    mapped_files(maps, |path, _| is_libssl(path))
}

/// Every file `/proc/<pid>/maps` maps executable: where OpenSSL may be linked in (a program, or
/// a library such as the `librdkafka` of confluent-kafka's wheel, which carries its own).
pub fn mapped_code(maps: &str) -> Vec<String> {
    mapped_files(maps, |_, perms| perms.contains('x'))
}

/// The files of `maps` lines that `keep(path, perms)` accepts, each once.
fn mapped_files(maps: &str, keep: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let perms = fields.nth(1).unwrap_or("");
        let Some(path) = fields.nth(3).map(str::trim_start) else {
            continue;
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") || !keep(path, perms) {
            continue;
        }
        if !out.iter().any(|p| p == path) {
            out.push(path.to_owned());
        }
    }
    out
}

/// The probed files and the ones that could not be.
pub struct Discovery<P: Prober> {
    prober: P,
    proc_root: PathBuf,
    probed: HashMap<FileId, (PathBuf, Probed)>,
    /// Files tried and failed (or over the cap), not tried again.
    refused: HashSet<FileId>,
    /// The node's own libraries (`probe_host`): probed even while no process maps them.
    host: HashSet<FileId>,
    /// Files probed that are not named `libssl` (executables, libraries with OpenSSL linked
    /// in): a full scan checks every process's code files against them.
    code: HashSet<FileId>,
    /// Processes whose maps a full scan read, by pid: their start time and virtual size then,
    /// the [`Discovery::generation`] then, and the probed files they mapped. A later full scan
    /// reads the maps again only if one of the three moved: mapping a library (a `dlopen`)
    /// grows the virtual size, so an idle process costs one read of its `stat` instead of its
    /// `maps` (1,000 processes: ~0.4 s of CPU per scan otherwise).
    scanned: HashMap<u32, (ProcessShape, u64, Vec<FileId>)>,
    /// Moves whenever what a process's scan would find may have changed: a file probed or
    /// released, or a probe that failed because its process went away (to be tried again).
    generation: u64,
    metrics: Option<Arc<Metrics>>,
}

/// A process's start time and virtual size (`/proc/<pid>/stat` fields 22 and 23).
type ProcessShape = (u64, u64);

/// `(starttime, vsize)` from `/proc/<pid>/stat`; `None` when unreadable.
fn process_shape(stat: &str) -> Option<ProcessShape> {
    // The command name may hold spaces and parentheses: fields are counted after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state): starttime is field 22, vsize field 23.
    let start = fields.nth(19)?.parse().ok()?;
    let vsize = fields.next()?.parse().ok()?;
    Some((start, vsize))
}

impl<P: Prober> Discovery<P> {
    pub fn new(prober: P, proc_root: &Path, metrics: Option<Arc<Metrics>>) -> Self {
        Discovery {
            prober,
            proc_root: proc_root.to_owned(),
            probed: HashMap::new(),
            refused: HashSet::new(),
            host: HashSet::new(),
            code: HashSet::new(),
            scanned: HashMap::new(),
            generation: 0,
            metrics,
        }
    }

    /// Files with probes now.
    pub fn probed(&self) -> usize {
        self.probed.len()
    }

    /// Probes the node's own `libssl` files: through the root of process 1 (the node's, for
    /// an agent in the host's pid namespace), and the agent's own root (the node's, when it
    /// runs on the host itself; where process 1's root cannot be read).
    pub fn probe_host(&mut self) {
        let roots = [self.proc_root.join("1/root"), PathBuf::from("/")];
        for root in roots {
            for dir in HOST_LIBRARY_DIRS {
                let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if is_libssl(&name.to_string_lossy()) {
                        if let Some(id) = self.consider(&entry.path()) {
                            self.host.insert(id);
                        }
                    }
                }
            }
        }
    }

    /// Probes every `libssl` some process maps, and releases the files none maps any more.
    pub fn scan_all(&mut self) {
        let mut seen: HashSet<FileId> = HashSet::new();
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let me = std::process::id();
        let mut present = HashSet::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            present.insert(pid);
            let stat = std::fs::read_to_string(self.proc_root.join(format!("{pid}/stat")));
            let shape = stat.ok().as_deref().and_then(process_shape);
            match (shape, self.scanned.get(&pid)) {
                (Some(now), Some((then, generation, ids)))
                    if now == *then && *generation == self.generation =>
                {
                    seen.extend(ids.iter().copied());
                    continue;
                }
                _ => {}
            }
            let generation = self.generation;
            let ids = self.scan_process(pid, false);
            match shape {
                Some(shape) if self.generation == generation => {
                    self.scanned.insert(pid, (shape, generation, ids.clone()));
                }
                _ => {
                    self.scanned.remove(&pid);
                }
            }
            seen.extend(ids);
        }
        self.scanned.retain(|pid, _| present.contains(pid));
        // Files of the node that no process maps keep their probes: a later process will.
        let gone: Vec<FileId> = self
            .probed
            .keys()
            .filter(|id| !seen.contains(id) && !self.host.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.code.remove(&id);
            if let Some((path, probed)) = self.probed.remove(&id) {
                self.generation += 1;
                self.prober.release(probed);
                TlsLibraryReleased {
                    path: &path,
                    probed: self.probed.len(),
                }
                .emit(self.metrics.as_deref());
            }
        }
    }

    /// Probes the `libssl` files process `pid` maps and, with `code` (a process seen speaking
    /// TLS without plaintext), whichever of its executable and other code files carries TLS
    /// symbols itself; returns the ids of the files it maps that are probed.
    pub fn scan_process(&mut self, pid: u32, code: bool) -> Vec<FileId> {
        let base = self.proc_root.join(pid.to_string());
        let Ok(maps) = std::fs::read_to_string(base.join("maps")) else {
            return Vec::new();
        };
        let in_root = |file: &str| base.join("root").join(file.trim_start_matches('/'));
        let mut ids = Vec::new();
        for library in mapped_libraries(&maps) {
            if let Some(id) = self.consider(&in_root(&library)) {
                ids.push(id);
            }
        }
        if self.code.is_empty() && !code {
            return ids;
        }
        let code_files = std::iter::once(base.join("exe"))
            .chain(mapped_code(&maps).into_iter().map(|file| in_root(&file)));
        for path in code_files {
            let id = if code {
                // A process seen speaking TLS that gave no plaintext uses a TLS library of its
                // own, whether or not it also maps a libssl (confluent-kafka's Python package
                // loads the node's, while its librdkafka carries another). Each file is looked
                // at once (a file without the symbols is remembered as refused).
                let id = self.consider_quietly(&path);
                if let Some(id) = id {
                    if self.code.insert(id) {
                        // Every process's code files are now checked against it.
                        self.generation += 1;
                    }
                }
                id
            } else {
                // Files probed for their own TLS symbols stay probed while a process maps them.
                std::fs::metadata(&path)
                    .ok()
                    .map(|meta| (meta.dev(), meta.ino()))
                    .filter(|id| self.code.contains(id))
            };
            if let Some(id) = id.filter(|id| !ids.contains(id)) {
                ids.push(id);
            }
        }
        ids
    }

    /// Probes `path` unless its file was probed or refused before; its id when probed.
    fn consider(&mut self, path: &Path) -> Option<FileId> {
        self.consider_with(path, true)
    }

    /// As `consider`, without counting a file that has no TLS symbols (most executables).
    fn consider_quietly(&mut self, path: &Path) -> Option<FileId> {
        self.consider_with(path, false)
    }

    fn consider_with(&mut self, path: &Path, count_missing: bool) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        let id = (meta.dev(), meta.ino());
        if self.probed.contains_key(&id) {
            return Some(id);
        }
        if self.refused.contains(&id) {
            return None;
        }
        if self.probed.len() >= MAX_FILES {
            self.refused.insert(id);
            TlsProbeFailed {
                path,
                reason: "cap_reached",
                error: &format!("{MAX_FILES} files are probed already"),
            }
            .emit(self.metrics.as_deref());
            return None;
        }
        match self.prober.probe(path) {
            Ok(probed) => {
                self.generation += 1;
                self.probed.insert(id, (path.to_owned(), probed));
                TlsLibraryProbed {
                    path,
                    probed: self.probed.len(),
                }
                .emit(self.metrics.as_deref());
                Some(id)
            }
            Err(e) => {
                // A process that exited while its file was probed through `/proc/<pid>/...`:
                // the file is tried again through the next process that maps it.
                if e.process_gone() {
                    self.generation += 1;
                } else {
                    self.refused.insert(id);
                }
                if count_missing || !e.not_tls() {
                    TlsProbeFailed {
                        path,
                        reason: e.reason(),
                        error: e.message(),
                    }
                    .emit(self.metrics.as_deref());
                }
                None
            }
        }
    }
}

/// The discovery loop, on a thread of its own (probing reads files and may take milliseconds),
/// after `probe_host` and a first `scan_all`: a full scan every `SCAN_INTERVAL`, a process at once when the pipeline names one. Ends
/// when the pipeline's sender is dropped.
pub fn run<P: Prober>(mut discovery: Discovery<P>, pids: Receiver<u32>) {
    loop {
        match pids.recv_timeout(SCAN_INTERVAL) {
            Ok(pid) => {
                discovery.scan_process(pid, true);
            }
            Err(RecvTimeoutError::Timeout) => discovery.scan_all(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// `Capture` behind a lock, as the discovery thread's prober.
pub struct SharedCapture(pub Arc<Mutex<super::Capture>>);

impl Prober for SharedCapture {
    fn probe(&mut self, path: &Path) -> Result<Probed, ProbeError> {
        let mut capture = self.0.lock().unwrap_or_else(|e| e.into_inner());
        capture.probe_tls_file(path)
    }

    fn release(&mut self, probed: Probed) {
        let mut capture = self.0.lock().unwrap_or_else(|e| e.into_inner());
        capture.release_tls_file(probed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libssl_in_maps_lines() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 08:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00001000 08:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000005000-7f0000006000 r-xp 00001000 08:01 125 /opt/app/lib/libssl.so.1.1 (deleted)
7f0000007000-7f0000008000 r-xp 00001000 08:01 126 /opt/my libs/libssl.so
7f0000009000-7f000000a000 r-xp 00001000 08:01 127 /site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3
7f000000b000-7f000000c000 r-xp 00001000 08:01 128 /usr/lib/x86_64-linux-gnu/libssl3.so
7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            mapped_libraries(maps),
            vec![
                "/usr/lib/x86_64-linux-gnu/libssl.so.3".to_owned(),
                "/opt/my libs/libssl.so".to_owned(),
                "/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3".to_owned(),
            ]
        );
    }

    /// Probes every file whose name contains "ssl", refuses the others.
    #[derive(Default)]
    struct Fake {
        probed: Arc<Mutex<Vec<PathBuf>>>,
        released: Arc<Mutex<usize>>,
    }

    impl Prober for Fake {
        fn probe(&mut self, path: &Path) -> Result<Probed, ProbeError> {
            if !path.to_string_lossy().contains("ssl") {
                return Err(ProbeError::NoSymbols("no SSL_write".into()));
            }
            self.probed.lock().unwrap().push(path.to_owned());
            Ok(Probed { links: Vec::new() })
        }

        fn release(&mut self, _: Probed) {
            *self.released.lock().unwrap() += 1;
        }
    }

    /// A directory removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("periscope-tls-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fake /proc with processes mapping `libssl` files of their own roots.
    fn fake_proc(dir: &Path, processes: &[(u32, &[&str])]) {
        for (pid, libs) in processes {
            let base = dir.join(pid.to_string());
            let mut maps = String::new();
            for lib in *libs {
                let file = base.join("root").join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, b"elf").unwrap();
                maps.push_str(&format!("7f00-7f01 r-xp 0 08:01 1 {lib}\n"));
            }
            std::fs::create_dir_all(&base).unwrap();
            std::fs::write(base.join("maps"), maps).unwrap();
        }
    }

    /// A full scan reads the maps of a process again only when its start time or virtual size
    /// moved (a library mapped late grows it), or what was probed changed.
    #[test]
    fn an_unchanged_process_is_not_read_again_and_a_grown_one_is() {
        let dir = Scratch::new("unchanged");
        let lib = "/usr/lib/libssl.so.3";
        fake_proc(dir.path(), &[(100, &[]), (101, &[lib])]);
        let stat = |pid: u32, vsize: u64| {
            let line = format!(
                "{pid} (py (thon)) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 {vsize} 100 0"
            );
            std::fs::write(dir.path().join(format!("{pid}/stat")), line).unwrap();
        };
        stat(100, 1000);
        stat(101, 1000);
        let fake = Fake::default();
        let probed = fake.probed.clone();
        let mut discovery = Discovery::new(fake, dir.path(), None);
        discovery.scan_all();
        assert_eq!(probed.lock().unwrap().len(), 1);
        // A generation moved (101's file was probed): everything is read once more.
        discovery.scan_all();
        assert_eq!(discovery.scanned.len(), 2);
        // 100 maps the library late, but its size did not move: not read (a test of the
        // shortcut, not a real process: mapping grows it). 101 keeps its file probed.
        let late = "/usr/lib/late/libssl.so.3";
        fake_proc(dir.path(), &[(100, &[late])]);
        discovery.scan_all();
        assert_eq!(probed.lock().unwrap().len(), 1);
        assert_eq!(discovery.probed(), 1, "101's file stays probed");
        // Now it grew: read again, and the late library is probed.
        stat(100, 5000);
        discovery.scan_all();
        assert_eq!(probed.lock().unwrap().len(), 2);
        assert_eq!(
            process_shape("7 (a) b) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99 77 1"),
            Some((99, 77))
        );
        assert_eq!(process_shape("garbage"), None);
    }

    #[test]
    fn one_probe_per_file_and_released_when_no_process_maps_it() {
        let dir = Scratch::new("one-probe");
        let lib = "/usr/lib/libssl.so.3";
        fake_proc(dir.path(), &[(100, &[lib]), (101, &[lib])]);
        // Process 102 shares 100's root: the same file through another path.
        std::fs::create_dir_all(dir.path().join("102")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("100/root"), dir.path().join("102/root"))
            .unwrap();
        std::fs::write(
            dir.path().join("102/maps"),
            format!("7f00-7f01 r-xp 0 08:01 1 {lib}\n"),
        )
        .unwrap();
        let fake = Fake::default();
        let (probed, released) = (fake.probed.clone(), fake.released.clone());
        let mut discovery = Discovery::new(fake, dir.path(), None);
        discovery.scan_all();
        // 100 and 102 share one file, 101 has its own copy.
        assert_eq!(probed.lock().unwrap().len(), 2);
        assert_eq!(discovery.probed(), 2);
        discovery.scan_all();
        assert_eq!(probed.lock().unwrap().len(), 2, "probed again");
        // Process 101 exits: its copy loses its probes; 100's stays.
        std::fs::remove_dir_all(dir.path().join("101")).unwrap();
        discovery.scan_all();
        assert_eq!(*released.lock().unwrap(), 1);
        assert_eq!(discovery.probed(), 1);
    }

    /// Fails its first probe as a process exiting under it would.
    #[derive(Default)]
    struct GoneOnce {
        tried: usize,
    }

    impl Prober for GoneOnce {
        fn probe(&mut self, _: &Path) -> Result<Probed, ProbeError> {
            self.tried += 1;
            if self.tried == 1 {
                return Err(ProbeError::Attach(
                    "SSL_read: `perf_event_open` failed: No such file or directory (os error 2)"
                        .into(),
                ));
            }
            Ok(Probed { links: Vec::new() })
        }

        fn release(&mut self, _: Probed) {}
    }

    /// A file whose process exited while it was probed (a short-lived client) is tried again
    /// through the next process that maps it (the long-lived server of the same program).
    #[test]
    fn a_file_whose_process_went_away_during_probing_is_tried_again() {
        let dir = Scratch::new("gone");
        fake_proc(dir.path(), &[(100, &["/usr/lib/libssl.so.3"])]);
        let mut discovery = Discovery::new(GoneOnce::default(), dir.path(), None);
        discovery.scan_all();
        assert_eq!(discovery.probed(), 0);
        assert!(discovery.refused.is_empty());
        discovery.scan_all();
        assert_eq!(discovery.probed(), 1);
    }

    #[test]
    fn refused_files_are_not_tried_again_and_the_cap_holds() {
        let dir = Scratch::new("refused");
        fake_proc(dir.path(), &[(100, &["/usr/lib/libssl.so.3"])]);
        std::fs::write(dir.path().join("100/exe"), b"elf").unwrap();
        let fake = Fake::default();
        let probed = fake.probed.clone();
        let mut discovery = Discovery::new(fake, dir.path(), None);
        // The executable has no symbols (the fake refuses it): it is not tried twice.
        discovery.scan_process(100, true);
        discovery.scan_process(100, true);
        assert_eq!(probed.lock().unwrap().len(), 1);
        assert_eq!(discovery.refused.len(), 1);
        // Its executable and code files are tried once each, and the one with the symbols (the
        // fake: "ssl" in its path) is probed.
        std::fs::create_dir_all(dir.path().join("200/root/opt")).unwrap();
        std::fs::write(dir.path().join("200/root/opt/librdkafka-ssl.so.1"), b"elf").unwrap();
        std::fs::write(dir.path().join("200/root/opt/libz.so.1"), b"elf").unwrap();
        std::fs::write(dir.path().join("200/exe"), b"elf2").unwrap();
        std::fs::write(
            dir.path().join("200/maps"),
            "7f00-7f01 r-xp 0 08:01 1 /opt/librdkafka-ssl.so.1\n\
             7f01-7f02 r--p 0 08:01 1 /opt/librdkafka-ssl.so.1\n\
             7f02-7f03 r-xp 0 08:01 2 /opt/libz.so.1\n\
             7f03-7f04 rw-p 0 08:01 3 /opt/data.bin\n",
        )
        .unwrap();
        discovery.scan_process(200, false);
        assert_eq!(
            probed.lock().unwrap().len(),
            1,
            "only when seen speaking TLS"
        );
        discovery.scan_process(200, true);
        discovery.scan_process(200, true);
        assert_eq!(probed.lock().unwrap().len(), 2);
        assert!(probed.lock().unwrap()[1].ends_with("librdkafka-ssl.so.1"));
        // The exe and libz were refused once and remembered.
        assert_eq!(discovery.refused.len(), 3);
        discovery.refused.clear();
        // Over the cap: refused and remembered. The fake pids start above the test's own,
        // which `scan_all` skips (with pids from 1000, a test process numbered ~1500, as in a
        // fresh CI machine, lost one of them).
        let base = std::process::id() + 1;
        let many: Vec<(u32, Vec<String>)> = (0..MAX_FILES as u32 + 3)
            .map(|i| (base + i, vec![format!("/l{i}/libssl.so.3")]))
            .collect();
        for (pid, libs) in &many {
            let libs: Vec<&str> = libs.iter().map(String::as_str).collect();
            fake_proc(dir.path(), &[(*pid, &libs)]);
        }
        discovery.scan_all();
        assert_eq!(discovery.probed(), MAX_FILES);
        // Two were probed before: 515 new files, 510 places.
        assert_eq!(discovery.refused.len(), 5);
    }
}
