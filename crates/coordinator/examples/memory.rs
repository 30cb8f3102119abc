//! The library on the in-process memory store: a worker follows its
//! assignments while this program plays the leader and writes them.
//!
//! ```text
//! cargo run -p kv-coordinator --example memory
//! ```

use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, MemoryStore};

#[tokio::main]
async fn main() -> Result<(), coordinator::Error> {
    let store = MemoryStore::new();
    store.set_leader("leader-1");
    let mut config = Config::new(BackendKind::Memory, "m1");
    config.soak = Duration::from_millis(100);
    let worker = Backend::memory(store.clone()).spawn_worker(&config)?;
    let mut changes = worker.changes();

    // What a leader would write: `<prefix><member>/<work>`.
    store.put("service/coordinator/assignments/m1/w1", "params-1");
    store.put("service/coordinator/assignments/m1/w2", "params-2");
    store.put("service/coordinator/assignments/m2/w3", "not ours");
    let first = changes.next().await.expect("the first settled workload");
    println!(
        "settled at revision {}: {:?}",
        first.revision,
        worker.workload().keys().collect::<Vec<_>>()
    );

    store.delete("service/coordinator/assignments/m1/w1");
    let next = changes.next().await.expect("the next change");
    println!("revision {}: removed {:?}", next.revision, next.removed);
    worker.halt().await;
    Ok(())
}
