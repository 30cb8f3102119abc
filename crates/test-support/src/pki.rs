//! A throw-away PKI for TLS tests.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM files of a CA, a server certificate for `127.0.0.1`, `localhost` and `::1`, a client
/// certificate, and some bad certificates for negative tests. All paths are absolute.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// The trusted CA certificate.
    pub ca_cert: PathBuf,
    /// Server certificate signed by the CA (IP SANs `127.0.0.1` and `::1`, DNS SAN `localhost`;
    /// usable for server and client authentication).
    pub server_cert: PathBuf,
    /// Key of [`TestPki::server_cert`].
    pub server_key: PathBuf,
    /// Client certificate signed by the CA (CN `client`, client authentication).
    pub client_cert: PathBuf,
    /// Key of [`TestPki::client_cert`].
    pub client_key: PathBuf,
    /// Server certificate signed by the CA whose validity ended in 2001.
    pub expired_server_cert: PathBuf,
    /// Key of [`TestPki::expired_server_cert`].
    pub expired_server_key: PathBuf,
    /// A second CA that nothing trusts.
    pub untrusted_ca_cert: PathBuf,
    /// Server certificate (same names as the good one) signed by the untrusted CA.
    pub untrusted_server_cert: PathBuf,
    /// Key of [`TestPki::untrusted_server_cert`].
    pub untrusted_server_key: PathBuf,
    /// Client certificate signed by the untrusted CA.
    pub untrusted_client_cert: PathBuf,
    /// Key of [`TestPki::untrusted_client_cert`].
    pub untrusted_client_key: PathBuf,
}

/// The files a TLS server (and the client the harness uses against it) needs.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA the server uses to verify client certificates, and clients use to verify the server.
    pub ca_cert: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// Client certificate presented by the harness's own clients.
    pub client_cert: PathBuf,
    /// Key of the client certificate.
    pub client_key: PathBuf,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "coordinator test-support");
    dn.push(DnType::CommonName, cn);
    dn
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn make_ca(dir: &Path, file: &str, cn: &str) -> (Ca, PathBuf) {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2099, 1, 1);
    let key = KeyPair::generate().expect("generate CA key");
    let cert = params.self_signed(&key).expect("self-sign CA");
    let path = dir.join(file);
    write(&path, &cert.pem());
    (
        Ca {
            issuer: Issuer::new(params, key),
        },
        path,
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Server,
    Client,
}

fn make_leaf(
    ca: &Ca,
    dir: &Path,
    stem: &str,
    kind: Kind,
    validity: (i32, i32),
) -> (PathBuf, PathBuf) {
    let (sans, cn): (Vec<String>, &str) = match kind {
        Kind::Server => (
            vec!["127.0.0.1".into(), "::1".into(), "localhost".into()],
            "localhost",
        ),
        Kind::Client => (vec!["client".into()], "client"),
    };
    let mut params = CertificateParams::new(sans).expect("certificate params");
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match kind {
        // Servers also get client auth: etcd's gateway and Consul's outgoing RPC present the
        // server certificate as a client certificate.
        Kind::Server => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = date_time_ymd(validity.0, 1, 1);
    params.not_after = date_time_ymd(validity.1, 1, 1);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generate key");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("sign certificate");
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    write(&cert_path, &cert.pem());
    write(&key_path, &key.serialize_pem());
    (cert_path, key_path)
}

impl TestPki {
    /// Generates every certificate and key into `dir` (created if missing).
    pub fn generate(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let dir = std::fs::canonicalize(dir).expect("canonicalize PKI dir");
        let good = (2000, 2099);
        let (ca, ca_cert) = make_ca(&dir, "ca.pem", "coordinator test CA");
        let (server_cert, server_key) = make_leaf(&ca, &dir, "server", Kind::Server, good);
        let (client_cert, client_key) = make_leaf(&ca, &dir, "client", Kind::Client, good);
        let (expired_server_cert, expired_server_key) =
            make_leaf(&ca, &dir, "expired-server", Kind::Server, (2000, 2001));
        let (untrusted, untrusted_ca_cert) =
            make_ca(&dir, "untrusted-ca.pem", "coordinator untrusted CA");
        let (untrusted_server_cert, untrusted_server_key) =
            make_leaf(&untrusted, &dir, "untrusted-server", Kind::Server, good);
        let (untrusted_client_cert, untrusted_client_key) =
            make_leaf(&untrusted, &dir, "untrusted-client", Kind::Client, good);
        TestPki {
            dir,
            ca_cert,
            server_cert,
            server_key,
            client_cert,
            client_key,
            expired_server_cert,
            expired_server_key,
            untrusted_ca_cert,
            untrusted_server_cert,
            untrusted_server_key,
            untrusted_client_cert,
            untrusted_client_key,
        }
    }

    /// The good server certificate, the CA and the good client certificate.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert.clone(),
            server_cert: self.server_cert.clone(),
            server_key: self.server_key.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }

    /// Like [`TestPki::tls_files`] but the server presents the expired certificate.
    pub fn expired_server_tls_files(&self) -> TlsFiles {
        TlsFiles {
            server_cert: self.expired_server_cert.clone(),
            server_key: self.expired_server_key.clone(),
            ..self.tls_files()
        }
    }

    /// Like [`TestPki::tls_files`] but the server presents a certificate from the untrusted CA.
    pub fn untrusted_server_tls_files(&self) -> TlsFiles {
        TlsFiles {
            server_cert: self.untrusted_server_cert.clone(),
            server_key: self.untrusted_server_key.clone(),
            ..self.tls_files()
        }
    }

    /// The CA certificate as PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        read(&self.ca_cert)
    }

    /// The good client certificate followed by its key, as PEM bytes (the form
    /// `reqwest::Identity::from_pem` takes).
    pub fn client_identity_pem(&self) -> Vec<u8> {
        let mut pem = read(&self.client_cert);
        pem.push(b'\n');
        pem.extend(read(&self.client_key));
        pem
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
