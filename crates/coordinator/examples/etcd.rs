//! The library on etcd: a full member (registers with a lease, campaigns,
//! spreads the work items while it leads) that prints its settled workload
//! and each change until Ctrl-C.
//!
//! ```text
//! etcd &
//! cargo run -p kv-coordinator --features etcd --example etcd -- m1 http://127.0.0.1:2379
//! cargo run -p kv-coordinator --features etcd -- work put w1 '{"shard":1}' --backend etcd
//! ```

use std::time::Duration;

use coordinator::{Backend, BackendKind, Config};

#[tokio::main]
async fn main() -> Result<(), coordinator::Error> {
    let mut args = std::env::args().skip(1);
    let mut config = Config::new(
        BackendKind::Etcd,
        args.next().unwrap_or_else(|| "m1".into()),
    );
    config.endpoints = args.collect(); // default http://127.0.0.1:2379
    config.ttl = Duration::from_secs(5);
    // Auth: `config.user` + `config.password_file`; TLS: `config.ca_cert`, ...
    let backend = Backend::connect(&config).await?;
    let member = backend.spawn_member(&config)?;
    let mut changes = member.worker().changes();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            change = changes.next() => {
                let Some(change) = change else { break };
                let added: Vec<&str> = change.added.iter().map(|(id, _)| &**id).collect();
                println!(
                    "revision {}: holding {} (added {added:?}, removed {:?}); leading: {}",
                    change.revision,
                    member.worker().workload().len(),
                    change.removed,
                    member.is_leader()
                );
            }
        }
    }
    member.halt().await;
    Ok(())
}
