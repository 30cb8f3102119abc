//! The scenario's output: its markdown tables and its verdicts, each figure
//! against its bound.

use std::fmt::Write as _;
use std::time::Duration;

use leader_core::PlanReport;

use super::outcome::{Change, Outcome, Rate};
use super::settings::WRITES_BOUND_ITEMS;
use crate::measure::{fmt_bytes, fmt_ms};

/// `d` in milliseconds, as the tables print it.
fn ms(d: Duration) -> String {
    fmt_ms(d.as_secs_f64() * 1e3)
}

/// The cells of one membership change in a table row.
fn change_cells(c: &Result<Change, String>) -> String {
    match c {
        Ok(c) => format!(
            "{} | {} | {} | {} | **{}** | {} / {} / {} ({} plan{})",
            ms(c.detection),
            ms(c.leader_soak),
            ms(c.writes),
            ms(c.worker_soak),
            ms(c.total),
            c.placed(),
            c.moved(),
            c.min_moves(),
            c.plans.len(),
            if c.plans.len() == 1 { "" } else { "s" },
        ),
        Err(e) => format!("FAILED: {e} | | | | | "),
    }
}

/// The scenario's tables, in markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Member killed (no leave; its session / lease expires as after SIGKILL):\n"
    );
    let _ = writeln!(
        s,
        "| store | members × items | TTL | startup: all settled | detection | leader soak | writes | worker soak | total | placed / moved / min moves |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for o in outcomes {
        let startup = o
            .startup
            .as_ref()
            .map_or_else(|e| format!("FAILED: {e}"), |d| ms(*d));
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} s | {startup} | {} |",
            o.kind,
            o.members,
            o.items,
            o.ttl.as_secs(),
            change_cells(&o.kill)
        );
    }
    let _ = writeln!(s, "\nMember joining, then idle:\n");
    let _ = writeln!(
        s,
        "| store | members × items | registered | leader soak | writes | worker soak | total | placed / moved / min moves | idle: requests/s | idle: store CPU | idle: members' CPU |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for o in outcomes {
        let idle = match &o.idle {
            Ok(i) => format!(
                "{:.1}{} | {:.1} % | {:.1} %",
                i.counts.requests as f64 / i.secs,
                if i.counts.pings > 0 {
                    format!(" (+{} pings)", i.counts.pings)
                } else {
                    String::new()
                },
                i.store_cpu * 100.0,
                i.members_cpu * 100.0
            ),
            Err(e) => format!("FAILED: {e} | | "),
        };
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} | {idle} |",
            o.kind,
            o.members,
            o.items,
            change_cells(&o.join),
        );
    }
    writes_table(&mut s, outcomes);
    plans_table(&mut s, outcomes);
    s
}

/// The start-up writes against the bare loop, and the bulk add.
fn writes_table(s: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(
        s,
        "\nThe leader's start-up writes next to a bare loop of the same transactions, then a bulk add of a tenth more items:\n"
    );
    let _ = writeln!(
        s,
        "| store | members × items | start-up: leader's writes | bare loop | leader ÷ bare | bulk add | bench's write | leader soak | writes | worker soak | total | placed / moved / min moves |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for o in outcomes {
        let writes = match &o.writes {
            Ok(w) => format!(
                "{} | {} | **{:.2}**",
                rate_cell(&w.leader),
                rate_cell(&w.bare),
                w.ratio()
            ),
            Err(e) => format!("FAILED: {e} | | "),
        };
        let bulk = match &o.bulk {
            Ok(b) => format!(
                "{} | {} | {} | {} ({}) | {} | **{}** | {} / {} / {} ({} plan{})",
                b.added,
                ms(b.store_write),
                ms(b.leader_soak),
                ms(b.writes),
                rate_cell(&b.rate),
                ms(b.worker_soak),
                ms(b.total),
                b.plans.iter().map(|p| p.placed).sum::<usize>(),
                b.plans.iter().map(|p| p.moved).sum::<usize>(),
                b.plans.iter().map(|p| p.min_moves).sum::<usize>(),
                b.plans.len(),
                if b.plans.len() == 1 { "" } else { "s" },
            ),
            Err(e) => format!("FAILED: {e} | | | | | | "),
        };
        let _ = writeln!(
            s,
            "| {} | {} × {} | {writes} | {bulk} |",
            o.kind, o.members, o.items
        );
    }
}

/// Time per plan, memory and descriptors.
fn plans_table(s: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(
        s,
        "\nThe leader's time per plan (the machine call that planned), memory and descriptors:\n"
    );
    let _ = writeln!(
        s,
        "| store | members × items | plan: start-up | kill | join | bulk add | RSS growth at start-up (÷ members) | live heap growth at start-up (÷ members) | live heap per follower | leader's member, live heap | connections per member | open files: bench / store |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let plan_ms = |plans: &[PlanReport]| match plans.iter().map(|p| p.took).max() {
            Some(d) if plans.len() > 1 => format!("{} (max of {})", ms(d), plans.len()),
            Some(d) => ms(d),
            None => "–".to_owned(),
        };
        let none: &[PlanReport] = &[];
        let mem = match &o.memory {
            Ok(m) => format!(
                "{} ({}) | {} ({}) | {} | {} | {:.1} | {} / {}",
                fmt_bytes(m.rss_growth as f64),
                fmt_bytes(m.rss_growth as f64 / o.members as f64),
                fmt_bytes(m.heap_growth as f64),
                fmt_bytes(m.heap_growth as f64 / o.members as f64),
                fmt_bytes(m.follower_heap),
                fmt_bytes(m.leader_heap as f64),
                m.conns_per_member,
                m.fds,
                m.store_fds
            ),
            Err(e) => format!("FAILED: {e} | | | | | "),
        };
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} | {} | {} | {} | {mem} |",
            o.kind,
            o.members,
            o.items,
            plan_ms(&o.startup_plans),
            plan_ms(o.kill.as_ref().map_or(none, |c| c.plans.as_slice())),
            plan_ms(o.join.as_ref().map_or(none, |c| c.plans.as_slice())),
            plan_ms(o.bulk.as_ref().map_or(none, |b| b.plans.as_slice())),
        );
    }
}

/// `keys/s (keys in txns, mean round trip)`.
fn rate_cell(r: &Rate) -> String {
    format!(
        "{:.0} keys/s ({} in {} txns, {} each in `apply`)",
        r.per_sec(),
        r.keys,
        r.txns,
        ms(r.in_apply / u32::try_from(r.txns.max(1)).unwrap_or(u32::MAX))
    )
}

/// Each figure against its bound (docs/leader.md).
pub fn verdicts(outcomes: &[Outcome]) -> Vec<String> {
    let mut v = Vec::new();
    for o in outcomes {
        let (ls, ws) = o.soaks;
        if let Ok(k) = &o.kill {
            let bound = o.detection_bound + ls + k.writes + ws;
            v.push(format!(
                "leader {} {}×{} kill: detection {} (bound {}), total {} vs expiry + leader soak + writes + worker soak = {} — {}; moved {} = min {} — {}",
                o.kind,
                o.members,
                o.items,
                ms(k.detection),
                ms(o.detection_bound),
                ms(k.total),
                ms(bound),
                if k.total <= bound { "within" } else { "ABOVE" },
                k.moved(),
                k.min_moves(),
                if k.moved() == k.min_moves() { "met" } else { "MISSED" }
            ));
        }
        if let Ok(j) = &o.join {
            v.push(format!(
                "leader {} {}×{} join: total {}; moved {} = min {} — {}",
                o.kind,
                o.members,
                o.items,
                ms(j.total),
                j.moved(),
                j.min_moves(),
                if j.moved() == j.min_moves() {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
        if let Ok(w) = &o.writes {
            v.push(format!(
                "leader {} {}×{} start-up writes: leader {:.0} keys/s vs bare loop {:.0} keys/s = {:.2}× (bound ≥ 0.80×) — {}",
                o.kind,
                o.members,
                o.items,
                w.leader.per_sec(),
                w.bare.per_sec(),
                w.ratio(),
                if o.items < WRITES_BOUND_ITEMS {
                    "not judged below 100,000 items (a few dozen transactions: noise)"
                } else if w.ratio() >= 0.8 {
                    "met"
                } else {
                    "BELOW"
                }
            ));
        }
        if let Ok(b) = &o.bulk {
            let placed: usize = b.plans.iter().map(|p| p.placed).sum();
            let moved: usize = b.plans.iter().map(|p| p.moved).sum();
            let min: usize = b.plans.iter().map(|p| p.min_moves).sum();
            v.push(format!(
                "leader {} {}×{} bulk add of {}: total {} (bench's write {} + leader soak {} + writes {} + worker soak {}); placed {} = added {}, moved {} = min {} — {}",
                o.kind,
                o.members,
                o.items,
                b.added,
                ms(b.total),
                ms(b.store_write),
                ms(b.leader_soak),
                ms(b.writes),
                ms(b.worker_soak),
                placed,
                b.added,
                moved,
                min,
                if placed == b.added && moved == min {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
    }
    v
}
