//! Certificates for TLS tests, made with the `openssl` command: a test
//! CA, a broker certificate it signs (for `localhost` and 127.0.0.1), a
//! client certificate it signs, and a second CA that signs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// PEM files in one directory (keys are PKCS #8, unencrypted); dropping
/// it deletes the directory.
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Generates every certificate into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Certificates {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let certs = Certificates {
            dir: dir.to_path_buf(),
        };
        certs.self_signed("ca", "amqp-stream test CA");
        certs.self_signed("other-ca", "amqp-stream untrusted CA");
        certs.signed(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        certs.signed(
            "client",
            "amqp-stream test client",
            "extendedKeyUsage=clientAuth\n",
        );
        certs
    }

    /// The test CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed none of these certificates.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The broker's certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server.key"))
    }

    /// The client's certificate and key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client.key"))
    }

    /// A file that exists but holds no certificate.
    pub fn not_pem(&self) -> PathBuf {
        self.path("server.ext")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn self_signed(&self, name: &str, subject: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={subject}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn signed(&self, name: &str, subject: &str, extensions: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={subject}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        std::fs::write(self.path(&format!("{name}.ext")), extensions).expect("extensions file");
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("the openssl command runs (scripts/ensure-build-deps.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
