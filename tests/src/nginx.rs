//! A throw-away nginx (master + one worker) on `127.0.0.1:<free port>`.

use std::fmt::Write as _;
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http::wait_for_port_or_exit;
use crate::{descendants, free_port, read_tail, ChildProcess, TempDir};

/// The placeholder for the listening port in [`NginxOptions::http_body`].
const PORT_PLACEHOLDER: &str = "@PORT@";

/// How to start an [`Nginx`].
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// Everything inside `http { … }` after the harness' own lines (access log off, temp
    /// paths in the prefix dir). Every `@PORT@` is replaced by the chosen port.
    pub http_body: String,
    /// Pin master and worker to this CPU with `taskset`.
    pub cpu: Option<usize>,
    /// `worker_processes`.
    pub workers: usize,
}

impl NginxOptions {
    /// One `server` listening on `127.0.0.1:@PORT@` with `server_body` inside.
    pub fn server(server_body: &str) -> NginxOptions {
        NginxOptions {
            http_body: format!(
                "server {{\n    listen 127.0.0.1:{PORT_PLACEHOLDER};\n    {server_body}\n  }}"
            ),
            cpu: None,
            workers: 1,
        }
    }
}

/// A running nginx with its prefix (config, logs, temp files) in a temp dir. Dropping it
/// stops master and workers and removes the dir.
#[derive(Debug)]
pub struct Nginx {
    process: ChildProcess,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with one `server { listen 127.0.0.1:<port>; <server_body> }`, e.g.
    /// `Nginx::start(r#"location / { return 200 "ok\n"; }"#)`. Panics if it cannot start.
    pub fn start(server_body: &str) -> Nginx {
        Nginx::launch(&NginxOptions::server(server_body)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts nginx with a full `http { … }` body; write `@PORT@` where the port goes, e.g.
    /// `server { listen 127.0.0.1:@PORT@; … }`. Panics if it cannot start.
    pub fn start_with_config(http_body: &str) -> Nginx {
        Nginx::launch(&NginxOptions {
            http_body: http_body.to_owned(),
            ..NginxOptions::server("")
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts nginx as described by `options` and waits (10 s at most) until the port accepts.
    pub fn launch(options: &NginxOptions) -> anyhow::Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        let port = free_port();
        let prefix = dir.path().display().to_string();
        let mut conf = String::new();
        if crate::is_root() {
            // As root, workers would otherwise switch to `nobody`, who cannot write the temp
            // dirs below.
            conf.push_str("user root;\n");
        }
        let _ = write!(
            conf,
            "daemon off;\n\
             master_process on;\n\
             worker_processes {workers};\n\
             worker_rlimit_nofile 16384;\n\
             error_log {prefix}/error.log;\n\
             pid {prefix}/nginx.pid;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  \
               access_log off;\n  \
               client_body_temp_path {prefix}/client_body;\n  \
               proxy_temp_path {prefix}/proxy;\n  \
               fastcgi_temp_path {prefix}/fastcgi;\n  \
               uwsgi_temp_path {prefix}/uwsgi;\n  \
               scgi_temp_path {prefix}/scgi;\n  \
               {body}\n\
             }}\n",
            workers = options.workers.max(1),
            body = options
                .http_body
                .replace(PORT_PLACEHOLDER, &port.to_string()),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf)?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path)?;
        let mut cmd = match options.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "nginx"]);
                c
            }
            None => Command::new("nginx"),
        };
        // `-e` keeps nginx from opening the distribution's /var/log/nginx/error.log before it
        // has read our config.
        cmd.arg("-p")
            .arg(format!("{prefix}/"))
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(format!("{prefix}/error.log"))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr);
        let mut process = ChildProcess::spawn("nginx", &mut cmd)
            .context("starting nginx (is it installed? `cargo xtask setup`)")?;
        match wait_for_port_or_exit(&mut process, port, Duration::from_secs(10)) {
            Ok(()) => {}
            Err(Some(status)) => bail!(
                "nginx exited ({status}); stderr:\n{}\nerror.log:\n{}\nnginx.conf:\n{conf}",
                read_tail(&stderr_path, 8192),
                read_tail(&dir.path().join("error.log"), 8192)
            ),
            Err(None) => bail!(
                "nginx did not accept connections on 127.0.0.1:{port} within 10 s; error.log:\n{}",
                read_tail(&dir.path().join("error.log"), 8192)
            ),
        }
        Ok(Nginx { process, port, dir })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The master process' pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The worker processes' pids (they do the socket I/O).
    pub fn worker_pids(&self) -> Vec<u32> {
        descendants(self.pid())
    }

    /// The end of nginx's error log, for assertion messages.
    pub fn error_log(&self) -> String {
        read_tail(&self.dir.path().join("error.log"), 16 * 1024)
    }
}
