//! `coordinator work put|rm|ls`, `coordinator status` and `coordinator
//! drain ID`: operators' tools.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgMatches, Args, Subcommand};
use coordinator::config::BackendKind;
use coordinator::{Backend, Envelope, Error, ErrorChain, Layout, MemberMeta, MemberStore, Role};
use serde::Serialize;

use crate::{put, settings, usage_error, ConnArgs};

/// Where the store is and where the keys live (for `work`, `status` and `drain`).
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Which store [default: consul]
    #[arg(long, env = "COORDINATOR_BACKEND", value_parser = crate::backend_parser(false))]
    backend: Option<BackendKind>,
    #[command(flatten)]
    conn: ConnArgs,
    /// How long to wait for the store to answer before giving up with "store unreachable" [default: 5s]
    #[arg(long, env = "COORDINATOR_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Connection")]
    connect_timeout: Option<Duration>,
    /// Assignment prefix [default: service/coordinator/assignments/]
    #[arg(long, env = "COORDINATOR_PREFIX", help_heading = "Keys")]
    prefix: Option<String>,
    /// Consul leader key, or etcd election name [default: service/coordinator/leader]
    #[arg(long, env = "COORDINATOR_LEADER", help_heading = "Keys")]
    leader: Option<String>,
    /// Members prefix [default: service/coordinator/members/]
    #[arg(long, env = "COORDINATOR_MEMBERS_PREFIX", help_heading = "Keys")]
    members_prefix: Option<String>,
    /// Work-items prefix [default: service/coordinator/work/]
    #[arg(long, env = "COORDINATOR_WORK_PREFIX", help_heading = "Keys")]
    work_prefix: Option<String>,
    /// Handoff-records prefix [default: service/coordinator/handoff/]
    #[arg(long, env = "COORDINATOR_HANDOFF_PREFIX", help_heading = "Keys")]
    handoff_prefix: Option<String>,
    /// Drain-requests prefix [default: service/coordinator/drain/]
    #[arg(long, env = "COORDINATOR_DRAIN_PREFIX", help_heading = "Keys")]
    drain_prefix: Option<String>,
    /// The key every leader transaction checks and bumps [default: service/coordinator/sequence]
    #[arg(long, env = "COORDINATOR_SEQUENCE_KEY", help_heading = "Keys")]
    sequence_key: Option<String>,
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
    #[arg(long, value_name = "DURATION", value_parser = settings::duration, default_value = "2m", allow_hyphen_values = true)]
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
        /// Replicas of this item (one primary, the rest secondaries), overriding the cluster's `replicas`; written in the item's value
        #[arg(long, value_name = "N", value_parser = settings::replicas)]
        replicas: Option<u32>,
    },
    /// Removes a work item.
    Rm {
        #[command(flatten)]
        store: StoreArgs,
        /// The work id.
        id: String,
    },
    /// Lists the work items, one per line: `ID<TAB>VALUE`, then `<TAB>replicas=N` for an item that asks for its own replica count (or JSON with --json).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object: {"items":[{"id":ID,"value":VALUE},...]}, sorted by id; an item that asks for its own replica count also has "replicas":N.
        #[arg(long)]
        json: bool,
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

/// The admin commands' store: the layout, the store, and how long a read
/// may wait.
struct Admin {
    layout: Layout,
    store: MemberStore,
    timeout: Duration,
    endpoints: String,
}

impl Admin {
    /// Bounds `op` by the connect timeout; a store that does not answer in
    /// time, or cannot be reached, is "store unreachable" (exit 1).
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, coordinator::StoreError>>,
    ) -> Result<T, ExitCode> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(coordinator::StoreError::Unavailable(e))) => {
                Err(unreachable(&self.endpoints, &ErrorChain(&*e).to_string()))
            }
            Ok(Err(e @ coordinator::StoreError::Timeout(_))) => {
                Err(unreachable(&self.endpoints, &e.to_string()))
            }
            Ok(Err(e)) => Err(fail(what, &e)),
            Err(_) => Err(unreachable(
                &self.endpoints,
                &format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }
}

/// "store unreachable: ...", exit 1.
fn unreachable(endpoints: &str, why: &str) -> ExitCode {
    eprintln!("coordinator: store unreachable: {endpoints}: {why}");
    ExitCode::FAILURE
}

async fn connect(args: &StoreArgs, m: &ArgMatches) -> Result<Admin, ExitCode> {
    let mut s = args.conn.settings(args.backend, m)?;
    s.admin = true;
    if let Some(t) = args.connect_timeout {
        s.program.connect_timeout = t;
        s.mark("connect_timeout", m);
    }
    put!(s, m, prefix = args.prefix.clone());
    put!(s, m, leader = args.leader.clone());
    put!(s, m, members_prefix = args.members_prefix.clone());
    put!(s, m, work_prefix = args.work_prefix.clone());
    put!(s, m, handoff_prefix = args.handoff_prefix.clone());
    put!(s, m, drain_prefix = args.drain_prefix.clone());
    put!(s, m, sequence_key = args.sequence_key.clone());
    if s.config.backend == BackendKind::Memory {
        return Err(usage_error(&format!(
            "invalid {}: the memory store lives inside one process; use consul or etcd (or `coordinator demo`)",
            s.name_of("backend")
        )));
    }
    if s.config.instance_id.is_empty() {
        "coordinator-cli".clone_into(&mut s.config.instance_id);
    }
    let timeout = s.program.connect_timeout;
    if timeout.is_zero() || timeout > Duration::from_secs(600) {
        return Err(usage_error(&format!(
            "invalid {}: {} is out of range: give 1ms to 10m",
            s.name_of("connect_timeout"),
            humantime::format_duration(timeout)
        )));
    }
    let s = crate::finish_settings(s, &args.conn, |s| s.config.layout().validate())?;
    let c = &s.config;
    let endpoints = c.endpoints_or_default().join(",");
    let backend = match tokio::time::timeout(timeout, Backend::connect(c)).await {
        Ok(Ok(b)) => b,
        Ok(Err(Error::Config(e))) => return Err(s.refuse(&e)),
        Ok(Err(e)) => return Err(unreachable(&endpoints, &ErrorChain(&e).to_string())),
        Err(_) => {
            return Err(unreachable(
                &endpoints,
                &format!("no answer within {}", humantime::format_duration(timeout)),
            ))
        }
    };
    let Some(store) = backend.member_store() else {
        return Err(usage_error(&format!(
            "invalid {}: {} cannot manage work items",
            s.name_of("backend"),
            c.backend
        )));
    };
    let admin = Admin {
        layout: c.layout(),
        store: store.clone(),
        timeout,
        endpoints,
    };
    // One cheap read first: an unreachable store fails here, at once.
    admin
        .bounded(
            "cannot read the leader",
            admin.store.election.leader_value(&admin.layout.leader),
        )
        .await?;
    Ok(admin)
}

fn fail(what: &str, e: &coordinator::StoreError) -> ExitCode {
    eprintln!("coordinator: {what}: {}", ErrorChain(e));
    ExitCode::FAILURE
}

pub async fn work(args: WorkArgs, m: ArgMatches) -> ExitCode {
    let (WorkOp::Put { store, .. } | WorkOp::Rm { store, .. } | WorkOp::Ls { store, .. }) =
        &args.op;
    let admin = match connect(store, &m).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (layout, store) = (&admin.layout, &admin.store);
    let result = match args.op {
        WorkOp::Put {
            id,
            value,
            replicas,
            ..
        } => {
            if let Err(reason) = check_work_id(&id) {
                return usage_error(&format!("invalid work id {id:?}: {reason}"));
            }
            let value = value.unwrap_or_default();
            let value = match replicas {
                Some(n) => Envelope::with_replicas(n, value.as_bytes()),
                None => Bytes::from(value),
            };
            admin
                .bounded(
                    "cannot write the work item",
                    store.kv_write.put_key(&layout.work_key(&id), value),
                )
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        WorkOp::Rm { id, .. } => admin
            .bounded(
                "cannot remove the work item",
                store.kv_write.delete_key(&layout.work_key(&id)),
            )
            .await
            .map(|found| {
                if found {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("coordinator: no work item {id:?}");
                    ExitCode::FAILURE
                }
            }),
        WorkOp::Ls { json, .. } => admin
            .bounded("cannot list the work items", store.kv.list(&layout.work))
            .await
            .map(|snapshot| {
                let mut entries = snapshot.entries;
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                let items: Vec<Item<'_>> = entries
                    .iter()
                    .filter_map(|e| {
                        let id = layout.parse_work(&e.key).ok()?;
                        Some(Item::new(id, &e.value))
                    })
                    .collect();
                if json {
                    #[derive(Serialize)]
                    struct Items<'a> {
                        items: Vec<Item<'a>>,
                    }
                    let out = Items { items };
                    println!("{}", serde_json::to_string(&out).expect("strings only"));
                } else {
                    print!("{}", item_lines(&items));
                }
                ExitCode::SUCCESS
            }),
    };
    result.unwrap_or_else(|code| code)
}

/// Asks member `ID` to drain and leave (a request key it watches), then
/// waits until its member key is gone. Exit 0: it left; 1: it did not within
/// the timeout, or there is no such member; 2: bad input.
pub async fn drain(args: DrainArgs, m: ArgMatches) -> ExitCode {
    if let Err(e) = coordinator::validate_instance_id(&args.id) {
        return usage_error(&format!("invalid member id {:?}: {}", args.id, e.reason));
    }
    let admin = match connect(&args.store, &m).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (layout, store) = (&admin.layout, &admin.store);
    let member_key = layout.member_key(&args.id);
    // Is the member there? One bounded read.
    let present = match admin
        .bounded("cannot read the members", store.kv.list(&member_key))
        .await
    {
        Ok(snapshot) => snapshot
            .entries
            .iter()
            .any(|e| e.key == member_key.as_bytes()),
        Err(code) => return code,
    };
    if !present {
        eprintln!("coordinator: no live member {:?}", args.id);
        return ExitCode::FAILURE;
    }
    if let Err(code) = admin
        .bounded(
            "cannot write the drain request",
            store
                .kv_write
                .put_key(&layout.drain_key(&args.id), Bytes::from_static(b"drain")),
        )
        .await
    {
        return code;
    }
    eprintln!("coordinator: drain of {} requested", args.id);
    if args.no_wait {
        return ExitCode::SUCCESS;
    }
    let (mut members, task) = leader_core::follow::spawn_follow(
        store.kv.clone(),
        member_key.clone(),
        (Duration::from_millis(100), Duration::from_secs(2)),
    );
    let _task = AbortOnDrop(task);
    let gone = members.wait_for(|m| {
        m.as_ref()
            .is_some_and(|m| !m.contains_key(member_key.as_bytes()))
    });
    if tokio::time::timeout(args.timeout, gone).await.is_ok() {
        eprintln!("coordinator: {} left", args.id);
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "coordinator: {} did not leave within {}",
            args.id,
            humantime::format_duration(args.timeout)
        );
        ExitCode::FAILURE
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A work item as `work ls` shows it: the application's bytes, and the
/// replica count its envelope asks for (a value whose envelope does not
/// parse is shown whole).
#[derive(Serialize, Debug)]
struct Item<'a> {
    id: &'a str,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u32>,
}

impl<'a> Item<'a> {
    fn new(id: &'a str, value: &[u8]) -> Self {
        let (replicas, payload) = match Envelope::split(value) {
            Ok((env, payload)) => (env.replicas, payload),
            Err(_) => (None, value),
        };
        Self {
            id,
            value: String::from_utf8_lossy(payload).into_owned(),
            replicas,
        }
    }
}

/// `work ls`'s lines: `ID<TAB>VALUE`, then `<TAB>replicas=N` for an item
/// that asks for its own replica count.
fn item_lines(items: &[Item<'_>]) -> String {
    use std::fmt::Write as _;
    let mut lines = String::new();
    for item in items {
        lines.push_str(item.id);
        lines.push('\t');
        lines.push_str(&item.value);
        if let Some(n) = item.replicas {
            let _ = write!(lines, "\treplicas={n}");
        }
        lines.push('\n');
    }
    lines
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
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    count: usize,
    items: Vec<String>,
    /// With roles (some item has a secondary): the items held as primaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    primary: Option<Vec<String>>,
    /// With roles: the items held as secondaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    secondary: Option<Vec<String>>,
}

impl MemberStatus {
    /// How many items it holds as primaries and as secondaries.
    fn roles(&self) -> (usize, usize) {
        let secondaries = self.secondary.as_ref().map_or(0, Vec::len);
        (self.count - secondaries, secondaries)
    }
}

pub async fn status(args: StatusArgs, m: ArgMatches) -> ExitCode {
    let json = args.json;
    let admin = match connect(&args.store, &m).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (layout, store) = (&admin.layout, &admin.store);
    let read = async {
        let members = store.kv.list(&layout.members).await?;
        let work = store.kv.list(&layout.work).await?;
        let assignments = store.kv.list(&layout.assignments).await?;
        let handoffs = store.kv.list(&layout.handoff).await?;
        let leader = store.election.leader_value(&layout.leader).await?;
        Ok::<_, coordinator::StoreError>((members, work, assignments, handoffs, leader))
    };
    let (members, work, assignments, handoffs, leader) =
        match admin.bounded("cannot read the cluster's state", read).await {
            Ok(x) => x,
            Err(code) => return code,
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
                    zone: meta.zone,
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
            if let Some(bytes) = leader_core::machine::refusal(layout, &limits, id, &e.value) {
                status.refused.insert(id.to_owned(), bytes);
            }
        }
    }
    status.items = items.len();
    add_assignments(&mut status, layout, &assignments.entries, &mut items);
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

/// Adds each assignment to its member's counts and items (with roles once
/// some item has a secondary), and marks the items it finds as assigned.
fn add_assignments(
    status: &mut Status,
    layout: &Layout,
    assignments: &[worker_core::KvEntry],
    items: &mut BTreeMap<String, bool>,
) {
    let mut secondaries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in assignments {
        if let Ok((member, id)) = layout.parse_assignment(&e.key) {
            let m = status.members.entry(member.to_owned()).or_default();
            m.count += 1;
            m.items.push(id.to_owned());
            if Envelope::role_of(&e.value).0 == Role::Secondary {
                secondaries
                    .entry(member.to_owned())
                    .or_default()
                    .push(id.to_owned());
            }
            if let Some(seen) = items.get_mut(id) {
                *seen = true;
            }
        }
    }
    // Roles only once some item has a secondary: the status of a cluster
    // without replicas reads as it always did.
    let roles = !secondaries.is_empty();
    for (id, m) in &mut status.members {
        m.items.sort();
        if roles {
            let mut sec = secondaries.remove(id).unwrap_or_default();
            sec.sort();
            m.primary = Some(
                m.items
                    .iter()
                    .filter(|i| sec.binary_search(i).is_err())
                    .cloned()
                    .collect(),
            );
            m.secondary = Some(sec);
        }
    }
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
    // The zone column only when some member names its zone: the table of a
    // cluster without zones reads as it always did.
    let zones = status.members.values().any(|m| m.zone.is_some());
    let zone_of = |z: Option<&str>| {
        if zones {
            format!("{:<12} ", z.unwrap_or("-"))
        } else {
            String::new()
        }
    };
    // Primaries and secondaries only when some item has a secondary.
    let roles = status.members.values().any(|m| m.secondary.is_some());
    let roles_of = |m: Option<&MemberStatus>| match m {
        _ if !roles => String::new(),
        None => format!("{:>9} {:>9} ", "PRIMARY", "SECONDARY"),
        Some(m) => {
            let (p, s) = m.roles();
            format!("{p:>9} {s:>9} ")
        }
    };
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:>6} {} {:<5} {}ITEMS",
        "MEMBER",
        "WEIGHT",
        "COUNT",
        roles_of(None),
        "STATE",
        zone_of(Some("ZONE"))
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
            "{:<24} {:>6} {:>6} {} {:<5} {}{}",
            format!("{id}{leader_mark}"),
            m.weight,
            m.count,
            roles_of(Some(m)),
            state,
            zone_of(m.zone.as_deref()),
            m.items.join(",")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(zone: Option<&str>, items: &[&str]) -> MemberStatus {
        MemberStatus {
            live: true,
            weight: 1,
            zone: zone.map(str::to_owned),
            count: items.len(),
            items: items.iter().map(|s| (*s).to_owned()).collect(),
            ..MemberStatus::default()
        }
    }

    #[test]
    fn the_table_shows_zones_only_when_a_member_names_one() {
        let mut status = Status {
            leader: Some("m1".into()),
            items: 2,
            ..Status::default()
        };
        status.members.insert("m1".into(), member(None, &["w1"]));
        status.members.insert("m2".into(), member(None, &["w2"]));
        let plain = table(&status);
        assert!(!plain.contains("ZONE"), "{plain}");
        assert!(plain.contains("m1*"), "{plain}");

        status
            .members
            .insert("m1".into(), member(Some("eu-1"), &["w1"]));
        let zoned = table(&status);
        let lines: Vec<&str> = zoned.lines().collect();
        let header = lines.iter().find(|l| l.starts_with("MEMBER")).unwrap();
        assert!(header.contains("ZONE"), "{zoned}");
        let m1 = lines.iter().find(|l| l.starts_with("m1*")).unwrap();
        let m2 = lines.iter().find(|l| l.starts_with("m2")).unwrap();
        assert!(m1.contains("eu-1") && m1.ends_with("w1"), "{zoned}");
        assert!(m2.contains(" - ") && m2.ends_with("w2"), "{zoned}");
        let json = serde_json::to_string(&status.members["m1"]).unwrap();
        assert!(json.contains(r#""zone":"eu-1""#), "{json}");
        let json = serde_json::to_string(&status.members["m2"]).unwrap();
        assert!(!json.contains("zone"), "{json}");
    }

    fn with_roles(m: MemberStatus, secondaries: &[&str]) -> MemberStatus {
        let secondary: Vec<String> = secondaries.iter().map(|s| (*s).to_owned()).collect();
        MemberStatus {
            primary: Some(
                m.items
                    .iter()
                    .filter(|i| !secondary.contains(i))
                    .cloned()
                    .collect(),
            ),
            secondary: Some(secondary),
            ..m
        }
    }

    #[test]
    fn the_table_shows_roles_only_when_some_item_has_a_secondary() {
        let mut status = Status {
            leader: Some("m1".into()),
            items: 2,
            ..Status::default()
        };
        status
            .members
            .insert("m1".into(), member(None, &["w1", "w2"]));
        status.members.insert("m2".into(), member(None, &[]));
        let plain = table(&status);
        assert!(
            !plain.contains("PRIMARY") && !plain.contains("SECONDARY"),
            "{plain}"
        );
        // The table without roles is the one before roles existed.
        assert!(
            plain.contains(&format!(
                "{:<24} {:>6} {:>6}  {:<5} ITEMS",
                "MEMBER", "WEIGHT", "COUNT", "STATE"
            )),
            "{plain}"
        );
        let json = serde_json::to_string(&status.members["m1"]).unwrap();
        assert!(
            !json.contains("primary") && !json.contains("secondary"),
            "{json}"
        );

        status.members.insert(
            "m1".into(),
            with_roles(member(None, &["w1", "w2"]), &["w2"]),
        );
        status
            .members
            .insert("m2".into(), with_roles(member(None, &["w2"]), &[]));
        let roles = table(&status);
        let lines: Vec<&str> = roles.lines().collect();
        let header = lines.iter().find(|l| l.starts_with("MEMBER")).unwrap();
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "MEMBER",
                "WEIGHT",
                "COUNT",
                "PRIMARY",
                "SECONDARY",
                "STATE",
                "ITEMS"
            ]
        );
        let m1: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with("m1*"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(m1, ["m1*", "1", "2", "1", "1", "live", "w1,w2"], "{roles}");
        let m2: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with("m2"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(m2, ["m2", "1", "1", "1", "0", "live", "w2"], "{roles}");
        let json = serde_json::to_string(&status.members["m1"]).unwrap();
        assert!(
            json.ends_with(r#""items":["w1","w2"],"primary":["w1"],"secondary":["w2"]}"#),
            "{json}"
        );
    }

    #[test]
    fn work_ls_shows_the_payload_and_the_replicas_of_an_enveloped_item() {
        let plain = Item::new("a", b"{\"x\":1}");
        let enveloped = Envelope::with_replicas(3, b"{\"y\":2}");
        let wants = Item::new("b", &enveloped);
        let bad = Item::new("c", b"\0coordinator:colour=red\nz");
        assert_eq!((plain.value.as_str(), plain.replicas), ("{\"x\":1}", None));
        assert_eq!(
            (wants.value.as_str(), wants.replicas),
            ("{\"y\":2}", Some(3))
        );
        assert_eq!(bad.replicas, None);
        assert_eq!(bad.value, "\0coordinator:colour=red\nz", "shown whole");
        let items = [plain, wants];
        assert_eq!(
            item_lines(&items),
            "a\t{\"x\":1}\nb\t{\"y\":2}\treplicas=3\n"
        );
        assert_eq!(
            serde_json::to_string(&items).unwrap(),
            r#"[{"id":"a","value":"{\"x\":1}"},{"id":"b","value":"{\"y\":2}","replicas":3}]"#
        );
    }
}
