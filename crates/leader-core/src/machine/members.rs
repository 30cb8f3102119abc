//! Members-picture intake: a members event taken in at the cost of what
//! changed ([`LeaderMachine::handle_members`], the diff against the last
//! picture), or whole ([`set_members`](LeaderMachine::set_members)), with
//! the parsed member values kept between pictures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use std::time::Instant;

use super::{Action, LeaderMachine, Source};
use crate::layout::MemberMeta;
use crate::plan::MemberId;

/// A member key's value as metadata, when it parses and is not blank (what
/// [`LeaderMachine::set_members`] counts as a good value).
pub(super) fn parse_good(value: &[u8]) -> Option<MemberMeta> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    MemberMeta::parse(value).ok()
}

/// A member key's value as parsed, with the value it was parsed from.
#[derive(Debug)]
pub(super) struct ParsedMember {
    /// The value it was parsed from.
    value: Bytes,
    /// The member id its key names.
    id: MemberId,
    /// The parsed value.
    meta: MemberMeta,
}

impl LeaderMachine {
    /// The members prefix as it is now (every key and value under it).
    pub fn handle_members<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) {
        if self.stepped_down {
            return;
        }
        let quiet = self.quiet.take();
        let due = self.track_due;
        self.tick(now);
        let entries: Vec<(&[u8], &Bytes)> = entries.into_iter().collect();
        let moved = match self.members_delta(now, &entries) {
            // Acknowledgements make no member matter less to `track_owed`.
            Some(false) => {
                self.track_due = due;
                false
            }
            Some(true) => true,
            None => self.set_members(now, entries),
        };
        // Only acknowledgements moved, each short of what its moves wait
        // for: the scans would find nothing still.
        self.quiet = quiet.filter(|waits| {
            !moved
                && waits
                    .iter()
                    .all(|(m, lowest)| matches!(self.acks.get(m), Some(Some(a)) if a < lowest))
        });
        self.pump(now);
    }

    /// A members event taken in at the cost of what changed: `entries`
    /// compared with the last picture key by key (both in key order), and
    /// only the keys added, removed or with a new value dealt with, each as
    /// [`set_members`](Self::set_members) would. `None` (nothing changed)
    /// when the event needs the whole picture: a key or value that does not
    /// parse, now or before (their reports), or a session this leader ended
    /// not yet seen gone. Otherwise whether anything other than
    /// acknowledgements changed.
    fn members_delta(&mut self, now: Instant, entries: &[(&[u8], &Bytes)]) -> Option<bool> {
        if self.whole_pictures || self.members.is_none() || self.ending.values().any(|e| !e.seen) {
            return None;
        }
        let (upserts, removed, added) = self.picture_diff(entries)?;
        if upserts.is_empty() && removed.is_empty() {
            return Some(false);
        }
        let moved = self.apply_diff(now, entries, &upserts, &removed);
        // The last picture: kept entries moved over, new keys copied.
        if removed.is_empty() && !added {
            for (a, ..) in &upserts {
                self.last_members[*a].1 = entries[*a].1.clone();
            }
        } else {
            self.last_members = entries
                .iter()
                .map(|(key, value)| (key.to_vec(), (*value).clone()))
                .collect();
        }
        Some(moved)
    }

    /// What differs between `entries` and the last picture: the members
    /// with a new or changed value (index in `entries`, id, metadata), the
    /// removed ones (index in the last picture), and whether any key is
    /// new. `None` when one of them does not parse, now or before.
    #[allow(clippy::type_complexity)] // Three plain lists, named above.
    fn picture_diff(
        &self,
        entries: &[(&[u8], &Bytes)],
    ) -> Option<(Vec<(usize, MemberId, MemberMeta)>, Vec<usize>, bool)> {
        let mut upserts: Vec<(usize, MemberId, MemberMeta)> = Vec::new();
        let mut removed: Vec<usize> = Vec::new();
        let (mut a, mut b) = (0, 0);
        let mut added = false;
        let last = &self.last_members;
        while a < entries.len() || b < last.len() {
            let order = match (entries.get(a), last.get(b)) {
                (Some((key, _)), Some((last_key, _))) => (*key).cmp(last_key.as_slice()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Equal => {
                    let (key, value) = entries[a];
                    if *value != last[b].1 {
                        let old = self.parsed_members.get(key)?;
                        let meta = parse_good(value)?;
                        upserts.push((a, old.id.clone(), meta));
                    }
                    a += 1;
                    b += 1;
                }
                std::cmp::Ordering::Less => {
                    let (key, value) = entries[a];
                    let id = MemberId::from(self.layout.parse_member(key).ok()?);
                    upserts.push((a, id, parse_good(value)?));
                    added = true;
                    a += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.parsed_members.get(last[b].0.as_slice())?;
                    removed.push(b);
                    b += 1;
                }
            }
        }
        Some((upserts, removed, added))
    }

    /// Applies [`picture_diff`](Self::picture_diff)'s differences as
    /// [`set_members`](Self::set_members) would; whether anything other than
    /// acknowledgements changed.
    fn apply_diff(
        &mut self,
        now: Instant,
        entries: &[(&[u8], &Bytes)],
        upserts: &[(usize, MemberId, MemberMeta)],
        removed: &[usize],
    ) -> bool {
        let mut moved = false;
        let mut effective_changed = false;
        let members = self.members.as_mut().expect("checked above");
        for &b in removed {
            let parsed = self
                .parsed_members
                .remove(self.last_members[b].0.as_slice())
                .expect("checked above");
            let id = parsed.id;
            let weight = members.remove(&id).unwrap_or_default();
            self.acks.remove(&id);
            self.sessions.remove(&id);
            self.absent_since.insert(id.clone(), now);
            if self.timing.rebalance_delay.is_zero() {
                effective_changed = true;
            } else {
                let until = now + self.timing.rebalance_delay;
                self.departed.insert(id, (weight, until));
            }
            moved = true;
        }
        for (a, id, meta) in upserts {
            let weight = meta.effective_weight();
            if let Some(old) = members.insert(id.clone(), weight) {
                if old != weight {
                    moved = true;
                    effective_changed = true;
                }
            } else {
                moved = true;
                self.absent_since.remove(id);
                match self.departed.remove(id) {
                    Some((w, _)) if w == weight => {}
                    _ => effective_changed = true,
                }
            }
            self.acks.insert(id.clone(), meta.acked);
            if set_zone(&mut self.zones, id, meta.zone.as_deref()) {
                effective_changed = true;
            }
            if let Some(ms) = meta.ttl_ms {
                self.ttls.insert(id.clone(), Duration::from_millis(ms));
            }
            let session_before = match &meta.session {
                Some(s) => self.sessions.insert(id.clone(), s.clone()),
                None => self.sessions.remove(id),
            };
            if session_before != meta.session {
                moved = true;
            }
            let (key, value) = entries[*a];
            let parsed = ParsedMember {
                value: value.clone(),
                id: id.clone(),
                meta: meta.clone(),
            };
            match self.parsed_members.get_mut(key) {
                Some(p) => *p = parsed,
                None => {
                    self.parsed_members.insert(key.to_vec(), parsed);
                }
            }
        }
        if effective_changed {
            self.changed(now);
        }
        moved
    }

    /// Takes in a members picture; whether anything other than the members'
    /// acknowledgements changed (members, weights, sessions, a session this
    /// leader ended seen gone).
    pub(super) fn set_members<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) -> bool {
        let mut members = BTreeMap::new();
        let mut acks = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut sessions = BTreeMap::new();
        // Values seen in the last picture are not parsed again.
        let mut cache = std::mem::take(&mut self.parsed_members);
        let mut last = Vec::new();
        let mut zone_changed = false;
        for (key, value) in entries {
            last.push((key.to_vec(), value.clone()));
            if let Some((key, hit)) = cache.remove_entry(key).filter(|(_, p)| p.value == *value) {
                let (id, meta) = (hit.id.clone(), hit.meta.clone());
                self.parsed_members.insert(key, hit);
                members.insert(id.clone(), meta.effective_weight());
                acks.insert(id.clone(), meta.acked);
                zone_changed |= set_zone(&mut self.zones, &id, meta.zone.as_deref());
                if let Some(ms) = meta.ttl_ms {
                    self.ttls.insert(id.clone(), Duration::from_millis(ms));
                }
                if let Some(s) = meta.session {
                    sessions.insert(id, s);
                }
                continue;
            }
            let id = match self.layout.parse_member(key) {
                Ok(id) => id,
                Err(reason) => {
                    self.report_bad(Source::Members, &mut seen, key, reason);
                    continue;
                }
            };
            // Fail safe: a value that does not parse (another version, a
            // hand edit) or is empty says nothing of whether the member
            // reports acknowledgements, so it counts as one that reports and
            // has acknowledged nothing: moves away from it wait (until it
            // writes a value that parses, or the handoff timeout).
            let (meta, acked) = match MemberMeta::parse(value) {
                Ok(meta) if !value.iter().all(u8::is_ascii_whitespace) => {
                    self.parsed_members.insert(
                        key.to_vec(),
                        ParsedMember {
                            value: value.clone(),
                            id: MemberId::from(id),
                            meta: meta.clone(),
                        },
                    );
                    let acked = meta.acked;
                    (meta, acked)
                }
                parsed => {
                    let error = parsed
                        .err()
                        .map_or_else(|| "the value is empty".to_owned(), |e| e.to_string());
                    let mut marker = key.to_vec();
                    marker.push(0);
                    marker.extend_from_slice(value);
                    let known = self
                        .reported
                        .get(&Source::Members)
                        .is_some_and(|r| r.contains(&marker));
                    if !known {
                        self.out.push_back(Action::BadMemberValue {
                            member: id.to_owned(),
                            error,
                        });
                    }
                    seen.insert(marker);
                    (MemberMeta::default(), Some(0))
                }
            };
            members.insert(MemberId::from(id), meta.effective_weight());
            acks.insert(MemberId::from(id), acked);
            zone_changed |= set_zone(&mut self.zones, &MemberId::from(id), meta.zone.as_deref());
            if let Some(ms) = meta.ttl_ms {
                self.ttls
                    .insert(MemberId::from(id), Duration::from_millis(ms));
            }
            if let Some(s) = meta.session {
                sessions.insert(MemberId::from(id), s);
            }
        }
        self.reported.insert(Source::Members, seen);
        self.last_members = last;
        if zone_changed {
            self.changed(now);
        }
        self.acks = acks;
        self.members_sessions(now, members, sessions)
    }

    /// The second half of [`set_members`](Self::set_members): the new
    /// members and sessions; whether either changed.
    fn members_sessions(
        &mut self,
        now: Instant,
        members: BTreeMap<MemberId, u32>,
        sessions: BTreeMap<MemberId, String>,
    ) -> bool {
        let mut moved = self.sessions != sessions;
        // A session this leader ended is gone once its key is absent or
        // bound to another session.
        for (id, e) in &mut self.ending {
            if !e.seen && sessions.get(id) != Some(&e.session) {
                e.seen = true;
                moved = true;
                for (key, t) in &mut self.owed_times {
                    if &key.1 == id && t.since <= e.asked {
                        t.fenced.get_or_insert(now);
                        self.owed_fenced.insert(key.clone());
                    }
                }
            }
        }
        self.sessions = sessions;
        if self.members.as_ref() != Some(&members) {
            moved = true;
            let before = self.effective();
            if let Some(old) = &self.members {
                for (id, weight) in old {
                    if !members.contains_key(id) {
                        self.absent_since.insert(id.clone(), now);
                        if !self.timing.rebalance_delay.is_zero() {
                            let until = now + self.timing.rebalance_delay;
                            self.departed.insert(id.clone(), (*weight, until));
                        }
                    }
                }
            }
            for id in members.keys() {
                self.departed.remove(id);
                self.absent_since.remove(id);
            }
            self.members = Some(members);
            // A member that left within the delay, or came back within it,
            // changes nothing a plan would see: no soak, no plan, no move.
            if self.effective() != before {
                self.changed(now);
            }
        }
        moved
    }
}

/// Records `id`'s zone in `zones` as its key says; whether it changed.
fn set_zone(
    zones: &mut BTreeMap<MemberId, std::sync::Arc<str>>,
    id: &MemberId,
    zone: Option<&str>,
) -> bool {
    match zone {
        Some(z) if zones.get(id).is_some_and(|old| &**old == z) => false,
        Some(z) => {
            zones.insert(id.clone(), std::sync::Arc::from(z));
            true
        }
        None => zones.remove(id).is_some(),
    }
}
