//! The measured fault table: each scenario writes its row to
//! `<dir>/fault-report/<id>.md`, and `<dir>/fault-report.md` is rewritten with every row
//! present, sorted by id. `<dir>` is `$COORDINATOR_FAULT_REPORT_DIR`, else the workspace's
//! `target/` directory (found from the test executable's path).

use std::path::PathBuf;
use std::time::Duration;

/// One row of the fault table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Sort key and file name (`<store>-<scenario>`).
    pub id: String,
    /// The fault.
    pub fault: String,
    /// `consul` / `etcd`.
    pub store: String,
    /// Fault start → detection.
    pub detection: String,
    /// Heal → converged publication.
    pub recovery: String,
    /// What was published while the fault lasted.
    pub published: String,
    /// CPU of the worker's process during the fault.
    pub cpu: String,
}

/// The table's header.
pub const HEADER: &str = "| fault | store | detection | recovery (heal → converged) | published during the fault | worker-process CPU during the fault |\n|---|---|---|---|---|---|\n";

/// Seconds with two decimals (`1.23 s`), or milliseconds below 0.1 s (`2.6 ms`).
pub fn secs(d: Duration) -> String {
    if d < Duration::from_millis(100) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Where the report goes.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COORDINATOR_FAULT_REPORT_DIR") {
        return PathBuf::from(d);
    }
    // <target>/<profile>/deps/<test-exe>: the report goes to <target>.
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map_or_else(std::env::temp_dir, PathBuf::from)
}

/// Writes `row` and regenerates the whole table.
pub fn write_row(row: &Row) {
    let dir = dir();
    let rows = dir.join("fault-report");
    if std::fs::create_dir_all(&rows).is_err() {
        return;
    }
    let line = format!(
        "| {} | {} | {} | {} | {} | {} |\n",
        row.fault, row.store, row.detection, row.recovery, row.published, row.cpu
    );
    let _ = std::fs::write(rows.join(format!("{}.md", row.id)), line);
    let mut entries: Vec<_> = std::fs::read_dir(&rows)
        .map(|it| it.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    let mut table = String::from(HEADER);
    for path in entries {
        if let Ok(text) = std::fs::read_to_string(&path) {
            table.push_str(&text);
        }
    }
    let _ = std::fs::write(dir.join("fault-report.md"), table);
}
