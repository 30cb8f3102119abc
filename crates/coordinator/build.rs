//! Records the commit the program is built from, for `coordinator --version`:
//! `COORDINATOR_COMMIT` when set (a packager's choice), else `git rev-parse`,
//! else "unknown" (a build from a published package).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=COORDINATOR_COMMIT");
    let commit = std::env::var("COORDINATOR_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: its file, and the branch it names.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                let dir = PathBuf::from(dir);
                println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    let common =
                        git(&["rev-parse", "--git-common-dir"]).map_or(dir.clone(), PathBuf::from);
                    println!("cargo:rerun-if-changed={}", common.join(r).display());
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=COORDINATOR_COMMIT={commit}");
}
