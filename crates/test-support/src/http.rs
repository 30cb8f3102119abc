//! HTTP(S) client used for readiness probes and KV helpers.

use std::time::Duration;

use crate::pki::TlsFiles;

/// A client for loopback servers: no proxy, short timeouts, optionally presenting the test
/// client certificate. Server certificates are not verified: the harness only probes its own
/// servers (which may deliberately run with a bad certificate in negative tests).
pub(crate) fn client(tls: Option<&TlsFiles>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .danger_accept_invalid_certs(true);
    if let Some(tls) = tls {
        let mut pem = std::fs::read(&tls.client_cert)
            .unwrap_or_else(|e| panic!("read {}: {e}", tls.client_cert.display()));
        pem.push(b'\n');
        pem.extend(
            std::fs::read(&tls.client_key)
                .unwrap_or_else(|e| panic!("read {}: {e}", tls.client_key.display())),
        );
        let identity = reqwest::Identity::from_pem(&pem).expect("client identity from PEM");
        builder = builder.identity(identity);
    }
    builder.build().expect("build HTTP client")
}
