//! Rolling restart, as a user runs one: the `coordinator member` processes
//! of the failover scenario (5 members `m1`..`m5`, 100 items, `--soak
//! 200ms --leader-soak 1s`), settled at 20 items each; then each member in
//! turn is sent SIGTERM (it drains), waited for until it exits, and started
//! again with the same id, and the cluster settles again (20 each, no
//! secondary anywhere) before the next. One mode restarts with SIGKILL and
//! at once instead, under `--rebalance-delay 60s`.
//!
//! Every JSON line of every process is kept with the moment it was read; the
//! end of a process (its stdout closed, or the SIGKILL sent) counts as a line
//! holding nothing. From them, per item, the set of members holding it as a
//! **primary** (a line's `primary` list, or its whole `workload` while the
//! process prints no roles; a secondary is not active): owner changes, and
//! the time each item had no primary (*nobody*) or two primaries at once
//! (*overlap*), from the first signal until the cluster settled after the
//! last restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::failover::{check, put_items, Cluster, Line, Seen, STAGE_TIMEOUT};
use crate::measure::fmt_ms;
use crate::rt::Lane;
use crate::stores::{Kind, Store};

/// Exclusive mode's goal: the longest time an item has no primary.
pub const EXCLUSIVE_GAP: Duration = Duration::from_millis(100);

/// Exclusive mode's goal: item-seconds without a primary over the whole
/// rolling restart.
pub const EXCLUSIVE_NOBODY_SECONDS: f64 = 5.0;

/// The flags every member of every mode gets.
const COMMON: &[&str] = &["--soak", "200ms", "--leader-soak", "1s"];

/// Untimed pause once the cluster first settled, before the first signal:
/// the last acknowledgements and plan reports pass.
const QUIET: Duration = Duration::from_secs(2);

/// Longest wait for a drained member to exit (its `--drain-timeout` is 60 s).
const EXIT_WAIT: Duration = Duration::from_secs(90);

/// How each member is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// SIGTERM (the member drains), wait for the exit, start again.
    Drain,
    /// SIGKILL, start again at once.
    Kill,
}

/// Which goal a mode is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Exclusive mode: the longest time without a primary at most
    /// [`EXCLUSIVE_GAP`], and at most [`EXCLUSIVE_NOBODY_SECONDS`] in all.
    Exclusive,
    /// The default mode: no item ever without a primary (overlap allowed).
    NeverNobody,
    /// None (measured for comparison).
    None,
}

/// One way of running the rolling restart.
#[derive(Debug, Clone)]
pub struct Mode {
    /// Its name in the table.
    pub name: &'static str,
    /// Flags given to every member, after [`COMMON`].
    pub flags: &'static [&'static str],
    /// How each member is restarted.
    pub restart: Restart,
    /// The goal it is held to.
    pub goal: Goal,
}

/// The modes compared.
pub fn modes() -> Vec<Mode> {
    vec![
        Mode {
            name: "default (prepare on)",
            flags: &[],
            restart: Restart::Drain,
            goal: Goal::NeverNobody,
        },
        Mode {
            name: "`--exclusive` (prepare on)",
            flags: &["--exclusive"],
            restart: Restart::Drain,
            goal: Goal::Exclusive,
        },
        Mode {
            name: "`--prepare false`",
            flags: &["--prepare", "false"],
            restart: Restart::Drain,
            goal: Goal::None,
        },
        Mode {
            name: "`--exclusive --prepare false`",
            flags: &["--exclusive", "--prepare", "false"],
            restart: Restart::Drain,
            goal: Goal::None,
        },
        Mode {
            name: "`--rebalance-delay 60s`, SIGKILL + restart",
            flags: &["--rebalance-delay", "60s"],
            restart: Restart::Kill,
            goal: Goal::None,
        },
    ]
}

/// Settings of the rolling-restart scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Members (`m1`, `m2`, …).
    pub members: usize,
    /// Work items.
    pub items: usize,
    /// Rolling restarts of each mode, each on a fresh store.
    pub runs: usize,
    /// The modes.
    pub modes: Vec<Mode>,
}

/// One interval of one item: without a primary, or with two or more.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The item.
    pub item: String,
    /// Start, from the first signal.
    pub start: Duration,
    /// Length.
    pub len: Duration,
    /// Who held it as primary just before (for an overlap: who held it alone).
    pub before: BTreeSet<String>,
    /// Who held it as primary when the interval ended.
    pub after: BTreeSet<String>,
}

/// What the lines of one rolling restart show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Times an item became primary on a member other than its last
    /// primary (its first primary is not a change).
    pub owner_changes: usize,
    /// The longest time an item had no primary.
    pub nobody_max: Duration,
    /// Item-seconds without a primary.
    pub nobody_seconds: f64,
    /// Intervals without a primary.
    pub nobody_count: usize,
    /// The longest time an item had two primaries or more.
    pub overlap_max: Duration,
    /// Item-seconds with two primaries or more.
    pub overlap_seconds: f64,
    /// Intervals with two primaries or more.
    pub overlap_count: usize,
    /// The longest interval without a primary.
    pub worst_nobody: Option<Span>,
    /// The longest interval with two primaries or more.
    pub worst_overlap: Option<Span>,
}

/// One item's primaries as the lines go.
struct ItemState {
    holders: BTreeSet<String>,
    /// Since when the item has had no primary, or two or more, and who held
    /// it just before.
    open: Option<(Instant, BTreeSet<String>)>,
    last_owner: Option<String>,
}

/// Reads `lines` (in the order read) and tallies, for `items`, what
/// happened between `from` and `to`: the lines before `from` give the state
/// at `from`; intervals are cut to the window.
pub fn analyze(lines: &[Line], items: &BTreeSet<String>, from: Instant, to: Instant) -> Tally {
    let start = lines.first().map_or(from, |l| l.at.min(from));
    let mut state: BTreeMap<&str, ItemState> = items
        .iter()
        .map(|i| {
            (
                i.as_str(),
                ItemState {
                    holders: BTreeSet::new(),
                    open: Some((start, BTreeSet::new())),
                    last_owner: None,
                },
            )
        })
        .collect();
    let mut held: BTreeMap<&str, &BTreeSet<String>> = BTreeMap::new();
    let mut t = Tally::default();
    let empty = BTreeSet::new();
    for line in lines.iter().take_while(|l| l.at <= to) {
        let old = held.insert(&line.member, &line.primary).unwrap_or(&empty);
        let lost = old.difference(&line.primary);
        let gained = line.primary.difference(old);
        for (item, gain) in lost.map(|i| (i, false)).chain(gained.map(|i| (i, true))) {
            let Some(s) = state.get_mut(item.as_str()) else {
                continue;
            };
            let was = s.holders.len();
            if gain {
                s.holders.insert(line.member.clone());
                if s.last_owner.as_deref() != Some(line.member.as_str()) {
                    if line.at >= from && s.last_owner.is_some() {
                        t.owner_changes += 1;
                    }
                    s.last_owner = Some(line.member.clone());
                }
            } else {
                s.holders.remove(&line.member);
            }
            let now = s.holders.len();
            let (in_before, in_after) = (was == 1, now == 1);
            if in_before == in_after {
                continue;
            }
            if let Some((since, before)) = s.open.take() {
                close(
                    &mut t,
                    item,
                    since,
                    before,
                    &s.holders,
                    line.at,
                    from,
                    to,
                    was == 0,
                );
            }
            if !in_after {
                // One holder before: it lost the item (nobody now), or
                // another member took it too (overlap).
                let before = if gain {
                    s.holders
                        .iter()
                        .filter(|m| **m != line.member)
                        .cloned()
                        .collect()
                } else {
                    [line.member.clone()].into()
                };
                s.open = Some((line.at, before));
            }
        }
    }
    for (item, s) in &mut state {
        if let Some((since, before)) = s.open.take() {
            let nobody = s.holders.is_empty();
            close(
                &mut t, item, since, before, &s.holders, to, from, to, nobody,
            );
        }
    }
    t
}

/// Adds the interval `[since, end]` of `item` (without a primary when
/// `nobody`, else with two or more), cut to `[from, to]`.
#[allow(clippy::too_many_arguments)] // one interval and its window
fn close(
    t: &mut Tally,
    item: &str,
    since: Instant,
    before: BTreeSet<String>,
    after: &BTreeSet<String>,
    end: Instant,
    from: Instant,
    to: Instant,
    nobody: bool,
) {
    let (a, b) = (since.max(from), end.min(to));
    if b <= a {
        return;
    }
    let len = b - a;
    let span = Span {
        item: item.to_owned(),
        start: a - from,
        len,
        before,
        after: after.clone(),
    };
    let (max, seconds, count, worst) = if nobody {
        (
            &mut t.nobody_max,
            &mut t.nobody_seconds,
            &mut t.nobody_count,
            &mut t.worst_nobody,
        )
    } else {
        (
            &mut t.overlap_max,
            &mut t.overlap_seconds,
            &mut t.overlap_count,
            &mut t.worst_overlap,
        )
    };
    *seconds += len.as_secs_f64();
    *count += 1;
    if len > *max {
        *max = len;
        *worst = Some(span);
    }
}

/// `Ok` when every live member printed, holds at least its quota (20 of
/// 100 on 5), every item is held exactly once, and no member holds a
/// secondary (no move is being prepared).
fn even(seen: &Seen, items: &BTreeSet<String>) -> Result<(), String> {
    if let Some(why) = check(seen, items, true) {
        return Err(why);
    }
    match seen.secondaries.iter().find(|(_, s)| !s.is_empty()) {
        Some((id, s)) => Err(format!("{id} holds {} secondaries", s.len())),
        None => Ok(()),
    }
}

/// One member's restart, timed from its signal.
#[derive(Debug, Clone)]
pub struct Step {
    /// The member.
    pub member: String,
    /// It led the cluster when it was signalled.
    pub leader: bool,
    /// When it was signalled.
    pub at: Instant,
    /// Signal → the process exited (SIGKILL: 0).
    pub exited: Duration,
    /// Signal → the cluster settled again.
    pub settled: Duration,
}

/// One rolling restart.
#[derive(Debug, Clone)]
pub struct Run {
    /// The restarts' times (signal → settled) added up: the rolling restart
    /// without the bench's look-up of the leader before each signal.
    pub total: Duration,
    /// Each member's restart.
    pub steps: Vec<Step>,
    /// What the lines show.
    pub tally: Tally,
}

/// The runs of one mode on one store.
#[derive(Debug, Clone)]
pub struct Series {
    /// The mode.
    pub mode: Mode,
    /// Each run, or why it stopped.
    pub runs: Vec<Result<Run, String>>,
}

/// What one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// One series per mode.
    pub series: Vec<Series>,
}

/// Writes the lines (and the bench's own actions) to `path`, each with its
/// time from `from`.
fn write_timeline(path: &Path, lines: &[Line], marks: &[(Instant, String)], from: Instant) {
    let at = |t: Instant| {
        if t >= from {
            format!("+{:.3}", (t - from).as_secs_f64())
        } else {
            format!("-{:.3}", (from - t).as_secs_f64())
        }
    };
    let mut all: Vec<(Instant, String)> = lines
        .iter()
        .map(|l| {
            let what = if l.raw.is_empty() {
                "(process ended: holds nothing)"
            } else {
                &l.raw
            };
            (l.at, format!("{} {} {what}", at(l.at), l.member))
        })
        .collect();
    all.extend(
        marks
            .iter()
            .map(|(t, m)| (*t, format!("{} bench: {m}", at(*t)))),
    );
    all.sort_by_key(|(t, _)| *t);
    let text: String = all.into_iter().map(|(_, l)| l + "\n").collect();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("[rolling] cannot write {}: {e}", path.display());
    }
}

/// The lines about `span`'s item from 1 s before it to 1 s after, for the
/// progress output.
fn around(lines: &[Line], span: &Span, from: Instant) -> String {
    let (a, b) = (
        from + span.start.saturating_sub(Duration::from_secs(1)),
        from + span.start + span.len + Duration::from_secs(1),
    );
    let mut out = String::new();
    for l in lines.iter().filter(|l| l.at >= a && l.at <= b) {
        let relevant = if l.raw.is_empty() {
            span.before.contains(&l.member) || span.after.contains(&l.member)
        } else {
            l.raw.contains(&format!("\"{}\"", span.item))
        };
        if relevant {
            let what = if l.raw.is_empty() {
                "(process ended)".to_owned()
            } else {
                l.raw.clone()
            };
            let _ = writeln!(
                out,
                "    +{:.3} s {}: {what}",
                l.at.saturating_duration_since(from).as_secs_f64(),
                l.member
            );
        }
    }
    out
}

/// One rolling restart in `mode`, on a fresh store.
async fn run_once(
    kind: Kind,
    mode: &Mode,
    params: &Params,
    lane: &Lane,
    logs: &Path,
) -> Result<Run, String> {
    let store = Store::start(kind).await;
    let writer = store.writer(lane.clone()).await;
    let items: BTreeSet<String> = (0..params.items).map(|i| format!("w{i:04}")).collect();
    put_items(&writer, &items).await;
    std::fs::create_dir_all(logs).expect("log directory");
    let flags: Vec<&str> = COMMON.iter().chain(mode.flags).copied().collect();
    let mut cluster = Cluster::new(kind, store.endpoint(), &flags, logs);
    let ids: Vec<String> = (1..=params.members).map(|i| format!("m{i}")).collect();
    for id in &ids {
        cluster.start(id);
    }
    let mut marks = Vec::new();
    let result = async {
        cluster.until(|s| even(s, &items), STAGE_TIMEOUT).await?;
        tokio::time::sleep(QUIET).await;
        cluster.until(|s| even(s, &items), STAGE_TIMEOUT).await?;
        let from = Instant::now();
        let mut steps = Vec::new();
        let mut to = from;
        for id in &ids {
            let leader = cluster.leader().await.ok().as_ref() == Some(id);
            let t0 = Instant::now();
            match mode.restart {
                Restart::Drain => {
                    marks.push((
                        t0,
                        format!("SIGTERM {id}{}", if leader { " (the leader)" } else { "" }),
                    ));
                    cluster.terminate(id, EXIT_WAIT).await?;
                    marks.push((Instant::now(), format!("{id} exited")));
                }
                Restart::Kill => {
                    marks.push((
                        t0,
                        format!("SIGKILL {id}{}", if leader { " (the leader)" } else { "" }),
                    ));
                    cluster.kill(id);
                }
            }
            let exited = t0.elapsed();
            marks.push((Instant::now(), format!("start {id}")));
            cluster.start(id);
            let ((), at) = cluster
                .until(|s| even(s, &items), STAGE_TIMEOUT)
                .await
                .map_err(|e| format!("after restarting {id}: {e}"))?;
            marks.push((at, "settled".to_owned()));
            to = at;
            steps.push(Step {
                member: id.clone(),
                leader,
                at: t0,
                exited,
                settled: at - t0,
            });
        }
        let from = steps.first().map_or(from, |s| s.at);
        Ok::<_, String>((from, to, steps))
    }
    .await;
    let lines = cluster.read(|s| s.lines.clone());
    cluster.stop().await;
    drop(store);
    let (from, to, steps) = result?;
    write_timeline(&logs.join("timeline.txt"), &lines, &marks, from);
    let tally = analyze(&lines, &items, from, to);
    report(kind, mode, &lines, &items, (from, to), &steps, &tally);
    Ok(Run {
        total: steps.iter().map(|s| s.settled).sum(),
        steps,
        tally,
    })
}

/// The progress lines of one run: its figures, and the lines around its
/// longest intervals.
fn report(
    kind: Kind,
    mode: &Mode,
    lines: &[Line],
    items: &BTreeSet<String>,
    (from, to): (Instant, Instant),
    steps: &[Step],
    tally: &Tally,
) {
    eprintln!(
        "[rolling] {kind}, {}: {} in all ({}); {} owner changes; nobody: longest {}, {:.2} item-s in {} intervals; overlap: longest {}, {:.2} item-s in {} intervals",
        mode.name,
        fmt_ms((to - from).as_secs_f64() * 1e3),
        steps
            .iter()
            .map(|s| {
                let t = analyze(lines, items, s.at, s.at + s.settled);
                format!(
                    "{}{} exited after {}, settled after {}: nobody {:.2} item-s (longest {}), overlap {:.2} item-s (longest {})",
                    s.member,
                    if s.leader { " (the leader)" } else { "" },
                    fmt_ms(s.exited.as_secs_f64() * 1e3),
                    fmt_ms(s.settled.as_secs_f64() * 1e3),
                    t.nobody_seconds,
                    fmt_ms(t.nobody_max.as_secs_f64() * 1e3),
                    t.overlap_seconds,
                    fmt_ms(t.overlap_max.as_secs_f64() * 1e3),
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        tally.owner_changes,
        fmt_ms(tally.nobody_max.as_secs_f64() * 1e3),
        tally.nobody_seconds,
        tally.nobody_count,
        fmt_ms(tally.overlap_max.as_secs_f64() * 1e3),
        tally.overlap_seconds,
        tally.overlap_count,
    );
    for (what, span) in [
        ("longest without a primary", &tally.worst_nobody),
        ("longest overlap", &tally.worst_overlap),
    ] {
        if let Some(span) = span {
            eprintln!(
                "[rolling]   {what}: {} from +{:.3} s for {} ({:?} → {:?}); its lines:\n{}",
                span.item,
                span.start.as_secs_f64(),
                fmt_ms(span.len.as_secs_f64() * 1e3),
                span.before,
                span.after,
                around(lines, span, from)
            );
        }
    }
}

/// Runs the scenario on one store.
pub async fn run(kind: Kind, params: &Params, lane: &Lane) -> Outcome {
    let logs = std::env::temp_dir().join(format!(
        "coordinator-rolling-{}-{}",
        kind.to_string().to_lowercase(),
        std::process::id()
    ));
    eprintln!(
        "[rolling] {kind}: member logs and timelines in {}",
        logs.display()
    );
    let mut series = Vec::new();
    for (m, mode) in params.modes.iter().enumerate() {
        let mut runs = Vec::new();
        for r in 1..=params.runs {
            eprintln!("[rolling] {kind}, {}: run {r}", mode.name);
            let dir = logs.join(format!("mode{}-run{r}", m + 1));
            let result = run_once(kind, mode, params, lane, &dir).await;
            if let Err(e) = &result {
                eprintln!("[rolling] {kind}, {}: run {r} failed: {e}", mode.name);
            }
            runs.push(result);
        }
        series.push(Series {
            mode: mode.clone(),
            runs,
        });
    }
    Outcome { kind, series }
}

fn secs(d: Duration) -> String {
    fmt_ms(d.as_secs_f64() * 1e3)
}

/// The markdown table, and where the longest intervals were.
pub fn table(all: &[Outcome], params: &Params) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} `coordinator member` processes (`m1`..`m{}`), {} items, `{}`; each member in turn restarted with the same id (SIGTERM, which drains, the exit awaited, started again; or SIGKILL and started at once) and the cluster settled again (each member its 20, no secondary) before the next. From every process's JSON lines, as read: the members holding each item as a primary. Times from the first signal to the settled cluster after the last restart; *nobody*: an item without a primary, *overlap*: an item primary on two members at once; item-s with the number of such intervals in brackets:\n",
        params.members,
        params.members,
        params.items,
        COMMON.join(" ")
    );
    let _ = writeln!(
        s,
        "| store | mode | run | 5 restarts | signal → exit / settled, mean | owner changes | nobody: longest | nobody: item-s | overlap: longest | overlap: item-s |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut worst = String::new();
    for o in all {
        for series in &o.series {
            for (r, run) in series.runs.iter().enumerate() {
                match run {
                    Ok(run) => {
                        let t = &run.tally;
                        let n = run.steps.len().max(1) as u32;
                        let exited: Duration = run.steps.iter().map(|s| s.exited).sum();
                        let settled: Duration = run.steps.iter().map(|s| s.settled).sum();
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} / {} | {} | {} | {:.2} ({}) | {} | {:.2} ({}) |",
                            o.kind,
                            series.mode.name,
                            r + 1,
                            secs(run.total),
                            secs(exited / n),
                            secs(settled / n),
                            t.owner_changes,
                            secs(t.nobody_max),
                            t.nobody_seconds,
                            t.nobody_count,
                            secs(t.overlap_max),
                            t.overlap_seconds,
                            t.overlap_count
                        );
                        if let Some(w) = &t.worst_nobody {
                            let _ = writeln!(
                                worst,
                                "- {}, {}, run {}: {} had no primary for {} from +{:.3} s ({} → {})",
                                o.kind,
                                series.mode.name,
                                r + 1,
                                w.item,
                                secs(w.len),
                                w.start.as_secs_f64(),
                                names(&w.before),
                                names(&w.after)
                            );
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | failed: {e} | | | | | | |",
                            o.kind,
                            series.mode.name,
                            r + 1
                        );
                    }
                }
            }
        }
    }
    if !worst.is_empty() {
        let _ = writeln!(
            s,
            "\nThe longest time without a primary, per run:\n\n{worst}"
        );
    }
    s
}

fn names(members: &BTreeSet<String>) -> String {
    if members.is_empty() {
        "nobody".to_owned()
    } else {
        members.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// One verdict per store and mode with a goal, over its runs.
pub fn verdicts(all: &[Outcome]) -> Vec<String> {
    let mut out = Vec::new();
    for o in all {
        for series in &o.series {
            let runs: Vec<&Run> = series.runs.iter().filter_map(|r| r.as_ref().ok()).collect();
            let failed = series.runs.len() - runs.len();
            let max = runs
                .iter()
                .map(|r| r.tally.nobody_max)
                .max()
                .unwrap_or_default();
            let seconds = runs
                .iter()
                .map(|r| r.tally.nobody_seconds)
                .fold(0.0, f64::max);
            let overlap = runs
                .iter()
                .map(|r| r.tally.overlap_seconds)
                .fold(0.0, f64::max);
            let failed = if failed > 0 {
                format!("; {failed} run(s) failed")
            } else {
                String::new()
            };
            match series.mode.goal {
                Goal::Exclusive => {
                    let ok = max <= EXCLUSIVE_GAP && seconds <= EXCLUSIVE_NOBODY_SECONDS;
                    out.push(format!(
                        "{}: rolling restart, {}: an item without a primary at most {} at a time and {EXCLUSIVE_NOBODY_SECONDS} item-s in all: worst run {} and {seconds:.2} item-s ({}){failed}",
                        o.kind,
                        series.mode.name,
                        secs(EXCLUSIVE_GAP),
                        secs(max),
                        if ok && runs.len() == series.runs.len() { "met" } else { "NOT met" }
                    ));
                }
                Goal::NeverNobody => {
                    let ok = seconds == 0.0;
                    out.push(format!(
                        "{}: rolling restart, {}: no item ever without a primary: worst run {seconds:.2} item-s, longest {} ({}); overlap up to {overlap:.2} item-s{failed}",
                        o.kind,
                        series.mode.name,
                        secs(max),
                        if ok && runs.len() == series.runs.len() { "met" } else { "NOT met" }
                    ));
                }
                Goal::None => {}
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

    fn line(t0: Instant, ms: u64, member: &str, primary: &[&str]) -> Line {
        Line {
            at: t0 + Duration::from_millis(ms),
            member: member.to_owned(),
            primary: set(primary),
            raw: "{}".to_owned(),
        }
    }

    #[test]
    fn a_gap_and_an_overlap_are_measured_within_the_window() {
        let t0 = Instant::now();
        let items = set(&["a", "b"]);
        let lines = vec![
            line(t0, 0, "m1", &["a"]),
            line(t0, 0, "m2", &["b"]),
            // Window from 100 ms. m1 lets a go at 200, m2 takes it at 250.
            line(t0, 200, "m1", &[]),
            line(t0, 250, "m2", &["a", "b"]),
            // m1 takes b at 300 while m2 still has it; m2 lets it go at 400.
            line(t0, 300, "m1", &["b"]),
            line(t0, 400, "m2", &["a"]),
        ];
        let t = analyze(
            &lines,
            &items,
            t0 + Duration::from_millis(100),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(t.owner_changes, 2);
        assert_eq!(t.nobody_max, Duration::from_millis(50));
        assert_eq!(t.nobody_count, 1);
        assert!((t.nobody_seconds - 0.05).abs() < 1e-9);
        assert_eq!(t.overlap_max, Duration::from_millis(100));
        assert!((t.overlap_seconds - 0.1).abs() < 1e-9);
        let w = t.worst_nobody.unwrap();
        assert_eq!(
            (w.item.as_str(), w.start, w.before, w.after),
            ("a", Duration::from_millis(100), set(&["m1"]), set(&["m2"]))
        );
        let w = t.worst_overlap.unwrap();
        assert_eq!(
            (w.item.as_str(), w.before, w.after),
            ("b", set(&["m2"]), set(&["m1"]))
        );
    }

    #[test]
    fn the_state_before_the_window_counts_and_open_intervals_are_cut() {
        let t0 = Instant::now();
        let items = set(&["a", "b"]);
        // b is never held: nobody over the whole window. a is lost before
        // the window and taken back inside it by the same member: no owner
        // change.
        let lines = vec![
            line(t0, 0, "m1", &["a"]),
            line(t0, 50, "m1", &[]),
            line(t0, 300, "m1", &["a"]),
        ];
        let t = analyze(
            &lines,
            &items,
            t0 + Duration::from_millis(100),
            t0 + Duration::from_millis(500),
        );
        assert_eq!(t.owner_changes, 0);
        assert_eq!(t.nobody_count, 2);
        assert_eq!(t.nobody_max, Duration::from_millis(400));
        assert!((t.nobody_seconds - 0.6).abs() < 1e-9);
        assert_eq!(t.worst_nobody.unwrap().item, "b");
        assert_eq!(t.overlap_count, 0);
    }

    #[test]
    fn an_overlap_of_three_is_one_interval() {
        let t0 = Instant::now();
        let items = set(&["a"]);
        let lines = vec![
            line(t0, 0, "m1", &["a"]),
            line(t0, 100, "m2", &["a"]),
            line(t0, 200, "m3", &["a"]),
            line(t0, 300, "m1", &[]),
            line(t0, 400, "m2", &[]),
        ];
        let t = analyze(&lines, &items, t0, t0 + Duration::from_secs(1));
        assert_eq!(t.overlap_count, 1);
        assert_eq!(t.overlap_max, Duration::from_millis(300));
        assert_eq!(t.owner_changes, 2, "m2 and m3 took it");
        assert_eq!(t.nobody_count, 0);
    }
}
