//! `--metrics-addr HOST:PORT`: the library's metrics served for Prometheus.

use std::net::{SocketAddr, ToSocketAddrs};

/// Parses `HOST:PORT` (an IP address or a name that resolves, e.g.
/// `127.0.0.1:9100`, `[::1]:9100`, `localhost:9100`).
/// `:PORT` means every interface (`0.0.0.0:PORT`), as node_exporter takes it.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: the port must be a number from 0 to 65535"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Installs the Prometheus recorder and serves `GET /metrics` (any path, in
/// fact) on `addr`. Call inside the runtime, before any worker or member
/// starts. Fails when the address cannot be listened on.
#[cfg(feature = "prometheus")]
pub(crate) fn serve(addr: SocketAddr) -> Result<(), String> {
    use coordinator::metrics::{PUBLICATION_DELAY, PUBLICATION_DELAY_BUCKETS};
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(PUBLICATION_DELAY.to_owned()),
            PUBLICATION_DELAY_BUCKETS,
        )
        .and_then(PrometheusBuilder::install)
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    coordinator::metrics::describe();
    tracing::info!(%addr, "serving metrics for Prometheus");
    Ok(())
}

/// Without the `prometheus` feature there is no exporter to serve them with.
#[cfg(not(feature = "prometheus"))]
pub(crate) fn serve(_addr: SocketAddr) -> Result<(), String> {
    Err("this build has no Prometheus exporter; build the coordinator crate with its `prometheus` feature".to_owned())
}
