//! Build script: tells a user without `protoc` what to install.
//!
//! `etcd-client` (a dependency, so its build script runs before this one)
//! compiles etcd's `.proto` files and fails when `protoc` is missing, with
//! prost-build's message ("Could not find `protoc` … set the `PROTOC` …").
//! This script repeats the advice in this crate's terms when it runs in an
//! environment that would not find `protoc` (e.g. a cached dependency build).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=PATH");
    let protoc_set = env::var_os("PROTOC").is_some_and(|p| Path::new(&p).is_file());
    let on_path = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("protoc").is_file()));
    if !protoc_set && !on_path {
        println!(
            "cargo:warning=kv-coordinator-etcd (the `etcd` feature of kv-coordinator) needs `protoc` to build etcd-client: \
             install protobuf-compiler and libprotobuf-dev (Debian: apt-get install \
             protobuf-compiler libprotobuf-dev), or set PROTOC to a protoc binary"
        );
    }
}
