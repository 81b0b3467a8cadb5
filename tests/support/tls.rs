//! A throwaway PKI made by openssl (a CA and the certificates it signs),
//! and the TLS clients the tests check a server with: curl and
//! `openssl s_client`. Used by the front's tests, the operator's metrics
//! over TLS and the chart's TLS setup on the node.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{output_text, unique};

/// The names of a certificate for a server on loopback.
pub const LOCAL: &[&str] = &["DNS:localhost", "IP:127.0.0.1"];

/// What a certificate is for.
pub enum Usage<'a> {
    /// A server under these subjectAltName entries (`DNS:...`, `IP:...`).
    Server(&'a [&'a str]),
    Client,
}

/// A CA valid for two days, and certificates it signs, in a directory
/// removed on drop.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique("corral-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.new_key(
            "ca.key",
            &[
                "-x509",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=corral test CA",
            ],
        );
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `openssl req` with a new P-256 key written to `key`, and `args`.
    fn new_key(&self, key: &str, args: &[&str]) {
        let mut all = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
        ];
        all.extend_from_slice(args);
        self.openssl(&all);
    }

    fn openssl(&self, args: &[&str]) {
        let (ok, text) = output_text(Command::new("openssl").args(args).current_dir(&self.dir));
        assert!(ok, "openssl {args:?}: {text}");
    }

    /// A certificate for `usage`, serial `serial`, as NAME.pem and NAME.key.
    pub fn issue(&self, name: &str, serial: u32, usage: Usage) {
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            match usage {
                Usage::Client => "extendedKeyUsage=clientAuth\n".to_string(),
                Usage::Server(names) => format!(
                    "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
                    names.join(",")
                ),
            },
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={name}");
        self.new_key(&key, &["-out", &csr, "-subj", &subject]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            ext.to_str().unwrap(),
        ]);
    }

    /// Puts NAME's certificate and key where the server reads them, the
    /// way a Secret volume update does: new files, renamed into place.
    pub fn install(&self, name: &str) {
        for (from, to) in [
            (format!("{name}.pem"), "server.pem"),
            (format!("{name}.key"), "server.key"),
        ] {
            let tmp = self.path(&format!("{to}.new"));
            std::fs::copy(self.path(&from), &tmp).unwrap();
            std::fs::rename(&tmp, self.path(to)).unwrap();
        }
    }

    /// `--certfile FILE --keyfile FILE` of the installed certificate.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--certfile".into(),
            self.path("server.pem").display().to_string(),
            "--keyfile".into(),
            self.path("server.key").display().to_string(),
        ]
    }

    /// The serial of the certificate the server at `addr` presents now,
    /// as `openssl x509 -serial` prints it (`serial=02`).
    pub fn served_serial(&self, addr: SocketAddr) -> String {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
            ])
            .arg(self.path("ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let pem = String::from_utf8_lossy(&out.stdout).to_string();
        let mut x509 = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        x509.stdin
            .take()
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
        let out = x509.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// curl against `url` with `args`; (status, http version, body), the
/// status `error: ...` when curl failed.
pub fn curl(url: &str, args: &[&str]) -> (String, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .args(args)
    .arg(url);
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = all.rsplit_once('\n').unwrap_or(("", &all));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    if !out.status.success() {
        return (
            format!("error: {}", String::from_utf8_lossy(&out.stderr).trim()),
            version.into(),
            body.into(),
        );
    }
    (code.into(), version.into(), body.into())
}
