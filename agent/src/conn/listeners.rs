//! Local addresses of sockets, from `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`.
//!
//! Used once per listening socket (to name the server port of accepted connections) and once at
//! start-up (to find the connections that were already open).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// TCP states as `/proc/net/tcp` prints them.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of `/proc/<pid>/net/tcp{,6}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// Parses the text of `/proc/net/tcp` or `/proc/net/tcp6`. Malformed rows are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines().skip(1).filter_map(parse_row).collect()
}

/// One row (not the header) of `/proc/net/tcp{,6}`.
fn parse_row(line: &str) -> Option<TcpEntry> {
    let mut cols = line.split_whitespace();
    let _slot = cols.next()?;
    let local = parse_hex_addr(cols.next()?)?;
    let remote = parse_hex_addr(cols.next()?)?;
    let state = u8::from_str_radix(cols.next()?, 16).ok()?;
    // tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let inode = cols.nth(5)?.parse().ok()?;
    Some(TcpEntry {
        local,
        remote,
        state,
        inode,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), in the kernel's word order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => {
            let word = u32::from_str_radix(ip, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The socket inode behind a file descriptor, if it is a socket.
pub fn socket_inode(proc_root: &Path, pid: u32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/fd/{fd}"))).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The TCP table of a process's network namespace (IPv4 and IPv6).
///
/// `/proc/net/tcp` is a seq_file: every `read()` restarts the kernel's walk of the socket hash
/// from the beginning, so reading a table of many sockets (TIME_WAIT after a connection storm)
/// in small reads costs O(n²). Reads here are 1 MiB each.
pub fn tcp_table(proc_root: &Path, pid: u32) -> Vec<TcpEntry> {
    let mut entries = Vec::new();
    for name in ["tcp", "tcp6"] {
        if let Some(text) = read_large(&proc_root.join(format!("{pid}/net/{name}"))) {
            entries.extend(parse_tcp_table(&text));
        }
    }
    entries
}

fn read_large(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

/// The listening sockets of a process's network namespace. The kernel prints listening sockets
/// before all others, so reading stops at the first row in another state and never walks the
/// established table, however large it is.
pub fn listening_sockets(proc_root: &Path, pid: u32) -> Vec<TcpEntry> {
    use std::io::BufRead;
    let mut entries = Vec::new();
    for name in ["tcp", "tcp6"] {
        let Ok(file) = std::fs::File::open(proc_root.join(format!("{pid}/net/{name}"))) else {
            continue;
        };
        for line in std::io::BufReader::with_capacity(64 * 1024, file)
            .lines()
            .skip(1)
            .map_while(Result::ok)
        {
            match parse_row(&line) {
                Some(entry) if entry.state == TCP_LISTEN => entries.push(entry),
                _ => break,
            }
        }
    }
    entries
}

/// Local port of listening sockets, by (tgid, fd), looked up once each.
pub struct ListenerPorts {
    proc_root: PathBuf,
    ports: HashMap<(u32, i32), Option<u16>>,
}

impl ListenerPorts {
    pub fn new(proc_root: &Path) -> Self {
        ListenerPorts {
            proc_root: proc_root.to_path_buf(),
            ports: HashMap::new(),
        }
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The local port of listening socket `fd` in process `tgid`.
    pub fn port(&mut self, tgid: u32, fd: i32) -> Option<u16> {
        let root = &self.proc_root;
        *self.ports.entry((tgid, fd)).or_insert_with(|| {
            let inode = socket_inode(root, tgid, fd)?;
            listening_sockets(root, tgid)
                .into_iter()
                .find(|e| e.inode == inode)
                .map(|e| e.local.port())
        })
    }

    pub fn forget(&mut self, tgid: u32) {
        self.ports.retain(|(pid, _), _| *pid != tgid);
    }
}

/// An established TCP socket found in `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct FoundSocket {
    pub tgid: u32,
    pub fd: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Its local port is one the same network namespace listens on.
    pub is_server: bool,
}

/// The number a /proc entry is named by (a pid, an fd); None for the other entries.
pub fn numeric_name<T: std::str::FromStr>(entry: &std::fs::DirEntry) -> Option<T> {
    entry.file_name().to_str()?.parse().ok()
}

/// Established TCP sockets of every process (but this one), with their fds.
pub fn discover_established(proc_root: &Path) -> Vec<FoundSocket> {
    let me = std::process::id();
    let mut tables: HashMap<String, Vec<TcpEntry>> = HashMap::new();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(tgid) = numeric_name::<u32>(&entry) else {
            continue;
        };
        if tgid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let netns = std::fs::read_link(entry.path().join("ns/net"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        for fd_entry in fds.flatten() {
            let Some(fd) = numeric_name::<i32>(&fd_entry) else {
                continue;
            };
            let Some(inode) = socket_inode(proc_root, tgid, fd) else {
                continue;
            };
            let table = tables
                .entry(netns.clone())
                .or_insert_with(|| tcp_table(proc_root, tgid));
            let Some(sock) = table
                .iter()
                .find(|e| e.inode == inode && e.state == TCP_ESTABLISHED)
            else {
                continue;
            };
            let is_server = table.iter().any(|l| {
                l.state == TCP_LISTEN
                    && l.local.port() == sock.local.port()
                    && (l.local.ip().is_unspecified() || l.local.ip() == sock.local.ip())
            });
            found.push(FoundSocket {
                tgid,
                fd,
                local: sock.local,
                remote: sock.remote,
                is_server,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_tcp_table(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(rows[0].state, TCP_LISTEN);
        assert_eq!(rows[0].inode, 12345);
        assert_eq!(rows[1].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(rows[1].state, TCP_ESTABLISHED);
    }

    #[test]
    fn parses_ipv6_and_mapped() {
        let text = "header\n\
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n\
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 778 1\n";
        let rows = parse_tcp_table(text);
        assert_eq!(rows[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(rows[1].remote, "127.0.0.1:50000".parse().unwrap());
    }

    #[test]
    fn finds_a_real_listener_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        use std::os::fd::AsRawFd;
        let mut ports = ListenerPorts::new(Path::new("/proc"));
        assert_eq!(
            ports.port(std::process::id(), listener.as_raw_fd()),
            Some(port)
        );
    }

    #[test]
    fn garbage_rows_are_skipped() {
        assert!(parse_tcp_table("header\nnot a row\n  0: zz:zz\n").is_empty());
    }
}
