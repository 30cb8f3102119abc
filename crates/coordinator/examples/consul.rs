//! The library on Consul: a worker that prints its settled workload and each
//! change until Ctrl-C.
//!
//! ```text
//! consul agent -dev &
//! cargo run -p kv-coordinator --example consul -- m1 http://127.0.0.1:8500
//! consul lock service/coordinator/leader sleep 3600 &   # a leader: the lock holder
//! consul kv put service/coordinator/assignments/m1/w1 params
//! ```

use coordinator::{Backend, BackendKind, Config};

#[tokio::main]
async fn main() -> Result<(), coordinator::Error> {
    let mut args = std::env::args().skip(1);
    let mut config = Config::new(
        BackendKind::Consul,
        args.next().unwrap_or_else(|| "m1".into()),
    );
    config.endpoints = args.collect(); // default http://127.0.0.1:8500
                                       // The key `consul lock service/coordinator/leader` holds.
    config.leader = "service/coordinator/leader/.lock".into();
    // ACL token: `config.token_file`, or CONSUL_HTTP_TOKEN; TLS: `config.ca_cert`, ...
    let backend = Backend::connect(&config).await?;
    let worker = backend.spawn_worker(&config)?;
    let mut changes = worker.changes();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            change = changes.next() => {
                let Some(change) = change else { break };
                let added: Vec<&str> = change.added.iter().map(|(id, _)| &**id).collect();
                println!(
                    "revision {}: holding {} (added {added:?}, removed {:?})",
                    change.revision,
                    worker.workload().len(),
                    change.removed
                );
            }
        }
    }
    worker.halt().await;
    Ok(())
}
