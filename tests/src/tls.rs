//! Certificates for TLS servers and clients, made by `openssl` in the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Writes a self-signed certificate for `localhost` / `127.0.0.1` and its key (mode 0600) into
/// `dir`; returns (certificate, key).
pub fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((cert, key))
}

/// A test CA (`ca.pem`), a server certificate it signed for `localhost` and 127.0.0.1
/// (`server.pem`, `server.key`) and a client certificate it signed (`client.pem`,
/// `client.key`), made fresh by `openssl` for each test; removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: crate::TempDir,
}

impl Pki {
    /// Makes the CA and both certificates; panics (with openssl's stderr) if openssl fails.
    pub fn generate() -> Pki {
        let dir = crate::TempDir::new("pki").unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (cargo xtask setup installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
        ];
        openssl(&[&["req", "-x509"][..], &ec, &ca].concat());
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("client.ext"),
            "extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for name in ["server", "client"] {
            let file = |ext: &str| format!("{name}.{ext}");
            let (key, csr, pem, ext) = (file("key"), file("csr"), file("pem"), file("ext"));
            let subject = format!("/CN={name}");
            let req = ["-keyout", &key, "-out", &csr, "-subj", &subject];
            openssl(&[&["req"][..], &ec, &req].concat());
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ]);
        }
        Pki { dir }
    }

    /// The path of one of its files (`ca.pem`, `server.pem`, `client.key`, …).
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}
