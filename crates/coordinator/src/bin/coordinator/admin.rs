//! `coordinator work put|rm|ls`, `coordinator status` and `coordinator
//! drain ID`: operators' tools.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use coordinator::config::{BackendKind, DEFAULT_LEADER};
use coordinator::leader::layout::{
    DEFAULT_DRAIN_PREFIX, DEFAULT_HANDOFF_PREFIX, DEFAULT_MEMBERS_PREFIX, DEFAULT_SEQUENCE_KEY,
    DEFAULT_WORK_PREFIX,
};
use coordinator::{Backend, Error, ErrorChain, Layout, MemberMeta, MemberStore, DEFAULT_PREFIX};
use serde::Serialize;

use crate::{config_error, usage_error, ConnArgs};

/// Where the store is and where the keys live (for `work` and `status`).
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Assignment prefix.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Consul leader key, or etcd election name.
    #[arg(long, default_value = DEFAULT_LEADER)]
    leader: String,
    /// Members prefix.
    #[arg(long, default_value = DEFAULT_MEMBERS_PREFIX)]
    members_prefix: String,
    /// Work-items prefix.
    #[arg(long, default_value = DEFAULT_WORK_PREFIX)]
    work_prefix: String,
    /// Handoff-records prefix.
    #[arg(long, default_value = DEFAULT_HANDOFF_PREFIX)]
    handoff_prefix: String,
    /// Drain-requests prefix.
    #[arg(long, default_value = DEFAULT_DRAIN_PREFIX)]
    drain_prefix: String,
    /// The key every leader transaction checks and bumps.
    #[arg(long, default_value = DEFAULT_SEQUENCE_KEY)]
    sequence_key: String,
}

/// `coordinator drain ID`.
#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The member to drain.
    id: String,
    /// Return once the request is written, without waiting for the member to leave.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the member to leave (exit 1 after it).
    #[arg(long, value_parser = coordinator::config::parse_duration, default_value = "2m", allow_hyphen_values = true)]
    timeout: std::time::Duration,
}

/// `coordinator work ...`.
#[derive(Args, Debug, Clone)]
pub struct WorkArgs {
    #[command(subcommand)]
    op: WorkOp,
}

#[derive(Subcommand, Debug, Clone)]
enum WorkOp {
    /// Adds (or updates) a work item.
    Put {
        #[command(flatten)]
        store: StoreArgs,
        /// The work id (one path segment).
        id: String,
        /// The item's parameters, copied into its assignment.
        value: Option<String>,
    },
    /// Removes a work item.
    Rm {
        #[command(flatten)]
        store: StoreArgs,
        /// The work id.
        id: String,
    },
    /// Lists the work items, one per line: `ID<TAB>VALUE`.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `coordinator status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

async fn connect(args: StoreArgs) -> Result<(Layout, MemberStore), ExitCode> {
    let mut c = args.conn.config("coordinator-cli".to_owned());
    if c.backend == BackendKind::Memory {
        return Err(usage_error(
            "invalid --backend: the memory store lives inside one process; use consul or etcd (or `coordinator demo`)",
        ));
    }
    c.prefix = args.prefix;
    c.leader = args.leader;
    c.members_prefix = args.members_prefix;
    c.work_prefix = args.work_prefix;
    c.handoff_prefix = args.handoff_prefix;
    c.drain_prefix = args.drain_prefix;
    c.sequence_key = args.sequence_key;
    if let Err(e) = c.validate().and_then(|()| c.layout().validate()) {
        return Err(config_error(&e));
    }
    let backend = match Backend::connect(&c).await {
        Ok(b) => b,
        Err(Error::Config(e)) => return Err(config_error(&e)),
        Err(e) => return Err(usage_error(&ErrorChain(&e).to_string())),
    };
    match backend.member_store() {
        Some(store) => Ok((c.layout(), store.clone())),
        None => Err(usage_error(&format!(
            "invalid --backend: {} cannot manage work items",
            c.backend
        ))),
    }
}

fn fail(what: &str, e: &coordinator::StoreError) -> ExitCode {
    eprintln!("coordinator: {what}: {}", ErrorChain(e));
    ExitCode::FAILURE
}

pub async fn work(args: WorkArgs) -> ExitCode {
    let (WorkOp::Put { store, .. } | WorkOp::Rm { store, .. } | WorkOp::Ls { store }) = &args.op;
    let (layout, store) = match connect(store.clone()).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match args.op {
        WorkOp::Put { id, value, .. } => {
            if let Err(reason) = check_work_id(&id) {
                return usage_error(&format!("invalid work id {id:?}: {reason}"));
            }
            let value = Bytes::from(value.unwrap_or_default());
            match store.kv_write.put_key(&layout.work_key(&id), value).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("cannot write the work item", &e),
            }
        }
        WorkOp::Rm { id, .. } => match store.kv_write.delete_key(&layout.work_key(&id)).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("coordinator: no work item {id:?}");
                ExitCode::FAILURE
            }
            Err(e) => fail("cannot remove the work item", &e),
        },
        WorkOp::Ls { .. } => match store.kv.list(&layout.work).await {
            Ok(snapshot) => {
                let mut lines = String::new();
                let mut entries = snapshot.entries;
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                for e in entries {
                    if let Ok(id) = layout.parse_work(&e.key) {
                        lines.push_str(id);
                        lines.push('\t');
                        lines.push_str(&String::from_utf8_lossy(&e.value));
                        lines.push('\n');
                    }
                }
                print!("{lines}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("cannot list the work items", &e),
        },
    }
}

/// Asks member `ID` to drain and leave (a request key it watches), then
/// waits until its member key is gone. Exit 0: it left; 1: it did not within
/// the timeout, or there is no such member; 2: bad input.
pub async fn drain(args: DrainArgs) -> ExitCode {
    if let Err(e) = coordinator::validate_instance_id(&args.id) {
        return usage_error(&format!("invalid member id {:?}: {}", args.id, e.reason));
    }
    let (layout, store) = match connect(args.store).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let member_key = layout.member_key(&args.id);
    let (mut members, task) = coordinator::leader::follow::spawn_follow(
        store.kv.clone(),
        member_key.clone(),
        (
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(2),
        ),
    );
    let _task = AbortOnDrop(task);
    let present = |m: &Option<std::sync::Arc<coordinator::leader::follow::PrefixMap>>| {
        m.as_ref()
            .is_some_and(|m| m.contains_key(member_key.as_bytes()))
    };
    let wait = async {
        let first = members
            .wait_for(Option::is_some)
            .await
            .is_ok_and(|m| present(&m));
        if !first {
            return Err("no live member");
        }
        if let Err(e) = store
            .kv_write
            .put_key(&layout.drain_key(&args.id), Bytes::from_static(b"drain"))
            .await
        {
            eprintln!(
                "coordinator: cannot write the drain request: {}",
                ErrorChain(&e)
            );
            return Err("request not written");
        }
        eprintln!("coordinator: drain of {} requested", args.id);
        if args.no_wait {
            return Ok(());
        }
        let _ = members.wait_for(|m| m.is_some() && !present(m)).await;
        Ok(())
    };
    match tokio::time::timeout(args.timeout, wait).await {
        Ok(Ok(())) => {
            if !args.no_wait {
                eprintln!("coordinator: {} left", args.id);
            }
            ExitCode::SUCCESS
        }
        Ok(Err(what)) => {
            eprintln!("coordinator: {what} {:?}", args.id);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "coordinator: {} did not leave within {:?}",
                args.id, args.timeout
            );
            ExitCode::FAILURE
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn check_work_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("must not be empty")
    } else if id.contains('/') {
        Err("must be one path segment (no '/')")
    } else if id.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else {
        Ok(())
    }
}

/// What `status --json` prints.
#[derive(Serialize, Default)]
struct Status {
    leader: Option<String>,
    items: usize,
    unassigned: Vec<String>,
    members: BTreeMap<String, MemberStatus>,
    /// Items in handoff: work id -> the member it was revoked from.
    handoffs: BTreeMap<String, String>,
    /// Items a leader refuses because their value is too large to assign
    /// within the store's transaction limits: work id -> bytes needed.
    refused: BTreeMap<String, usize>,
}

#[derive(Serialize, Default)]
struct MemberStatus {
    live: bool,
    weight: u32,
    draining: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked: Option<u64>,
    count: usize,
    items: Vec<String>,
}

pub async fn status(args: StatusArgs) -> ExitCode {
    let json = args.json;
    let (layout, store) = match connect(args.store).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let read = async {
        let members = store.kv.list(&layout.members).await?;
        let work = store.kv.list(&layout.work).await?;
        let assignments = store.kv.list(&layout.assignments).await?;
        let handoffs = store.kv.list(&layout.handoff).await?;
        let leader = store.election.leader_value(&layout.leader).await?;
        Ok::<_, coordinator::StoreError>((members, work, assignments, handoffs, leader))
    };
    let (members, work, assignments, handoffs, leader) = match read.await {
        Ok(x) => x,
        Err(e) => return fail("cannot read the cluster's state", &e),
    };
    let mut status = Status {
        leader,
        ..Status::default()
    };
    for e in &members.entries {
        if let Ok(id) = layout.parse_member(&e.key) {
            let meta = MemberMeta::parse(&e.value).unwrap_or_default();
            status.members.insert(
                id.to_owned(),
                MemberStatus {
                    live: true,
                    weight: meta.weight,
                    draining: meta.draining,
                    acked: meta.acked,
                    ..MemberStatus::default()
                },
            );
        }
    }
    let mut items: BTreeMap<String, bool> = work
        .entries
        .iter()
        .filter_map(|e| layout.parse_work(&e.key).ok())
        .map(|id| (id.to_owned(), false))
        .collect();
    let limits = store.writer.limits();
    for e in &work.entries {
        if let Ok(id) = layout.parse_work(&e.key) {
            if let Some(bytes) = leader_core::machine::refusal(&layout, &limits, id, &e.value) {
                status.refused.insert(id.to_owned(), bytes);
            }
        }
    }
    status.items = items.len();
    for e in &assignments.entries {
        if let Ok((member, id)) = layout.parse_assignment(&e.key) {
            let m = status.members.entry(member.to_owned()).or_default();
            m.count += 1;
            m.items.push(id.to_owned());
            if let Some(seen) = items.get_mut(id) {
                *seen = true;
            }
        }
    }
    for m in status.members.values_mut() {
        m.items.sort();
    }
    for e in &handoffs.entries {
        if let Ok(id) = layout.parse_handoff(&e.key) {
            status.handoffs.insert(
                id.to_owned(),
                String::from_utf8_lossy(&e.value).into_owned(),
            );
        }
    }
    status.unassigned = items
        .into_iter()
        .filter(|(_, a)| !a)
        .map(|(id, _)| id)
        .collect();
    if json {
        match serde_json::to_string(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("coordinator: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    print!("{}", table(&status));
    ExitCode::SUCCESS
}

fn table(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = write!(
        out,
        "leader: {}\nitems: {} ({} unassigned, {} in handoff)\n",
        status.leader.as_deref().unwrap_or("(none)"),
        status.items,
        status.unassigned.len(),
        status.handoffs.len()
    );
    for (id, bytes) in &status.refused {
        let _ = writeln!(
            out,
            "refused: {id} (its assignment needs {bytes} bytes, more than one transaction of this store takes)"
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:>6}  {:<5} ITEMS",
        "MEMBER", "WEIGHT", "COUNT", "STATE"
    );
    for (id, m) in &status.members {
        let state = if !m.live {
            "gone"
        } else if m.draining {
            "drain"
        } else {
            "live"
        };
        let leader_mark = if status.leader.as_deref() == Some(id.as_str()) {
            "*"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>6}  {:<5} {}",
            format!("{id}{leader_mark}"),
            m.weight,
            m.count,
            state,
            m.items.join(",")
        );
    }
    out
}
