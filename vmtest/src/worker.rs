//! The traffic generator, run as a child process (`/init --role http-worker threads|fork`),
//! because the agent never traces its own process.
//!
//! It listens on 127.0.0.1:0, prints `PORT <n>`, then one client sends the fixed mix below to
//! its own server, prints `DONE` and stays alive until its stdin closes. Both sides are in this
//! process, so the agent should count every exchange twice: once as server, once as client.
//!
//! Staying alive matters: the agent looks up an accepted connection's listening port (and the
//! process's name) in `/proc` when it reads the events, so a server that has already exited is
//! reported with `server_port="0"`. Real servers live; the test is about counting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::sys;

/// Requests to `/items/<n>` on one keep-alive connection.
pub const KEEPALIVE_ITEMS: u32 = 50;
/// Requests to `/missing` (404) on the same keep-alive connection.
pub const MISSING: u32 = 5;
/// Requests to `/items/<n>`, each on a fresh connection.
pub const FRESH_ITEMS: u32 = 10;
/// Connections the client opens in total.
const CONNECTIONS: u32 = 1 + FRESH_ITEMS;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// How the server serves each accepted connection.
#[derive(Clone, Copy, Debug)]
pub enum Serve {
    /// A thread per connection; the client runs in the main thread.
    Threads,
    /// The listener accepts, then forks a child that serves the connection; the client is a
    /// forked process too. Checks that sockets inherited over fork stay tracked.
    Fork,
    /// As `Threads`, but every read and write goes through this binary's own `SSL_read` and
    /// `SSL_write` ([`tls`]): the TLS uprobes' test where no OpenSSL exists (the guest).
    Tls,
}

impl Serve {
    pub fn parse(s: &str) -> anyhow::Result<Serve> {
        match s {
            "threads" => Ok(Serve::Threads),
            "fork" => Ok(Serve::Fork),
            "tls" => Ok(Serve::Tls),
            other => bail!("http-worker: unknown serving mode {other:?} (threads|fork|tls)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Serve::Threads => "threads",
            Serve::Fork => "fork",
            Serve::Tls => "tls",
        }
    }
}

/// The worker's main: exits 0 only if every request got the expected answer.
pub fn run(serve: Serve) -> anyhow::Result<()> {
    traffic(serve)?;
    println!("DONE");
    // Wait for the parent to close stdin (it has read the metrics by then).
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

fn traffic(serve: Serve) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // stdout is line-buffered, so this is flushed before any fork below.
    println!("PORT {port}");
    match serve {
        Serve::Threads => {
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    std::thread::spawn(move || serve_connection::<TcpStream>(stream));
                }
            });
            client::<TcpStream>(port)
        }
        Serve::Tls => {
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    std::thread::spawn(move || serve_connection::<tls::Stream>(stream));
                }
            });
            client::<tls::Stream>(port)
        }
        Serve::Fork => {
            // Fork the client first, while this process is still single-threaded.
            let client_pid = sys::fork()?;
            if client_pid == 0 {
                drop(listener);
                let code = match client::<TcpStream>(port) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("http-worker client: {e:#}");
                        1
                    }
                };
                sys::exit_child(code);
            }
            let mut servers = Vec::new();
            for _ in 0..CONNECTIONS {
                let (stream, _) = listener.accept().context("accept")?;
                let pid = sys::fork()?;
                if pid == 0 {
                    drop(listener);
                    serve_connection::<TcpStream>(stream);
                    sys::exit_child(0);
                }
                // The child owns the connection now; the parent's copy must go so that the
                // client sees the close when the child is done.
                drop(stream);
                servers.push(pid);
            }
            let client_ok = sys::wait_ok(client_pid)?;
            for pid in servers {
                sys::wait_ok(pid)?;
            }
            if !client_ok {
                bail!("the client process failed");
            }
            Ok(())
        }
    }
}

/// A connection the worker reads and writes through: the socket itself, or [`tls::Stream`].
trait Io: Send + 'static
where
    for<'a> &'a Self: Read + Write,
{
    fn open(stream: TcpStream) -> Self;
    fn socket(&self) -> &TcpStream;
}

impl Io for TcpStream {
    fn open(stream: TcpStream) -> Self {
        stream
    }

    fn socket(&self) -> &TcpStream {
        self
    }
}

/// Answers requests on one connection until the peer closes it.
fn serve_connection<S: Io>(stream: TcpStream)
where
    for<'a> &'a S: Read + Write,
{
    serve_with(S::open(stream), |path| match path.strip_prefix("/items/") {
        Some(id) => Ok((200, format!("{{\"id\":{id}}}").into_bytes())),
        None => Ok((404, b"not found".to_vec())),
    })
}

/// Answers requests on one connection with `answer(path)` (status, body) until the peer
/// closes it or `answer` fails.
fn serve_with<S: Io>(stream: S, mut answer: impl FnMut(&str) -> anyhow::Result<(u16, Vec<u8>)>)
where
    for<'a> &'a S: Read + Write,
{
    let _ = stream.socket().set_nodelay(true);
    let _ = stream.socket().set_read_timeout(Some(IO_TIMEOUT));
    // Reads and writes go through the same fd: the agent tracks the fd that accept returned,
    // not `dup`s of it (`try_clone`), so a cloned stream's I/O would be invisible.
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Requests carry no body: skip headers up to the blank line.
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) if header == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("");
        let Ok((status, body)) = answer(path) else {
            return;
        };
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        // One write per response, as most servers do.
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

/// `--role chain-backend`: the last hop of the chain test. Serves on 127.0.0.1:0 with a
/// thread per connection, prints `PORT <n>` and lives until its stdin closes.
pub fn chain_backend() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    println!("PORT {}", listener.local_addr()?.port());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_connection::<TcpStream>(stream));
        }
    });
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// `--role chain-proxy <backend port>`: the middle hop. Like `chain-backend`, but each request
/// is answered by sending it on to the backend, from the thread serving the connection, over
/// one keep-alive backend connection per client connection (as nginx's upstream keepalive).
pub fn chain_proxy(backend: &str) -> anyhow::Result<()> {
    let backend: u16 = backend.parse().context("<backend port>")?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    println!("PORT {}", listener.local_addr()?.port());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut upstream: Option<TcpStream> = None;
                serve_with(stream, |path| {
                    if upstream.is_none() {
                        upstream = Some(connect(backend)?);
                    }
                    let conn = upstream.as_ref().context("no backend connection")?;
                    fetch(conn, &mut BufReader::new(conn), path)
                });
            });
        }
    });
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// `--role chain-client <proxy port>`: the first hop: the fixed mix of `client`, then `DONE`,
/// then it lives until its stdin closes.
pub fn chain_client(proxy: &str) -> anyhow::Result<()> {
    client::<TcpStream>(proxy.parse().context("<proxy port>")?)?;
    println!("DONE");
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// Requests the chain test's client sends: every one goes through all three processes.
pub const CHAIN_REQUESTS: u32 = KEEPALIVE_ITEMS + MISSING + FRESH_ITEMS;

fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Sends the fixed request mix and checks every status.
fn client<S: Io>(port: u16) -> anyhow::Result<()>
where
    for<'a> &'a S: Read + Write,
{
    let stream = S::open(connect(port)?);
    // One reader for the whole connection: it may buffer past a response (it never does
    // here, since each response is read before the next request is sent).
    let mut reader = BufReader::new(&stream);
    for i in 0..KEEPALIVE_ITEMS {
        request(&stream, &mut reader, &format!("/items/{i}"), 200)?;
    }
    for _ in 0..MISSING {
        request(&stream, &mut reader, "/missing", 404)?;
    }
    drop(reader);
    drop(stream);
    for i in 0..FRESH_ITEMS {
        let stream = S::open(connect(port)?);
        request(
            &stream,
            &mut BufReader::new(&stream),
            &format!("/items/{}", 1000 + i),
            200,
        )?;
    }
    Ok(())
}

/// One request; reads the whole response and checks its status.
fn request<S>(stream: &S, reader: &mut BufReader<&S>, path: &str, expect: u16) -> anyhow::Result<()>
where
    for<'a> &'a S: Read + Write,
{
    let (status, _) = fetch(stream, reader, path)?;
    if status != expect {
        bail!("GET {path}: status {status}, expected {expect}");
    }
    Ok(())
}

/// One request; returns the status and the body. Writes and reads use the connection's own
/// fd (see `serve_with`).
fn fetch<S>(
    mut stream: &S,
    reader: &mut BufReader<&S>,
    path: &str,
) -> anyhow::Result<(u16, Vec<u8>)>
where
    for<'a> &'a S: Read + Write,
{
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: vmtest\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: bad status line {status_line:?}"))?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            bail!("GET {path}: connection closed inside the headers");
        }
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("Content-Length")?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

/// `--role syscall-worker <cgroup dir> <n>`: joins the cgroup, calls `getppid` exactly `n`
/// times and ends with `_exit`, so that the cgroup sees no other selected syscall. The write
/// that joins goes through a file that is never closed.
pub fn syscalls(cgroup: &str, calls: &str) -> anyhow::Result<()> {
    use std::os::fd::IntoRawFd;

    let calls: u32 = calls.parse().context("<n>")?;
    let mut procs = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{cgroup}/cgroup.procs"))
        .with_context(|| format!("opening {cgroup}/cgroup.procs"))?;
    procs
        .write_all(format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("joining {cgroup}"))?;
    let _ = procs.into_raw_fd();
    for _ in 0..calls {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    // SAFETY: ends the process without the runtime's exit-time syscalls.
    unsafe { libc::_exit(0) }
}

/// Functions named and typed like OpenSSL's `SSL_read` and `SSL_write`, for the TLS uprobes'
/// test in guests that have no OpenSSL: the agent probes them in this binary as it would in
/// `libssl`. The "`SSL *`" is the socket's descriptor, and the bytes go to it unchanged (the
/// test is about the probes and attributing plaintext to the socket used inside the call, not
/// about encryption, which the host's tests cover with real OpenSSL).
pub mod tls {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};

    /// `int SSL_read(SSL *ssl, void *buf, int num)`.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn SSL_read(ssl: *mut c_void, buf: *mut c_void, num: c_int) -> c_int {
        // SAFETY: the caller passes a buffer of `num` bytes, as OpenSSL's callers do.
        let n = unsafe { libc::read(ssl as usize as c_int, buf, num.max(0) as usize) };
        n as c_int
    }

    /// `int SSL_write(SSL *ssl, const void *buf, int num)`.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn SSL_write(ssl: *mut c_void, buf: *const c_void, num: c_int) -> c_int {
        // SAFETY: as above.
        let n = unsafe { libc::write(ssl as usize as c_int, buf, num.max(0) as usize) };
        n as c_int
    }

    /// A connection whose reads and writes go through `SSL_read`/`SSL_write`.
    pub struct Stream(TcpStream);

    impl super::Io for Stream {
        fn open(stream: TcpStream) -> Self {
            Stream(stream)
        }

        fn socket(&self) -> &TcpStream {
            &self.0
        }
    }

    fn result(n: c_int) -> std::io::Result<usize> {
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    impl Read for &Stream {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let ssl = self.0.as_raw_fd() as usize as *mut c_void;
            let num = buf.len().min(c_int::MAX as usize) as c_int;
            // black_box keeps the call a real call of the probed symbol.
            result(std::hint::black_box(SSL_read)(
                ssl,
                buf.as_mut_ptr().cast(),
                num,
            ))
        }
    }

    impl Write for &Stream {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let ssl = self.0.as_raw_fd() as usize as *mut c_void;
            let num = buf.len().min(c_int::MAX as usize) as c_int;
            result(std::hint::black_box(SSL_write)(
                ssl,
                buf.as_ptr().cast(),
                num,
            ))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
