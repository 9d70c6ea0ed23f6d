//! The kernel's event stream and connection tables, as typed values for the pipeline.
//!
//! The pipeline (`crate::pipeline`) never touches raw records or BPF maps: it drains
//! [`Maps::drain`] into [`Record`]s, asks for kernel-side effects with [`KernelAction`]s that
//! [`Maps::apply`] carries out, and reads the kernel's counters as totals. The one raw read of a
//! kernel-written header happens in [`parse`], after its bounds check.

use std::path::Path;

use agent_ebpf::{
    names, ConnInfo, EventHeader, EventKind, SockKey, COUNTERS_LEN, HEADER_LEN, MUTED_ALL,
    MUTED_CIPHER, ORIGIN_PROC,
};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::Ebpf;

use crate::conn::KernelAction;

use super::take;

/// `BPF_NOEXIST`: an insert that fails when the key exists.
const BPF_NOEXIST: u64 = 1;

/// What a ring-buffer record occupies besides its data (the kernel's `BPF_RINGBUF_HDR_SZ`).
pub const RINGBUF_RECORD_HEADER: u64 = 8;

/// One ring-buffer record, checked.
#[derive(Debug)]
pub enum Record<'a> {
    /// A well-formed event: its header, its known kind and the captured payload.
    Event {
        header: EventHeader,
        kind: EventKind,
        payload: &'a [u8],
    },
    /// Shorter than its header says, or of an unknown kind: counted, never decoded.
    Malformed,
}

/// Checks one ring-buffer record and reads its header.
pub fn parse(record: &[u8]) -> Record<'_> {
    if record.len() < HEADER_LEN {
        return Record::Malformed;
    }
    // SAFETY: the record holds at least HEADER_LEN bytes written by the kernel as an
    // EventHeader; read_unaligned copes with any alignment.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let Some(payload) = record.get(HEADER_LEN..HEADER_LEN + header.cap_len as usize) else {
        return Record::Malformed;
    };
    match EventKind::from_u8(header.kind) {
        Some(kind) => Record::Event {
            header,
            kind,
            payload,
        },
        None => Record::Malformed,
    }
}

/// The maps the pipeline needs, taken out of the `Ebpf` object.
pub struct Maps {
    events: RingBuf<MapData>,
    /// The ring buffer's size in bytes.
    ring_bytes: u64,
    conns: BpfHashMap<MapData, SockKey, ConnInfo>,
    muted: BpfHashMap<MapData, u64, u8>,
    excluded: BpfHashMap<MapData, u32, u64>,
    sock_types: BpfHashMap<MapData, SockKey, u32>,
    counters: PerCpuArray<MapData, u64>,
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf, ring_bytes: u32) -> anyhow::Result<Maps> {
        Ok(Maps {
            events: RingBuf::try_from(take(ebpf, names::map::EVENTS)?)?,
            ring_bytes: u64::from(ring_bytes),
            conns: BpfHashMap::try_from(take(ebpf, names::map::CONNS)?)?,
            muted: BpfHashMap::try_from(take(ebpf, names::map::MUTED)?)?,
            excluded: BpfHashMap::try_from(take(ebpf, names::map::EXCLUDED)?)?,
            sock_types: BpfHashMap::try_from(take(ebpf, names::map::SOCK_TYPES)?)?,
            counters: PerCpuArray::try_from(take(ebpf, names::map::COUNTERS)?)?,
        })
    }

    /// The ring buffer's size in bytes.
    pub fn ring_bytes(&self) -> u64 {
        self.ring_bytes
    }

    /// Hands every record waiting in the ring buffer to `each`; returns the bytes they occupied
    /// in the ring (record headers included), for pacing.
    pub fn drain(&mut self, mut each: impl FnMut(Record<'_>)) -> u64 {
        let mut drained = 0;
        while let Some(item) = self.events.next() {
            each(parse(&item));
            drained += item.len() as u64 + RINGBUF_RECORD_HEADER;
        }
        drained
    }

    /// Carries out what connection tracking asked of the kernel.
    pub fn apply(&mut self, actions: impl IntoIterator<Item = KernelAction>) {
        for action in actions {
            match action {
                KernelAction::Mute { tgid, fd, conn_id } => {
                    self.mute(SockKey { tgid, fd }, conn_id, MUTED_ALL, 0);
                }
                KernelAction::MuteSocket {
                    tgid,
                    fd,
                    conn_id,
                    tls,
                } => {
                    // Only if absent: the kernel's `MUTED_PLAIN` (plaintext flowing) stays.
                    let value = if tls { MUTED_CIPHER } else { MUTED_ALL };
                    self.mute(SockKey { tgid, fd }, conn_id, value, BPF_NOEXIST);
                }
                KernelAction::Forget { tgid, fd, conn_id } => {
                    let key = SockKey { tgid, fd };
                    // Only the socket we knew: the fd may already belong to a new connection.
                    if self
                        .conns
                        .get(&key, 0)
                        .is_ok_and(|info| info.conn_id == conn_id)
                    {
                        let _ = self.conns.remove(&key);
                    }
                    let _ = self.muted.remove(&conn_id);
                }
                KernelAction::Exclude { tgid, cgroup_id } => {
                    let _ = self.excluded.insert(tgid, cgroup_id, 0);
                }
                KernelAction::Unexclude { tgid } => {
                    let _ = self.excluded.remove(&tgid);
                }
            }
        }
    }

    /// Sets the connection's `MUTED` entry to `value`. The kernel drops the entry at close; a
    /// close that came first would leave it behind. So: only while the socket is still this
    /// connection, and undone if it closed while the entry went in.
    fn mute(&mut self, key: SockKey, conn_id: u64, value: u8, flags: u64) {
        let live = |conns: &BpfHashMap<MapData, SockKey, ConnInfo>| {
            conns.get(&key, 0).is_ok_and(|info| info.conn_id == conn_id)
        };
        if !live(&self.conns) {
            return;
        }
        if let Err(e) = self.muted.insert(conn_id, value, flags) {
            if flags == 0 {
                log::debug!("cannot mute connection {conn_id}: {e}");
            }
        }
        if !live(&self.conns) {
            let _ = self.muted.remove(&conn_id);
        }
    }

    /// Tracks a socket that was open before start-up under `conn_id`; false if the kernel
    /// already tracks it (it was opened while attaching) or the table is full.
    pub fn adopt(&mut self, tgid: u32, fd: i32, conn_id: u64) -> bool {
        let info = ConnInfo {
            conn_id,
            origin: ORIGIN_PROC,
            _pad: [0; 7],
        };
        // BPF_NOEXIST: the kernel may already track it if it was opened while attaching.
        self.conns.insert(SockKey { tgid, fd }, info, 1).is_ok()
    }

    /// Removes kernel entries of processes that no longer exist (they exited without closing
    /// their sockets), whatever userspace knew of them.
    pub fn forget_dead(&mut self) {
        forget_dead(&mut self.conns);
        forget_dead(&mut self.sock_types);
    }

    /// Entries in the kernel's socket table and mute table (`CONNS`, `MUTED`): what a leak
    /// would grow.
    pub fn occupancy(&self) -> [(&'static str, usize); 2] {
        [
            (names::map::CONNS, self.conns.keys().count()),
            (names::map::MUTED, self.muted.keys().count()),
        ]
    }

    /// The kernel's counters (`COUNTER_NAMES` order), summed over CPUs; `None` for one that
    /// could not be read.
    pub fn counter_totals(&self) -> [Option<u64>; COUNTERS_LEN as usize] {
        std::array::from_fn(|index| {
            let values = self.counters.get(&(index as u32), 0).ok()?;
            Some(values.iter().sum())
        })
    }
}

fn forget_dead<V: aya::Pod>(map: &mut BpfHashMap<MapData, SockKey, V>) {
    // One look per process, not per socket (10,000 sockets of 1,000 processes).
    let mut alive: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
    let dead: Vec<SockKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            !*alive
                .entry(k.tgid)
                .or_insert_with(|| Path::new(&format!("/proc/{}", k.tgid)).exists())
        })
        .collect();
    for key in dead {
        let _ = map.remove(&key);
    }
}

/// (name, runs, run time in ns) of each loaded program whose kernel id is in `programs`
/// ((id, name) pairs from `Capture::loaded_program_ids`).
pub fn program_stats(programs: &[(u32, String)]) -> Vec<(&str, u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|info| {
            let (_, name) = programs.iter().find(|(id, _)| *id == info.id())?;
            Some((
                name.as_str(),
                info.run_count(),
                info.run_time().as_nanos() as u64,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use agent_ebpf::{EventHeader, EventKind, HEADER_LEN};

    use super::{parse, Record};

    fn record(kind: u8, cap_len: u32, payload: &[u8]) -> Vec<u8> {
        let header = EventHeader {
            kind,
            cap_len,
            ..EventHeader::default()
        };
        // SAFETY: EventHeader is #[repr(C)] plain data of HEADER_LEN bytes.
        let bytes: [u8; HEADER_LEN] = unsafe { std::mem::transmute(header) };
        let mut out = bytes.to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn records_are_checked_before_they_are_read() {
        assert!(matches!(parse(&[0; 3]), Record::Malformed));
        let data = EventKind::Data as u8;
        assert!(matches!(parse(&record(data, 5, b"abc")), Record::Malformed));
        assert!(matches!(parse(&record(250, 3, b"abc")), Record::Malformed));
        let bytes = record(data, 3, b"abcdef");
        let parsed = parse(&bytes);
        assert!(
            matches!(
                parsed,
                Record::Event {
                    kind: EventKind::Data,
                    payload: b"abc",
                    ..
                }
            ),
            "{parsed:?}"
        );
    }
}
