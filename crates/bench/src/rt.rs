//! Dedicated single-thread runtimes, so that the benchmark's own clients (the
//! writer issuing PUTs, the reference watchers) run on threads of their own and
//! their CPU time can be told apart from the worker's.

use std::future::Future;

use tokio::runtime::Handle;

/// A current-thread tokio runtime on its own OS thread; it runs until the process ends.
#[derive(Debug, Clone)]
pub struct Lane {
    handle: Handle,
}

impl Lane {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build lane runtime");
                tx.send(rt.handle().clone()).expect("hand over the lane");
                rt.block_on(std::future::pending::<()>());
            })
            .expect("spawn lane thread");
        Self {
            handle: rx.recv().expect("lane runtime"),
        }
    }

    /// Runs `fut` on this lane and waits for its output.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.expect("lane task panicked")
    }

    /// Spawns `fut` on this lane.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// CPU time used by this lane's thread so far, in microseconds.
    pub async fn cpu_us(&self) -> u64 {
        self.run(async { crate::measure::thread_cpu_us() }).await
    }
}
