//! Virtual time: global nanoseconds since the start of the run, and each
//! member's own clock, which runs off by its drift (parts per million). A
//! machine's `Instant`s are on its member's clock.

use std::time::Duration;

use super::Sim;
use crate::store::Nanos;

/// One millisecond of virtual time.
pub(super) const MS: Nanos = 1_000_000;

/// One second of virtual time.
pub(super) const SEC: Nanos = 1_000_000_000;

/// A machine's local time at global time `g`, for a clock `ppm` off.
pub(super) fn to_local(ppm: i64, g: Nanos) -> Nanos {
    let g = i128::from(g);
    (g + g * i128::from(ppm) / 1_000_000) as Nanos
}

/// The earliest global time at which the clock `ppm` off shows `l`.
pub(super) fn to_global(ppm: i64, l: Nanos) -> Nanos {
    let (l, den) = (i128::from(l), 1_000_000 + i128::from(ppm));
    let mut g = (l * 1_000_000 + den - 1) / den;
    while to_local(ppm, g as Nanos) < l as Nanos {
        g += 1;
    }
    while g > 0 && to_local(ppm, (g - 1) as Nanos) >= l as Nanos {
        g -= 1;
    }
    g as Nanos
}

impl Sim {
    /// Node `n`'s clock now (a machine's `Instant`s are on its own clock).
    pub(super) fn local_now(&self, n: usize) -> Nanos {
        to_local(self.nodes[n].ppm, self.now)
    }

    /// Node `n`'s clock now, as the `std` instant every machine takes.
    pub(super) fn std_at(&self, n: usize) -> std::time::Instant {
        self.base + Duration::from_nanos(self.local_now(n))
    }

    /// The global time at which node `n`'s clock reaches `i`.
    pub(super) fn nanos_of_std(&self, n: usize, i: std::time::Instant) -> Nanos {
        let l = i.saturating_duration_since(self.base).as_nanos() as Nanos;
        to_global(self.nodes[n].ppm, l)
    }
}
