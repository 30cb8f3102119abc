//! The event trace: a digest over every line (FNV-1a, 64 bits) and the last
//! lines kept for a failure report.

use std::collections::VecDeque;
use std::fmt::Write as _;

/// Lines kept for a failure report.
pub const KEEP: usize = 60;

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    digest: u64,
    lines: u64,
    recent: VecDeque<String>,
    /// Print every line to stderr as it comes (replaying one seed).
    pub echo: bool,
    buf: String,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            digest: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            recent: VecDeque::with_capacity(KEEP + 1),
            echo: false,
            buf: String::new(),
        }
    }
}

impl Trace {
    /// Adds one line `at` (virtual nanoseconds).
    pub fn line(&mut self, at: u64, args: std::fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = write!(
            self.buf,
            "{:>7}.{:06} {}",
            at / 1_000_000_000,
            (at % 1_000_000_000) / 1000,
            args
        );
        for b in self.buf.bytes().chain(std::iter::once(b'\n')) {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.lines += 1;
        if self.echo {
            eprintln!("{}", self.buf);
        }
        if self.recent.len() == KEEP {
            if let Some(mut old) = self.recent.pop_front() {
                old.clear();
                old.push_str(&self.buf);
                self.recent.push_back(old);
                return;
            }
        }
        self.recent.push_back(self.buf.clone());
    }

    /// The digest of every line so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// How many lines so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The last lines.
    pub fn recent(&self) -> impl Iterator<Item = &String> {
        self.recent.iter()
    }
}
