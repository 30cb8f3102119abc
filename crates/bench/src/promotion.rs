//! Promotion against a cold move, every other setting at its default: the
//! `coordinator member` processes of the failover scenario, in zones, with
//! `--replicas 2` and with `--replicas 1`, on a fresh store each. A member
//! that does not lead is killed (SIGKILL). With 2 replicas three times are
//! taken from the kill: until the dead member's primaries are primary on
//! one survivor each (promoted), until the survivors' printed `primary`
//! lists hold every item exactly once (the warm hand-overs the primary
//! quotas ask for included), and until every item is on 2 members again
//! (the replacement secondaries placed); each new primary is checked
//! against the roles printed before the kill (a cold primary held no
//! replica), and against the items its member printed as removed since (a
//! promoted item must not leave its member). With 1 replica: until the
//! survivors' workloads hold every item exactly once (the items moved
//! cold). The killed member is started again and the cluster settles,
//! balanced, before the next kill.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::failover::{self, ids, put_items, stats, Cluster, Seen, STAGE_TIMEOUT};
use crate::measure::fmt_ms;
use crate::rt::Lane;
use crate::stores::{Kind, Store};

/// Untimed pause after the cluster settled, balanced, before a kill: the
/// last acknowledgements and plan reports pass.
const QUIET: Duration = Duration::from_secs(2);

/// Settings of the promotion scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Members (member `i` is in zone `i mod zones`).
    pub members: usize,
    /// Zones.
    pub zones: usize,
    /// Work items.
    pub items: usize,
    /// Kills for each replica count.
    pub rounds: usize,
    /// The replica counts compared, each on a fresh store.
    pub replicas: Vec<u32>,
}

/// Who holds each item: its primary (the owner with 1 replica) and its
/// secondaries.
#[derive(Debug, Clone, Default)]
struct Placement {
    primary: BTreeMap<String, String>,
    secondaries: BTreeMap<String, BTreeSet<String>>,
}

/// One kill, timed.
#[derive(Debug, Clone)]
pub struct Kill {
    /// The member killed.
    pub victim: String,
    /// SIGKILL → each of the victim's primaries primary on exactly one
    /// survivor (replicas > 1).
    pub promoted_at: Option<Duration>,
    /// SIGKILL → every item primary exactly once on the survivors (with 1
    /// replica: held exactly once).
    pub primaries: Duration,
    /// SIGKILL → every item on `replicas` members again (replicas > 1).
    pub placed: Option<Duration>,
    /// Primaries the victim held.
    pub victim_primaries: usize,
    /// Items whose primary changed.
    pub changed: usize,
    /// Of those, the new primary held the item as a secondary before the kill.
    pub promoted: usize,
    /// Of those, the new primary held no replica of the item before the kill.
    pub cold: usize,
    /// Promoted items their new primary printed as removed between the kill
    /// and the end of the measurement (the item left the member).
    pub left: usize,
    /// (item, member) secondary pairs that were not there before the kill.
    pub secondaries_placed: usize,
}

/// The kills of one replica count on one store.
#[derive(Debug, Clone)]
pub struct Series {
    /// `--replicas`.
    pub replicas: u32,
    /// The kills, or why they stopped.
    pub kills: Result<Vec<Kill>, String>,
}

/// What one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// One series per replica count.
    pub series: Vec<Series>,
}

fn zone(i: usize, zones: usize) -> String {
    format!("zone-{}", char::from(b'a' + (i % zones) as u8))
}

/// Each item's primary, when every item is primary on exactly one live
/// member (and no unknown item is); else why not.
fn primaries_once(
    seen: &Seen,
    items: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut primary = BTreeMap::new();
    for id in &seen.alive {
        let Some(p) = seen.primaries.get(id) else {
            return Err(format!("{id} printed no roles yet"));
        };
        for item in p {
            if let Some(other) = primary.insert(item.clone(), id.clone()) {
                return Err(format!("{item} is primary on {other} and {id}"));
            }
        }
    }
    if primary.len() != items.len() || !primary.keys().eq(items.iter()) {
        let missing = items.iter().filter(|i| !primary.contains_key(*i)).count();
        return Err(format!(
            "{missing} items without a primary, {} unknown",
            primary.keys().filter(|i| !items.contains(*i)).count()
        ));
    }
    Ok(primary)
}

/// `Ok` when each of `wanted` is primary on exactly one live member; else
/// why not.
fn promoted(seen: &Seen, wanted: &BTreeSet<String>) -> Result<(), String> {
    let mut n: BTreeMap<&String, usize> = wanted.iter().map(|w| (w, 0)).collect();
    for id in &seen.alive {
        let Some(p) = seen.primaries.get(id) else {
            return Err(format!("{id} printed no roles yet"));
        };
        for item in p {
            if let Some(c) = n.get_mut(item) {
                *c += 1;
            }
        }
    }
    match n.iter().find(|(_, c)| **c != 1) {
        Some((item, c)) => Err(format!("{item} is primary on {c} members")),
        None => Ok(()),
    }
}

/// The placement, when every item has one primary and `min(replicas, live
/// members) − 1` secondaries on other live members (and, with `balanced`,
/// each member at least its primary quota and its replica quota rounded
/// down); else why not.
fn roles_once(
    seen: &Seen,
    items: &BTreeSet<String>,
    replicas: u32,
    balanced: bool,
) -> Result<Placement, String> {
    let primary = primaries_once(seen, items)?;
    let alive = seen.alive.len().max(1);
    let want = (replicas as usize).min(alive) - 1;
    let mut secondaries: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for id in &seen.alive {
        let Some(s) = seen.secondaries.get(id) else {
            return Err(format!("{id} printed no roles yet"));
        };
        if balanced {
            let p = seen.primaries.get(id).map_or(0, BTreeSet::len);
            let (pq, rq) = (items.len() / alive, items.len() * (want + 1) / alive);
            if p < pq || p + s.len() < rq {
                return Err(format!(
                    "{id} holds {p} primaries of its {pq}, {} replicas of its {rq}",
                    p + s.len()
                ));
            }
        }
        for item in s {
            if primary.get(item) == Some(id) {
                return Err(format!("{item} is primary and secondary on {id}"));
            }
            secondaries
                .entry(item.clone())
                .or_default()
                .insert(id.clone());
        }
    }
    for item in items {
        let n = secondaries.get(item).map_or(0, BTreeSet::len);
        if n != want {
            return Err(format!("{item} has {n} secondaries of {want}"));
        }
    }
    if let Some(extra) = secondaries.keys().find(|i| !items.contains(*i)) {
        return Err(format!("unknown item {extra} held as a secondary"));
    }
    Ok(Placement {
        primary,
        secondaries,
    })
}

/// The placement with 1 replica: every item held exactly once (and, with
/// `balanced`, each member at least its quota rounded down).
fn owners_once(seen: &Seen, items: &BTreeSet<String>, balanced: bool) -> Result<Placement, String> {
    let quota = items.len() / seen.alive.len().max(1);
    let mut primary = BTreeMap::new();
    for id in &seen.alive {
        let Some(w) = seen.workloads.get(id) else {
            return Err(format!("{id} printed nothing yet"));
        };
        if balanced && w.len() < quota {
            return Err(format!("{id} holds {} of its {quota}", w.len()));
        }
        for item in w {
            if primary.insert(item.clone(), id.clone()).is_some() {
                return Err(format!("{item} is held twice"));
            }
        }
    }
    if !primary.keys().eq(items.iter()) {
        return Err("not every item held, or an unknown one".to_owned());
    }
    Ok(Placement {
        primary,
        secondaries: BTreeMap::new(),
    })
}

fn placement(
    seen: &Seen,
    items: &BTreeSet<String>,
    replicas: u32,
    balanced: bool,
) -> Result<Placement, String> {
    if replicas > 1 {
        roles_once(seen, items, replicas, balanced)
    } else {
        owners_once(seen, items, balanced)
    }
}

/// Waits until the cluster is settled and balanced, lets it rest for
/// [`QUIET`], and gives the placement then.
async fn balanced(
    cluster: &Cluster,
    items: &BTreeSet<String>,
    replicas: u32,
) -> Result<Placement, String> {
    cluster
        .until(|s| placement(s, items, replicas, true), STAGE_TIMEOUT)
        .await?;
    tokio::time::sleep(QUIET).await;
    cluster
        .until(|s| placement(s, items, replicas, true), STAGE_TIMEOUT)
        .await
        .map(|(p, _)| p)
}

/// One kill of member `victim`, timed.
async fn kill(
    cluster: &mut Cluster,
    items: &BTreeSet<String>,
    replicas: u32,
    victim: &str,
    before: &Placement,
) -> Result<Kill, String> {
    let theirs: BTreeSet<String> = before
        .primary
        .iter()
        .filter(|(_, m)| *m == victim)
        .map(|(i, _)| i.clone())
        .collect();
    cluster.forget_removed();
    let t0 = Instant::now();
    cluster.kill(victim);
    let promoted_at = if replicas > 1 {
        let ((), at) = cluster
            .until(|s| promoted(s, &theirs), STAGE_TIMEOUT)
            .await?;
        Some(at.duration_since(t0))
    } else {
        None
    };
    let (after, at) = if replicas > 1 {
        cluster
            .until(|s| primaries_once(s, items), STAGE_TIMEOUT)
            .await?
    } else {
        let (p, at) = cluster
            .until(|s| owners_once(s, items, false), STAGE_TIMEOUT)
            .await?;
        (p.primary, at)
    };
    let primaries = at.duration_since(t0);
    let (placed, now) = if replicas > 1 {
        let (p, at) = cluster
            .until(|s| roles_once(s, items, replicas, false), STAGE_TIMEOUT)
            .await?;
        (Some(at.duration_since(t0)), p)
    } else {
        (None, Placement::default())
    };
    let removed = cluster.read(|s| s.removed.clone());
    let t = tally(before, &after, &removed);
    let secondaries_placed = placed_secondaries(before, &now);
    Ok(Kill {
        victim: victim.to_owned(),
        promoted_at,
        primaries,
        placed,
        victim_primaries: theirs.len(),
        changed: t.changed,
        promoted: t.promoted,
        cold: t.cold,
        left: t.left,
        secondaries_placed,
    })
}

/// How the primaries changed over a kill.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    changed: usize,
    promoted: usize,
    cold: usize,
    left: usize,
}

/// Compares each item's primary `after` a kill with the placement
/// `before`: changed, promoted (the new primary held it as a secondary),
/// cold (it held no replica), and promoted items its member printed as
/// `removed` since (they left it).
fn tally(
    before: &Placement,
    after: &BTreeMap<String, String>,
    removed: &BTreeMap<String, BTreeSet<String>>,
) -> Tally {
    let mut t = Tally::default();
    for (item, new) in after {
        if before.primary.get(item) == Some(new) {
            continue;
        }
        t.changed += 1;
        if before
            .secondaries
            .get(item)
            .is_some_and(|s| s.contains(new))
        {
            t.promoted += 1;
            if removed.get(new).is_some_and(|r| r.contains(item)) {
                t.left += 1;
            }
        } else {
            t.cold += 1;
        }
    }
    t
}

/// (item, member) secondary pairs of `now` that `before` did not have.
fn placed_secondaries(before: &Placement, now: &Placement) -> usize {
    now.secondaries
        .iter()
        .map(|(item, ms)| {
            before
                .secondaries
                .get(item)
                .map_or(ms.len(), |old| ms.difference(old).count())
        })
        .sum()
}

/// The kills of one replica count, on a fresh store.
async fn series(
    kind: Kind,
    replicas: u32,
    params: &Params,
    lane: &Lane,
    logs: &Path,
) -> Result<Vec<Kill>, String> {
    let store = Store::start(kind).await;
    let writer = store.writer(lane.clone()).await;
    let items: BTreeSet<String> = (0..params.items).map(|i| format!("w{i:04}")).collect();
    put_items(&writer, &items).await;
    let logs = logs.join(format!("replicas-{replicas}"));
    std::fs::create_dir_all(&logs).expect("log directory");
    let r = replicas.to_string();
    let mut cluster = Cluster::new(kind, store.endpoint(), &["--replicas", &r], &logs);
    for (i, id) in ids(params.members).iter().enumerate() {
        cluster.own_flags(id, &["--zone", &zone(i, params.zones)]);
        cluster.start(id);
    }
    let mut out = Vec::new();
    let result = async {
        let mut before = balanced(&cluster, &items, replicas).await?;
        for _ in 0..params.rounds {
            let leader = cluster.leader().await?;
            let victim = ids(params.members)
                .into_iter()
                .find(|id| *id != leader)
                .expect("two members or more");
            eprintln!("[promotion] {kind}, {replicas} replica(s): SIGKILL member {victim}");
            let k = kill(&mut cluster, &items, replicas, &victim, &before).await?;
            eprintln!(
                "[promotion] {kind}, {replicas} replica(s), {} killed: its primaries promoted after {}, every primary after {}, placed after {}; {} primaries changed ({} of the victim's), {} promoted, {} cold, {} left their member, {} secondaries placed",
                k.victim,
                k.promoted_at
                    .map_or_else(|| "—".to_owned(), |d| fmt_ms(d.as_secs_f64() * 1e3)),
                fmt_ms(k.primaries.as_secs_f64() * 1e3),
                k.placed
                    .map_or_else(|| "—".to_owned(), |d| fmt_ms(d.as_secs_f64() * 1e3)),
                k.changed,
                k.victim_primaries,
                k.promoted,
                k.cold,
                k.left,
                k.secondaries_placed
            );
            out.push(k);
            cluster.start(&victim);
            before = balanced(&cluster, &items, replicas).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    cluster.stop().await;
    drop(store);
    result.map(|()| out)
}

/// Runs the scenario on one store.
pub async fn run(kind: Kind, params: &Params, lane: &Lane) -> Outcome {
    let logs = std::env::temp_dir().join(format!(
        "coordinator-promotion-{}-{}",
        kind.to_string().to_lowercase(),
        std::process::id()
    ));
    std::fs::create_dir_all(&logs).expect("log directory");
    eprintln!("[promotion] {kind}: member logs in {}", logs.display());
    let mut out = Vec::new();
    for &replicas in &params.replicas {
        out.push(Series {
            replicas,
            kills: series(kind, replicas, params, lane, &logs).await,
        });
    }
    Outcome { kind, series: out }
}

fn row(s: &mut String, kind: Kind, replicas: u32, what: &str, v: &[Duration], per: &str) {
    let (min, mean, max) = stats(v);
    let _ = writeln!(
        s,
        "| {kind} | {replicas} | {what} | {} | {} | {} | {per} |",
        fmt_ms(min),
        fmt_ms(mean),
        fmt_ms(max)
    );
}

/// `lo–hi` of a count over the kills (or the one value).
fn range(kills: &[Kill], f: impl Fn(&Kill) -> usize) -> String {
    let lo = kills.iter().map(&f).min().unwrap_or(0);
    let hi = kills.iter().map(&f).max().unwrap_or(0);
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

/// The markdown table.
pub fn table(all: &[Outcome], params: &Params) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "SIGKILL of a member that does not lead, {} `coordinator member` processes in {} zones, {} items, every other setting at its default; {} kills for each replica count, the killed member started again and the cluster settled, balanced, before the next:\n",
        params.members, params.zones, params.items, params.rounds
    );
    let _ = writeln!(
        s,
        "| store | `--replicas` | SIGKILL → | min | mean | max | per kill |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---|");
    for o in all {
        for series in &o.series {
            let r = series.replicas;
            match &series.kills {
                Ok(kills) if r > 1 => {
                    let v: Vec<Duration> = kills.iter().filter_map(|k| k.promoted_at).collect();
                    let per = format!(
                        "{} primaries promoted",
                        range(kills, |k| k.victim_primaries)
                    );
                    row(
                        &mut s,
                        o.kind,
                        r,
                        "the dead member's primaries promoted (published)",
                        &v,
                        &per,
                    );
                    let v: Vec<Duration> = kills.iter().map(|k| k.primaries).collect();
                    let per = format!(
                        "{} primaries changed: {} promoted from a secondary, **{} cold**; {} left their member",
                        range(kills, |k| k.changed),
                        range(kills, |k| k.promoted),
                        range(kills, |k| k.cold),
                        range(kills, |k| k.left),
                    );
                    row(
                        &mut s,
                        o.kind,
                        r,
                        "every item primary exactly once (+ hand-overs for the quotas)",
                        &v,
                        &per,
                    );
                    let v: Vec<Duration> = kills.iter().filter_map(|k| k.placed).collect();
                    let per = format!(
                        "{} secondaries placed",
                        range(kills, |k| k.secondaries_placed)
                    );
                    row(
                        &mut s,
                        o.kind,
                        r,
                        &format!("every item on {r} members again (secondaries placed)"),
                        &v,
                        &per,
                    );
                }
                Ok(kills) => {
                    let v: Vec<Duration> = kills.iter().map(|k| k.primaries).collect();
                    let per = format!("{} items moved cold", range(kills, |k| k.changed));
                    row(
                        &mut s,
                        o.kind,
                        r,
                        "every item held exactly once (cold move)",
                        &v,
                        &per,
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | {r} | failed: {e} | | | | |", o.kind);
                }
            }
        }
    }
    s
}

/// One verdict per store and replica count above 1: no cold primary, and
/// the slowest promotion against the failover goal.
pub fn verdicts(all: &[Outcome]) -> Vec<String> {
    let mut out = Vec::new();
    for o in all {
        for series in &o.series {
            match &series.kills {
                Ok(kills) if series.replicas > 1 => {
                    let cold: usize = kills.iter().map(|k| k.cold).sum();
                    let v: Vec<Duration> = kills.iter().filter_map(|k| k.promoted_at).collect();
                    let (_, _, max) = stats(&v);
                    let goal = failover::GOAL.as_secs_f64() * 1e3;
                    out.push(format!(
                        "{}: {} replicas, a member killed → promoted: {cold} cold primaries in {} kills ({}); slowest {} against {} ({})",
                        o.kind,
                        series.replicas,
                        kills.len(),
                        if cold == 0 { "met" } else { "NOT met" },
                        fmt_ms(max),
                        fmt_ms(goal),
                        if max <= goal { "met" } else { "NOT met" }
                    ));
                }
                Ok(_) => {}
                Err(e) => out.push(format!(
                    "{}: {} replica(s): not measured: {e}",
                    o.kind, series.replicas
                )),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Members `a`, `b`, `c` alive, each with its primaries and secondaries.
    fn seen(roles: &[(&str, &[&str], &[&str])]) -> Seen {
        let mut s = Seen::default();
        for (id, p, sec) in roles {
            s.alive.insert((*id).to_owned());
            s.primaries.insert((*id).to_owned(), set(p));
            s.secondaries.insert((*id).to_owned(), set(sec));
            s.workloads
                .insert((*id).to_owned(), set(p).union(&set(sec)).cloned().collect());
        }
        s
    }

    #[test]
    fn roles_once_wants_one_primary_and_the_secondaries_elsewhere() {
        let items = set(&["w1", "w2", "w3"]);
        let ok = seen(&[("a", &["w1", "w2"], &["w3"]), ("b", &["w3"], &["w1", "w2"])]);
        let p = roles_once(&ok, &items, 2, false).unwrap();
        assert_eq!(p.primary["w3"], "b");
        assert_eq!(p.secondaries["w1"], set(&["b"]));
        // Balanced: a primary quota of 1 and a replica quota of 3 each.
        assert!(roles_once(&ok, &items, 2, true).is_ok());
        let lopsided = seen(&[
            ("a", &["w1", "w2", "w3"], &[]),
            ("b", &[], &["w1", "w2", "w3"]),
        ]);
        assert!(roles_once(&lopsided, &items, 2, false).is_ok());
        assert!(roles_once(&lopsided, &items, 2, true).is_err());
        let no_primary = seen(&[("a", &["w1", "w2"], &["w3"]), ("b", &[], &["w1", "w2"])]);
        assert!(roles_once(&no_primary, &items, 2, false).is_err());
        let twice = seen(&[
            ("a", &["w1", "w2", "w3"], &[]),
            ("b", &["w3"], &["w1", "w2"]),
        ]);
        assert!(roles_once(&twice, &items, 2, false).is_err());
        let same_member = seen(&[("a", &["w1", "w2"], &["w1"]), ("b", &["w3"], &["w2", "w3"])]);
        assert!(roles_once(&same_member, &items, 2, false).is_err());
        let missing_secondary = seen(&[("a", &["w1", "w2"], &["w3"]), ("b", &["w3"], &["w1"])]);
        assert!(roles_once(&missing_secondary, &items, 2, false).is_err());
    }

    #[test]
    fn promoted_counts_only_the_items_asked_for() {
        let s = seen(&[("a", &["w1"], &["w2"]), ("b", &[], &["w1"])]);
        assert!(promoted(&s, &set(&["w1"])).is_ok());
        assert!(promoted(&s, &set(&["w1", "w2"])).is_err());
    }

    #[test]
    fn tally_tells_promotions_from_cold_primaries() {
        let before = Placement {
            primary: [("w1", "a"), ("w2", "a"), ("w3", "b")]
                .iter()
                .map(|(i, m)| ((*i).to_owned(), (*m).to_owned()))
                .collect(),
            secondaries: [("w1", &["b"][..]), ("w2", &["c"][..]), ("w3", &["c"][..])]
                .iter()
                .map(|(i, m)| ((*i).to_owned(), set(m)))
                .collect(),
        };
        // a died: w1 promoted on b, w2 cold on b, w3 stays on b.
        let after: BTreeMap<String, String> = [("w1", "b"), ("w2", "b"), ("w3", "b")]
            .iter()
            .map(|(i, m)| ((*i).to_owned(), (*m).to_owned()))
            .collect();
        let none = BTreeMap::new();
        assert_eq!(
            tally(&before, &after, &none),
            Tally {
                changed: 2,
                promoted: 1,
                cold: 1,
                left: 0
            }
        );
        let removed = [("b".to_owned(), set(&["w1"]))].into_iter().collect();
        assert_eq!(tally(&before, &after, &removed).left, 1);
        let now = Placement {
            primary: after.clone(),
            secondaries: [("w1", &["c"][..]), ("w2", &["c"][..]), ("w3", &["c"][..])]
                .iter()
                .map(|(i, m)| ((*i).to_owned(), set(m)))
                .collect(),
        };
        assert_eq!(placed_secondaries(&before, &now), 1);
    }
}
