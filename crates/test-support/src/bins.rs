//! Locating the store binaries.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The tools directory: `$COORDINATOR_TOOLS_DIR`, else `$HOME/.cache/coordinator-tools`.
/// Binaries live in its `bin/` subdirectory.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COORDINATOR_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache").join("coordinator-tools")
}

/// Path of the `consul` binary (`CONSUL_BIN`, then `PATH`, then the tools dir).
///
/// Panics, telling to run `scripts/install-stores`, when it is nowhere.
pub fn consul_bin() -> PathBuf {
    find_binary("consul", "CONSUL_BIN")
}

/// Path of the `etcd` binary (`ETCD_BIN`, then `PATH`, then the tools dir).
///
/// Panics, telling to run `scripts/install-stores`, when it is nowhere.
pub fn etcd_bin() -> PathBuf {
    find_binary("etcd", "ETCD_BIN")
}

/// Path of the `etcdctl` binary (`ETCDCTL_BIN`, then `PATH`, then the tools dir).
///
/// Panics, telling to run `scripts/install-stores`, when it is nowhere.
pub fn etcdctl_bin() -> PathBuf {
    find_binary("etcdctl", "ETCDCTL_BIN")
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(value) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&value);
        if is_executable(&path) {
            return path;
        }
        // A bare name in the variable: look it up on PATH.
        if let Some(found) = search_path(&value) {
            return found;
        }
        panic!(
            "{env_var}={} is not an executable file; fix it or unset it and run \
             scripts/install-stores",
            path.display()
        );
    }
    if let Some(found) = search_path(OsStr::new(name)) {
        return found;
    }
    let in_tools = tools_dir().join("bin").join(name);
    if is_executable(&in_tools) {
        return in_tools;
    }
    panic!(
        "`{name}` was not found (looked at ${env_var}, PATH and {}). Run `scripts/install-stores` \
         (as root) to install consul, etcd and etcdctl, or set {env_var} to the binary.",
        in_tools.display()
    );
}

fn search_path(name: &OsStr) -> Option<PathBuf> {
    if Path::new(name).components().count() != 1 {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}
