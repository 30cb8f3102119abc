//! Integration tests of the etcd backend against real etcd servers (never mocks).
//!
//! One test binary (modules below) so the workspace links it once. Servers come
//! from `test-support`: run `scripts/install-stores` first.

mod cluster;
mod common;
mod conformance;
mod election;
mod keepalive;
mod member;
mod outages;
mod security;
