//! Failure paths: loud startup failures and clean-up on panic.

use std::path::Path;

use test_support::{ConsulAgent, EtcdServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "log tail")]
async fn bad_consul_config_fails_with_log_tail() {
    let _agent = ConsulAgent::builder()
        .extra_json("{ this is not json")
        .start()
        .await;
}

/// Starts a server on a thread of its own, reports its PID and temp dir, then panics.
fn panic_while_running<F>(start: F) -> (u32, std::path::PathBuf)
where
    F: FnOnce(std::sync::mpsc::Sender<(u32, std::path::PathBuf)>) + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || start(tx));
    assert!(handle.join().is_err(), "the thread was meant to panic");
    rx.recv().unwrap()
}

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn consul_is_killed_and_cleaned_up_on_panic() {
    let (pid, dir) = panic_while_running(|tx| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let agent = ConsulAgent::builder().server_mode().start().await;
            tx.send((agent.pid().unwrap(), agent.dir().to_path_buf()))
                .unwrap();
            panic!("deliberate test panic");
        });
    });
    assert!(process_gone(pid), "consul {pid} survived the panic");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn etcd_is_killed_and_cleaned_up_on_panic() {
    let (pid, dir) = panic_while_running(|tx| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let etcd = EtcdServer::start().await;
            tx.send((
                etcd.cluster().pid(0).unwrap(),
                etcd.cluster().dir().to_path_buf(),
            ))
            .unwrap();
            panic!("deliberate test panic");
        });
    });
    assert!(process_gone(pid), "etcd {pid} survived the panic");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
