//! The shared fault-scenario runner and invariant checker.
//!
//! A [`Harness`] starts a worker on a real store with the worker's connection going through
//! a [`FaultProxy`] (or straight to the members, for the cluster scenario), writes
//! assignments with its own direct client, keeps the history of every member state it
//! wrote, and records every publication with its time. A scenario then opens a [`Fault`],
//! applies it, heals it, and [`Harness::finish`] checks the invariants every fault is held
//! to:
//!
//! - **(a)** nothing is published while the fault lasts unless the worker could see a change
//!   the test made (only under added latency), and never an empty set;
//! - **(b)** every published set equals a state the test wrote;
//! - **(c)** after healing, the settled set converges to the store's current contents
//!   within the scenario's bound (and the worker's workload equals it);
//! - **(d)** the test process (worker, backend, proxy) uses little CPU while the fault lasts:
//!   no tight retry loop.
//!
//! It also measures the detection time (fault start to the worker's first warning, or to the
//! event the scenario names) and the recovery time (heal to the converged publication), and
//! writes one row of the fault table ([`crate::report`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use test_support::FaultProxy;
use tokio::sync::watch;
use tokio::time::Instant;
use worker_core::{KvWatch, LeaderWait, Worker, WorkerConfig, WorkerHandle};

use crate::capture::{self, Captured};
use crate::report::{self, Row};
use crate::stores::{assignment_prefix, leader_name, StoreKind, StoreServer};
use crate::{cpu_time, EVENT_TIMEOUT};

/// A member's assignments as the test wrote them (or the worker published them):
/// work id → value.
pub type State = BTreeMap<String, String>;

/// Timing knobs of the suites (short, so that the suites are fast).
#[derive(Clone, Copy, Debug)]
pub struct Knobs {
    /// Worker soak.
    pub soak: Duration,
    /// Worker leader settle.
    pub leader_settle: Duration,
    /// Worker backoff minimum.
    pub backoff_min: Duration,
    /// Worker backoff maximum.
    pub backoff_max: Duration,
    /// Consul blocking-query wait.
    pub consul_wait: Duration,
    /// etcd keep-alive (dead-connection bound, per-request timeout).
    pub etcd_keepalive: Duration,
}

/// The knobs every fault scenario uses.
pub const KNOBS: Knobs = Knobs {
    soak: Duration::from_millis(100),
    leader_settle: Duration::from_millis(500),
    backoff_min: Duration::from_millis(100),
    backoff_max: Duration::from_secs(2),
    consul_wait: Duration::from_secs(5),
    etcd_keepalive: Duration::from_secs(3),
};

impl Knobs {
    /// The worker config for `instance_id` under namespace `ns`.
    pub fn worker_config(&self, ns: &str, instance_id: &str) -> WorkerConfig {
        WorkerConfig::new(instance_id)
            .prefix(assignment_prefix(ns))
            .soak(self.soak)
            .leader_settle(self.leader_settle)
            .backoff(self.backoff_min, self.backoff_max)
    }

    /// The documented bound on convergence once the store is reachable again: the longest
    /// backoff delay, one leader settle (if the leader observation failed too), the soak, and
    /// one second for the request itself and Consul's rate limiter.
    pub fn convergence_bound(&self) -> Duration {
        self.backoff_max + self.leader_settle + self.soak + Duration::from_secs(1)
    }

    /// The documented bound on detecting a black-holed connection: Consul gives up on a
    /// blocking query after `wait + wait/16 + 5 s`; etcd after `keepalive` (a progress
    /// request after half of it, the other half for the answer).
    pub fn black_hole_bound(&self, kind: StoreKind) -> Duration {
        match kind {
            StoreKind::Consul => self.consul_wait + self.consul_wait / 16 + Duration::from_secs(5),
            StoreKind::Etcd => self.etcd_keepalive,
        }
    }
}

/// Extra time allowed over a documented bound before a test fails (a loaded 2-core machine
/// also runs the stores).
pub const LOAD_SLACK: Duration = Duration::from_secs(3);

/// One settled publication as the application saw it.
#[derive(Clone, Debug)]
pub struct Publication {
    /// When it arrived.
    pub at: Instant,
    /// The store position it was observed at.
    pub revision: u64,
    /// The whole settled set after it.
    pub set: State,
}

/// Records every publication of a worker with its time.
#[derive(Debug)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Publication>>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Starts recording `worker`'s changes (subscribe before the first sync to see it).
    pub fn start(worker: &WorkerHandle) -> Self {
        let mut changes = worker.changes();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0);
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                let mut held = worker_core::Workload::new();
                while let Some(change) = changes.next().await {
                    change.apply_to(&mut held);
                    let set = held
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                        .collect();
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.push(Publication {
                        at: Instant::now(),
                        revision: change.revision,
                        set,
                    });
                    tx.send_replace(log.len());
                }
            }
        });
        Self { log, count, task }
    }

    /// Every publication so far.
    pub fn all(&self) -> Vec<Publication> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (at most `timeout`) for a publication at or after `since` whose set is `want`.
    pub async fn wait_for_set(
        &self,
        want: &State,
        since: Instant,
        timeout: Duration,
    ) -> Publication {
        let mut count = self.count.clone();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(p) = self
                    .all()
                    .into_iter()
                    .find(|p| p.at >= since && &p.set == want)
                {
                    return p;
                }
                if count.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no publication of {want:?} within {timeout:?}; publications: {:#?}",
                self.all()
            )
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the worker reaches the store.
#[derive(Clone, Debug)]
pub enum Path {
    /// Through a [`FaultProxy`] in front of the store's client port (member 0 for etcd).
    Proxy,
    /// Straight to these endpoints (empty: the store's URL).
    Direct(Vec<String>),
}

/// A worker on a real store, with the test's record of what it wrote and what was published.
pub struct Harness {
    /// The store.
    pub store: StoreServer,
    /// The proxy the worker's connection goes through (with [`Path::Proxy`]).
    pub proxy: Option<FaultProxy>,
    /// Namespace of every key of this harness.
    pub ns: String,
    /// The worker's instance id.
    pub member: String,
    /// The worker.
    pub worker: Option<WorkerHandle>,
    /// Its publications.
    pub recorder: Recorder,
    /// Every member state the test wrote, oldest first.
    pub history: Vec<State>,
    /// The member state in the store now.
    pub intended: State,
    /// The etcd backend of the worker (to see which endpoint it uses).
    pub etcd_backend: Option<EtcdBackend>,
    /// When the worker was started.
    pub started: Instant,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("ns", &self.ns)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Takes leadership, writes `initial`, starts the worker (over `path`) and waits for its
    /// first sync to publish `initial`.
    pub async fn start(store: StoreServer, ns: &str, path: Path, initial: &[(&str, &str)]) -> Self {
        capture::init();
        let member = format!("{}-m1", ns.replace('/', "_"));
        store.take_leadership(ns, "leader-1").await;
        let (proxy, endpoints) = match path {
            Path::Proxy => {
                let proxy = FaultProxy::start(store.socket_addr()).await;
                let url = proxy.http_url();
                (Some(proxy), vec![url])
            }
            Path::Direct(endpoints) if endpoints.is_empty() => (None, vec![store.url()]),
            Path::Direct(endpoints) => (None, endpoints),
        };
        let (kv, leader, etcd_backend): (Arc<dyn KvWatch>, Arc<dyn LeaderWait>, _) =
            match store.kind() {
                StoreKind::Consul => {
                    let mut config = ConsulConfig::new(endpoints);
                    config.wait = KNOBS.consul_wait;
                    config.leader_key = leader_name(ns);
                    let b = ConsulBackend::new(config).expect("consul backend");
                    (Arc::new(b.clone()), Arc::new(b), None)
                }
                StoreKind::Etcd => {
                    let config = EtcdConfig::new(endpoints)
                        .with_keepalive(KNOBS.etcd_keepalive)
                        .with_election(leader_name(ns));
                    let b = EtcdBackend::connect(config).await.expect("etcd backend");
                    (Arc::new(b.clone()), Arc::new(b.clone()), Some(b))
                }
            };
        let mut h = Self {
            store,
            proxy,
            ns: ns.to_owned(),
            member: member.clone(),
            worker: None,
            recorder: Recorder {
                log: Arc::default(),
                count: watch::channel(0).1,
                task: tokio::spawn(async {}),
            },
            history: Vec::new(),
            intended: State::new(),
            etcd_backend,
            started: Instant::now(),
        };
        for (work, value) in initial {
            h.put(work, value).await;
        }
        let worker = Worker::spawn(&KNOBS.worker_config(ns, &member), kv, leader).expect("spawn");
        h.recorder = Recorder::start(&worker);
        h.started = Instant::now();
        h.worker = Some(worker);
        let want = h.intended.clone();
        let first = h
            .recorder
            .wait_for_set(&want, h.started, EVENT_TIMEOUT)
            .await;
        assert_eq!(first.set, want, "first sync");
        h
    }

    /// Halts the worker (without checking anything).
    pub async fn halt(&mut self) {
        if let Some(w) = self.worker.take() {
            w.halt().await;
        }
    }

    /// The proxy in front of the store; panics without one.
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy.as_ref().expect("this harness has no proxy")
    }

    /// The worker.
    pub fn worker(&self) -> &WorkerHandle {
        self.worker.as_ref().expect("worker running")
    }

    /// The store key of work item `work` of this harness's member.
    pub fn key(&self, work: &str) -> String {
        format!("{}{}/{work}", assignment_prefix(&self.ns), self.member)
    }

    /// Assigns `work` = `value` in the store (directly) and records the new state.
    pub async fn put(&mut self, work: &str, value: &str) {
        self.store.put(&self.key(work), value).await;
        self.intended.insert(work.to_owned(), value.to_owned());
        self.history.push(self.intended.clone());
    }

    /// Removes `work` from the store (directly) and records the new state.
    pub async fn del(&mut self, work: &str) {
        self.store.del(&self.key(work)).await;
        self.intended.remove(work);
        self.history.push(self.intended.clone());
    }

    /// Records that the store's contents were reset to an earlier `state` (snapshot restore).
    pub fn restored(&mut self, state: State) {
        self.intended = state;
        self.history.push(self.intended.clone());
    }

    /// Opens a fault called `name` now (start time and CPU counter).
    pub fn begin_fault(&self, name: &str) -> Fault {
        Fault {
            name: name.to_owned(),
            start: Instant::now(),
            cpu_start: cpu_time(),
            heal: None,
            cpu_during: None,
        }
    }

    /// Waits (at most `timeout` from now) for a publication of the intended state at or
    /// after `since`.
    pub async fn await_converged(&self, since: Instant, timeout: Duration) -> Publication {
        let want = self.intended.clone();
        self.recorder.wait_for_set(&want, since, timeout).await
    }

    /// Checks invariants (a)–(d) for `fault` (which must be healed), measures detection and
    /// recovery, writes the report row, halts the worker and returns the measurements.
    pub async fn finish(&mut self, fault: &Fault, expect: &Expect) -> Measured {
        let heal = fault.heal.expect("fault not healed");
        // (c) convergence to the store's current contents, within the bound.
        let converged = self
            .await_converged(heal, expect.recovery_bound + LOAD_SLACK + EVENT_TIMEOUT)
            .await;
        let cpu_at_convergence = cpu_time();
        let recovery = converged.at.saturating_duration_since(heal);
        assert!(
            recovery <= expect.recovery_bound + LOAD_SLACK,
            "{}: converged {recovery:?} after healing; documented bound {:?} (+{LOAD_SLACK:?} slack)",
            fault.name,
            expect.recovery_bound
        );
        // Give a late (wrong) publication a chance to show up, then halt.
        tokio::time::sleep(KNOBS.soak * 5).await;
        let worker = self.worker.take().expect("worker running");
        let workload: State = worker
            .workload()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        worker.halt().await;
        assert_eq!(
            workload, self.intended,
            "{}: the settled workload differs from the store",
            fault.name
        );

        let publications = self.recorder.all();
        // (b) every published set is a state the test wrote.
        for p in &publications {
            assert!(
                self.history.contains(&p.set),
                "{}: published a set the test never wrote: {:?} (history {:?})",
                fault.name,
                p.set,
                self.history
            );
            assert!(
                !p.set.is_empty() || self.history.first().is_some_and(State::is_empty),
                "{}: published an empty set",
                fault.name
            );
        }
        // The last publication is the converged state.
        let last = publications.last().expect("publications");
        assert_eq!(last.set, self.intended, "{}: last publication", fault.name);
        // (a) nothing published during the fault unless the worker could see a change.
        let during: Vec<&Publication> = publications
            .iter()
            .filter(|p| p.at >= fault.start && p.at < heal)
            .collect();
        if expect.quiet_during_fault {
            assert!(
                during.is_empty(),
                "{}: published during the fault: {during:#?}",
                fault.name
            );
        }
        // (d) CPU while the fault lasted.
        let (cpu, held) = match fault.cpu_during {
            Some(cpu) => (cpu, heal.saturating_duration_since(fault.start)),
            None => (
                cpu_at_convergence.saturating_sub(fault.cpu_start),
                converged.at.saturating_duration_since(fault.start),
            ),
        };
        assert!(
            cpu < expect.max_cpu,
            "{}: the test process used {cpu:?} of CPU during a {held:?} fault (limit {:?}): a tight loop?",
            fault.name,
            expect.max_cpu
        );

        let events = capture::of_worker(&self.member, fault.start);
        let detection = events
            .iter()
            .find(|c| (expect.detected_by)(c))
            .map(|c| c.at.saturating_duration_since(fault.start));
        if let Some(bound) = expect.detection_bound {
            let d = detection.unwrap_or_else(|| {
                panic!(
                    "{}: the fault was never detected; events: {events:#?}",
                    fault.name
                )
            });
            assert!(
                d <= bound + LOAD_SLACK,
                "{}: detected after {d:?}; documented bound {bound:?} (+{LOAD_SLACK:?} slack)",
                fault.name
            );
        }
        let warnings = events.iter().filter(|c| c.is_warn()).count();
        let first_warning = events.iter().find(|c| c.is_warn()).map(|c| c.text.clone());
        let measured = Measured {
            detection,
            recovery,
            published_during: during.iter().map(|p| p.set.clone()).collect(),
            cpu,
            held,
            warnings,
            first_warning,
        };
        self.write_row(fault, expect, &measured);
        eprintln!("{}: {measured:?}", fault.name);
        measured
    }

    fn write_row(&self, fault: &Fault, expect: &Expect, measured: &Measured) {
        let (detection, recovery, cpu, held) = (
            measured.detection,
            measured.recovery,
            measured.cpu,
            measured.held,
        );
        report::write_row(&Row {
            id: format!("{}-{}", self.store.kind().name(), expect.id),
            fault: fault.name.clone(),
            store: self.store.kind().name().to_owned(),
            detection: match detection {
                Some(d) => format!("{} {}", report::secs(d), expect.detection_note),
                None => format!("none {}", expect.detection_note),
            }
            .trim()
            .to_owned(),
            recovery: format!("{} {}", report::secs(recovery), expect.recovery_note)
                .trim()
                .to_owned(),
            published: format!(
                "{} {}",
                describe_during(measured, expect.quiet_during_fault),
                expect.published_note
            )
            .trim()
            .to_owned(),
            cpu: if fault.cpu_during.is_some() {
                format!("{:.2} s in {:.0} s", cpu.as_secs_f64(), held.as_secs_f64())
            } else {
                format!(
                    "{:.2} s from the fault until converged ({})",
                    cpu.as_secs_f64(),
                    report::secs(held)
                )
            },
        });
    }
}

fn describe_during(m: &Measured, quiet: bool) -> String {
    if m.published_during.is_empty() {
        "nothing (settled set kept)".to_owned()
    } else if quiet {
        format!("{} sets (unexpected)", m.published_during.len())
    } else {
        format!(
            "{} set(s), each one the test wrote",
            m.published_during.len()
        )
    }
}

/// A fault in progress.
#[derive(Debug)]
pub struct Fault {
    /// Its name in the report.
    pub name: String,
    /// When it started.
    pub start: Instant,
    cpu_start: Duration,
    heal: Option<Instant>,
    cpu_during: Option<Duration>,
}

impl Fault {
    /// Marks the fault healed now (and reads the CPU used since it started).
    pub fn heal(&mut self) -> Instant {
        let now = Instant::now();
        self.heal = Some(now);
        self.cpu_during = Some(cpu_time().saturating_sub(self.cpu_start));
        now
    }

    /// Marks an instantaneous fault (a restore, a member killed for good) healed at `at`;
    /// its CPU figure then covers the time until the worker converged.
    pub fn heal_at(&mut self, at: Instant) {
        self.heal = Some(at);
    }
}

/// What a scenario expects.
pub struct Expect {
    /// Short id of the scenario (report row id).
    pub id: &'static str,
    /// Nothing may be published between the fault's start and its heal.
    pub quiet_during_fault: bool,
    /// Bound on heal → converged publication.
    pub recovery_bound: Duration,
    /// Bound on fault start → detection (None: detection is not required).
    pub detection_bound: Option<Duration>,
    /// Which event counts as detection.
    pub detected_by: fn(&Captured) -> bool,
    /// Appended to the detection figure in the report.
    pub detection_note: String,
    /// Appended to the recovery figure in the report.
    pub recovery_note: String,
    /// Appended to the "published during the fault" cell.
    pub published_note: String,
    /// Most CPU the test process may use while the fault lasts.
    pub max_cpu: Duration,
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expect")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Expect {
    /// Defaults: quiet during the fault, detection by the first warning (not required),
    /// recovery within [`Knobs::convergence_bound`], at most 0.5 s of CPU.
    pub fn new(id: &'static str) -> Self {
        Self {
            id,
            quiet_during_fault: true,
            recovery_bound: KNOBS.convergence_bound(),
            detection_bound: None,
            detected_by: Captured::is_warn,
            detection_note: String::new(),
            recovery_note: String::new(),
            published_note: String::new(),
            max_cpu: Duration::from_millis(500),
        }
    }
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Fault start → detection event.
    pub detection: Option<Duration>,
    /// Heal → converged publication.
    pub recovery: Duration,
    /// Sets published while the fault lasted.
    pub published_during: Vec<State>,
    /// CPU used by the test process while the fault lasted.
    pub cpu: Duration,
    /// How long the fault lasted.
    pub held: Duration,
    /// Warnings the worker logged from the fault's start on.
    pub warnings: usize,
    /// The first of them.
    pub first_warning: Option<String>,
}

/// Detection by the first warning or a "position lost" relist.
pub fn warn_or_lost(c: &Captured) -> bool {
    c.is_warn() || c.text.contains("position lost")
}

/// Detection by a "position lost" relist only.
pub fn lost(c: &Captured) -> bool {
    c.text.contains("position lost")
}
