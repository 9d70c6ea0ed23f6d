//! A real PostgreSQL server for tests: `initdb` in a temp dir, `postgres` on
//! `127.0.0.1:<free port>`, run as an unprivileged user (PostgreSQL refuses to run as root).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http::wait_for_port_or_exit;
use crate::{free_port, read_tail, ChildProcess, TempDir};

/// The unprivileged account the server runs as (created if missing).
const USER: &str = "periscope-pg";

/// A running PostgreSQL server with trust authentication for user `postgres`. Dropping it
/// stops the server (fast shutdown) and removes its data directory.
#[derive(Debug)]
pub struct PgServer {
    process: ChildProcess,
    port: u16,
    dir: TempDir,
}

impl PgServer {
    /// Initialises a cluster and starts the server; panics with the server log on failure.
    pub fn start() -> PgServer {
        PgServer::launch().unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn launch() -> anyhow::Result<PgServer> {
        PgServer::launch_with(false)
    }

    /// A server with `ssl=on`, its certificate made by `openssl` for the test; clients choose
    /// SSL with [`PgServer::command_ssl`] or `sslmode=require` in [`PgServer::url`].
    pub fn start_ssl() -> PgServer {
        PgServer::launch_with(true).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn launch_with(ssl: bool) -> anyhow::Result<PgServer> {
        ensure_user()?;
        let dir = TempDir::new("pg")?;
        let data = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        chown_to_user(dir.path())?;
        let init = Command::new("runuser")
            .args(["-u", USER, "--", &bin("initdb")])
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .context("running initdb")?;
        if !init.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        }
        let mut ssl_settings = vec!["-c".to_owned(), "ssl=off".to_owned()];
        if ssl {
            let (cert, key) = crate::tls::self_signed(dir.path())?;
            chown_to_user(&cert)?;
            chown_to_user(&key)?;
            ssl_settings = [
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ]
            .into_iter()
            .flat_map(|s| ["-c".to_owned(), s])
            .collect();
        }
        let port = free_port();
        let log = std::fs::File::create(&log_path)?;
        chown_to_user(&log_path)?;
        // Started directly under the account's uid (not through runuser), so that the signals
        // Drop sends reach the postmaster itself.
        let (uid, gid) = user_ids()?;
        let mut cmd = Command::new(bin("postgres"));
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(&ssl_settings)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut process = ChildProcess::spawn("postgres", &mut cmd)?;
        match wait_for_port_or_exit(&mut process, port, Duration::from_secs(30)) {
            Ok(()) => {}
            Err(Some(status)) => bail!(
                "postgres exited ({status}):\n{}",
                read_tail(&log_path, 8192)
            ),
            Err(None) => bail!(
                "postgres did not listen on 127.0.0.1:{port}:\n{}",
                read_tail(&log_path, 8192)
            ),
        }
        let server = PgServer { process, port, dir };
        // Accepting TCP is not yet accepting queries: wait until a query works.
        let ready = crate::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            server.psql(&["-c", "SELECT 1"]).is_ok()
        });
        if !ready {
            bail!("postgres never answered:\n{}", read_tail(&log_path, 8192));
        }
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `psql` over TCP (database `postgres`, no SSL) with extra arguments; returns stdout.
    pub fn psql(&self, args: &[&str]) -> anyhow::Result<String> {
        self.tool("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1"], args)
    }

    /// Runs a Python snippet (psycopg and friends) with `PGURL` set to this server's
    /// `postgres` database; returns its stdout, panics with its stderr and the server log if
    /// it fails.
    pub fn python(&self, code: &str) -> String {
        let out = Command::new("python3")
            .arg("-c")
            .arg(code)
            .env("PGURL", self.url("postgres"))
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `pgbench` against database `postgres` with extra arguments; returns stdout.
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        self.tool("pgbench", &[], args)
    }

    /// `program -h 127.0.0.1 -p <port> -U postgres` (psql, pgbench, …) for database
    /// `postgres` without SSL, stdin closed: for callers that spawn or pin it themselves.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .env("PGSSLMODE", "disable")
        .env("PGDATABASE", "postgres")
        .stdin(Stdio::null());
        cmd
    }

    /// As [`PgServer::command`], with `sslmode=require`.
    pub fn command_ssl(&self, program: &str) -> Command {
        let mut cmd = self.command(program);
        cmd.env("PGSSLMODE", "require");
        cmd
    }

    fn tool(&self, program: &str, first: &[&str], args: &[&str]) -> anyhow::Result<String> {
        let out = crate::output_ok(self.command(program).args(first).args(args))
            .with_context(|| format!("{program} {args:?}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        read_tail(&self.dir.path().join("server.log"), 16384)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        let _ = self.process.stop(libc::SIGINT, Duration::from_secs(10));
    }
}

/// PostgreSQL's own binaries live outside PATH on Debian; prefer them.
fn bin(name: &str) -> String {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/15/bin/{name}"));
    if debian.exists() {
        debian.to_string_lossy().into_owned()
    } else {
        name.to_owned()
    }
}

/// Numeric uid and gid of the server's account.
fn user_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, USER]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("id {flag} {USER}"))
    };
    Ok((id("-u")?, id("-g")?))
}

fn ensure_user() -> anyhow::Result<()> {
    let known = Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if known.success() {
        return Ok(());
    }
    let made = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ])
        .status()
        .context("running useradd")?;
    // Another test may have created it at the same moment.
    if !made.success() && !Command::new("id").arg(USER).output()?.status.success() {
        bail!("could not create user {USER}");
    }
    Ok(())
}

fn chown_to_user(path: &std::path::Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg(format!("{USER}:"))
        .arg(path)
        .status()
        .context("running chown")?;
    if !status.success() {
        bail!("chown {} failed", path.display());
    }
    Ok(())
}
