//! Binary lookup, ports and PKI files.

use test_support::{consul_bin, etcd_bin, etcdctl_bin, free_port, free_ports, TestPki};

#[test]
fn binaries_are_found() {
    for bin in [consul_bin(), etcd_bin(), etcdctl_bin()] {
        assert!(bin.is_file(), "{}", bin.display());
    }
}

#[test]
fn ports_are_distinct() {
    let mut ports = free_ports(20);
    ports.push(free_port());
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len());
}

#[test]
fn pki_files_exist() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki"));
    for path in [
        &pki.ca_cert,
        &pki.server_cert,
        &pki.server_key,
        &pki.client_cert,
        &pki.client_key,
        &pki.expired_server_cert,
        &pki.untrusted_ca_cert,
        &pki.untrusted_client_cert,
    ] {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{}", path.display());
    }
    assert!(reqwest::Identity::from_pem(&pki.client_identity_pem()).is_ok());
}
