//! The Prometheus recorder behind `GET /metrics` (cargo feature `prometheus`).

/// The installed recorder's handle, rendering the text format.
#[cfg(feature = "prometheus")]
#[derive(Clone)]
pub(crate) struct Metrics(metrics_exporter_prometheus::PrometheusHandle);

/// Without the `prometheus` feature: nothing to render.
#[cfg(not(feature = "prometheus"))]
#[derive(Clone)]
pub(crate) struct Metrics;

/// How often the recorder's upkeep runs (draining histogram samples).
#[cfg(feature = "prometheus")]
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

impl Metrics {
    /// Installs the Prometheus recorder as the process's metrics recorder,
    /// with [`PUBLICATION_DELAY_BUCKETS`](coordinator::metrics::PUBLICATION_DELAY_BUCKETS)
    /// for the publication delay, and runs its upkeep. Call inside the
    /// runtime, before any worker or member starts.
    #[cfg(feature = "prometheus")]
    pub(crate) fn install() -> Result<Self, String> {
        use coordinator::metrics::{PUBLICATION_DELAY, PUBLICATION_DELAY_BUCKETS};
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(PUBLICATION_DELAY.to_owned()),
                PUBLICATION_DELAY_BUCKETS,
            )
            .and_then(PrometheusBuilder::install_recorder)
            .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
        coordinator::metrics::describe();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Self(handle))
    }

    /// Without the `prometheus` feature there is no recorder to install.
    #[cfg(not(feature = "prometheus"))]
    #[allow(clippy::unnecessary_wraps)] // one signature for both builds
    pub(crate) fn install() -> Result<Self, String> {
        Ok(Self)
    }

    /// The Prometheus text page.
    #[cfg(feature = "prometheus")]
    #[allow(clippy::unnecessary_wraps)] // one signature for both builds
    pub(crate) fn render(&self) -> Option<String> {
        Some(self.0.render())
    }

    /// `None`: this build has no Prometheus exporter.
    #[cfg(not(feature = "prometheus"))]
    #[allow(clippy::unused_self)] // one signature for both builds
    pub(crate) fn render(&self) -> Option<String> {
        None
    }
}
