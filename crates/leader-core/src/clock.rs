//! The clock the drivers read.
//!
//! The sans-IO machines of both core crates take `std::time::Instant`: they
//! depend on no runtime, and the simulator and the pure tests hand them
//! instants of a virtual clock. The tokio drivers read tokio's clock and
//! convert it, so that under tokio's paused clock (`start_paused`) the
//! machines see the paused time too.

/// Now, on tokio's clock (the paused one in tests that pause it), as a
/// `std` instant for the machines.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
