//! Where the leader half keeps its keys, and how they are parsed.
//!
//! Defaults, under `service/coordinator/`:
//!
//! | key | written by | value |
//! |---|---|---|
//! | `members/<id>` | the member, bound to its session / lease | JSON metadata, e.g. `{"weight":2}` |
//! | `leader` | the election (Consul: the key the leader's session holds; etcd: the election's name) | the leader's instance id |
//! | `work/<work_id>` | operators (`coordinator work put`) | the item's parameters |
//! | `assignments/<member>/<work_id>` | the leader only, in fenced transactions | copied from the item |
//! | `handoff/<work_id>` | the leader only, with the revoke of a move | the member it was revoked from |
//! | `drain/<id>` | operators (`coordinator drain ID`) | anything: asks member `<id>` to drain and leave |
//! | `sequence` | the leader only, in every fenced transaction | who wrote it last (for humans) |

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use worker_core::{validate_instance_id, ConfigError, WorkId};

use crate::plan::MemberId;

/// The default members prefix.
pub const DEFAULT_MEMBERS_PREFIX: &str = "service/coordinator/members/";
/// The default leader key / election name.
pub const DEFAULT_LEADER_KEY: &str = "service/coordinator/leader";
/// The default work-items prefix.
pub const DEFAULT_WORK_PREFIX: &str = "service/coordinator/work/";
/// The default handoff-records prefix.
pub const DEFAULT_HANDOFF_PREFIX: &str = "service/coordinator/handoff/";
/// The default drain-requests prefix.
pub const DEFAULT_DRAIN_PREFIX: &str = "service/coordinator/drain/";
/// The default sequence key.
pub const DEFAULT_SEQUENCE_KEY: &str = "service/coordinator/sequence";

/// The places of the key layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Member registrations: `<members><id>`. Default [`DEFAULT_MEMBERS_PREFIX`].
    pub members: String,
    /// The leader key (Consul) or election name (etcd). Default [`DEFAULT_LEADER_KEY`].
    pub leader: String,
    /// Work items: `<work><work_id>`. Default [`DEFAULT_WORK_PREFIX`].
    pub work: String,
    /// Assignments: `<assignments><member>/<work_id>`.
    /// Default [`worker_core::DEFAULT_PREFIX`].
    pub assignments: String,
    /// Moves in flight: `<handoff><work_id>` names the member an item was
    /// revoked from until its new owner has it. Default [`DEFAULT_HANDOFF_PREFIX`].
    pub handoff: String,
    /// Drain requests: `<drain><id>`. Default [`DEFAULT_DRAIN_PREFIX`].
    pub drain: String,
    /// The sequence key every leader transaction checks and bumps
    /// ([`worker_core::TxnOp::Sequence`]), so that a transaction built on a
    /// stale view never applies after a later one. Default
    /// [`DEFAULT_SEQUENCE_KEY`].
    pub sequence: String,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            members: DEFAULT_MEMBERS_PREFIX.to_owned(),
            leader: DEFAULT_LEADER_KEY.to_owned(),
            work: DEFAULT_WORK_PREFIX.to_owned(),
            assignments: worker_core::DEFAULT_PREFIX.to_owned(),
            handoff: DEFAULT_HANDOFF_PREFIX.to_owned(),
            drain: DEFAULT_DRAIN_PREFIX.to_owned(),
            sequence: DEFAULT_SEQUENCE_KEY.to_owned(),
        }
    }
}

/// Why a key under one of the layout's prefixes is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadKey {
    /// The key is not under the expected prefix.
    OtherPrefix,
    /// The id part is empty.
    Empty,
    /// The id part has more segments than allowed.
    Nested,
    /// The key is not valid UTF-8.
    NotUtf8,
    /// The member id is not a valid instance id.
    BadMemberId(String),
    /// A work item's value begins with an envelope
    /// ([`worker_core::Envelope`]) that does not parse or asks for what a
    /// work item cannot (a role), or its bytes would read as one: the item is
    /// left out of plans.
    BadEnvelope(String),
}

impl std::fmt::Display for BadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadKey::OtherPrefix => f.write_str("not under the prefix"),
            BadKey::Empty => f.write_str("empty id"),
            BadKey::Nested => f.write_str("nested deeper than one segment"),
            BadKey::NotUtf8 => f.write_str("not valid UTF-8"),
            BadKey::BadMemberId(reason) => write!(f, "bad member id: {reason}"),
            BadKey::BadEnvelope(reason) => write!(f, "bad work item value: {reason}"),
        }
    }
}

fn segment<'k>(key: &'k [u8], prefix: &str) -> Result<&'k str, BadKey> {
    let rest = key
        .strip_prefix(prefix.as_bytes())
        .ok_or(BadKey::OtherPrefix)?;
    let rest = std::str::from_utf8(rest).map_err(|_| BadKey::NotUtf8)?;
    if rest.is_empty() {
        return Err(BadKey::Empty);
    }
    if rest.contains('/') {
        return Err(BadKey::Nested);
    }
    Ok(rest)
}

impl Layout {
    /// Checks that the prefixes can be told apart and end where they should.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, prefix) in [
            ("members_prefix", &self.members),
            ("work_prefix", &self.work),
            ("prefix", &self.assignments),
            ("handoff_prefix", &self.handoff),
            ("drain_prefix", &self.drain),
        ] {
            if !prefix.ends_with('/') {
                return Err(ConfigError::new(
                    field,
                    format!("{prefix:?} must end with '/'"),
                ));
            }
        }
        if self.leader.is_empty() {
            return Err(ConfigError::new("leader", "must not be empty"));
        }
        if self.sequence.is_empty() || self.sequence.ends_with('/') {
            return Err(ConfigError::new(
                "sequence_key",
                format!(
                    "{:?} must be a key, not empty nor ending with '/'",
                    self.sequence
                ),
            ));
        }
        let defaults = Self::default();
        let all = [
            ("members_prefix", &self.members, &defaults.members),
            ("work_prefix", &self.work, &defaults.work),
            ("prefix", &self.assignments, &defaults.assignments),
            ("handoff_prefix", &self.handoff, &defaults.handoff),
            ("drain_prefix", &self.drain, &defaults.drain),
        ];
        for (field, prefix, _) in all {
            // Under a prefix it would be read as one of its keys; a prefix
            // under it would hold keys that look like it.
            if self.sequence.starts_with(prefix.as_str()) || prefix.starts_with(&self.sequence) {
                return Err(ConfigError::new(
                    "sequence_key",
                    format!(
                        "{:?} and `{field}` {prefix:?} overlap: give the sequence key a place of its own",
                        self.sequence
                    ),
                ));
            }
        }
        for (i, (fa, a, da)) in all.iter().enumerate() {
            for (fb, b, db) in &all[i + 1..] {
                if a.starts_with(b.as_str()) || b.starts_with(a.as_str()) {
                    // Name the one that was changed from its default: that
                    // is the setting to fix.
                    let (field, value, other, other_value) = if a == da && b != db {
                        (*fb, b, *fa, a)
                    } else {
                        (*fa, a, *fb, b)
                    };
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{value:?} overlaps `{other}` {other_value:?}: each prefix needs a subtree of its own"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The member key of `id`.
    pub fn member_key(&self, id: &str) -> String {
        format!("{}{id}", self.members)
    }

    /// The key of work item `id`.
    pub fn work_key(&self, id: &str) -> String {
        format!("{}{id}", self.work)
    }

    /// The assignment key of `work` on `member`.
    pub fn assignment_key(&self, member: &str, work: &str) -> String {
        format!("{}{member}/{work}", self.assignments)
    }

    /// The handoff record of `work`.
    pub fn handoff_key(&self, work: &str) -> String {
        format!("{}{work}", self.handoff)
    }

    /// The drain request of member `id`.
    pub fn drain_key(&self, id: &str) -> String {
        format!("{}{id}", self.drain)
    }

    /// The work id of a handoff record's key.
    pub fn parse_handoff<'k>(&self, key: &'k [u8]) -> Result<&'k str, BadKey> {
        segment(key, &self.handoff)
    }

    /// The member id of a member key.
    pub fn parse_member<'k>(&self, key: &'k [u8]) -> Result<&'k str, BadKey> {
        let id = segment(key, &self.members)?;
        validate_instance_id(id).map_err(|e| BadKey::BadMemberId(e.reason))?;
        Ok(id)
    }

    /// The work id of a work-item key.
    pub fn parse_work<'k>(&self, key: &'k [u8]) -> Result<&'k str, BadKey> {
        segment(key, &self.work)
    }

    /// The (member, work id) of an assignment key.
    pub fn parse_assignment<'k>(&self, key: &'k [u8]) -> Result<(&'k str, &'k str), BadKey> {
        let rest = key
            .strip_prefix(self.assignments.as_bytes())
            .ok_or(BadKey::OtherPrefix)?;
        let rest = std::str::from_utf8(rest).map_err(|_| BadKey::NotUtf8)?;
        let (member, work) = rest.split_once('/').ok_or(BadKey::Nested)?;
        validate_instance_id(member).map_err(|e| BadKey::BadMemberId(e.reason))?;
        if work.is_empty() {
            return Err(BadKey::Empty);
        }
        if work.contains('/') {
            return Err(BadKey::Nested);
        }
        Ok((member, work))
    }
}

/// The longest zone name a member may publish, in bytes.
pub const MAX_ZONE_LEN: usize = 128;

/// What a member publishes in its member key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberMeta {
    /// Relative share of the work (default 1; 0 takes nothing).
    pub weight: u32,
    /// The member is leaving: the leader moves its items away.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// How far the member's application has applied its assignments: the
    /// store position of its assignments it last acknowledged. A member
    /// that reports it takes part in the acknowledged handoff: an item
    /// revoked from it goes to its new owner only once this reaches the
    /// revoke. `None` (not reported): moves away from it do not wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    /// The TTL of the member's session, in milliseconds. In exclusive mode
    /// the leader gives the items of a member whose key vanished to another
    /// only a whole TTL later (the longest the member may still believe in
    /// its lease); `None`: the leader assumes its own TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The member's session (Consul session id, etcd lease id), so that the
    /// leader can end it when a handoff from this member times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The member's failure domain (a zone, rack or host group), as its
    /// operator names it; `None`: not given. Published for the leader and
    /// for `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Default for MemberMeta {
    fn default() -> Self {
        Self {
            weight: 1,
            draining: false,
            acked: None,
            ttl_ms: None,
            session: None,
            zone: None,
        }
    }
}

impl MemberMeta {
    /// Parses a member key's value; an empty value is the default.
    pub fn parse(value: &[u8]) -> Result<Self, serde_json::Error> {
        if value.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(value)
    }

    /// The JSON written to the member key.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Checks a zone name: 1 to [`MAX_ZONE_LEN`] bytes, no control
    /// characters, not only white space.
    pub fn validate_zone(zone: &str) -> Result<(), ConfigError> {
        if zone.trim().is_empty() {
            return Err(ConfigError::new("zone", "must not be empty"));
        }
        if zone.len() > MAX_ZONE_LEN {
            return Err(ConfigError::new(
                "zone",
                format!("{} bytes, longer than {MAX_ZONE_LEN}", zone.len()),
            ));
        }
        if zone.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "zone",
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    /// The weight the planner uses: 0 while draining.
    pub fn effective_weight(&self) -> u32 {
        if self.draining {
            0
        } else {
            self.weight
        }
    }
}

/// Converts a parsed id into the shared id types.
pub(crate) fn ids(member: &str, work: &str) -> (MemberId, WorkId) {
    (MemberId::from(member), WorkId::from(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_key_and_skips_bad_ones() {
        let l = Layout::default();
        assert_eq!(l.parse_member(b"service/coordinator/members/m1"), Ok("m1"));
        assert_eq!(
            l.parse_member(b"service/coordinator/members/m1/x"),
            Err(BadKey::Nested)
        );
        assert_eq!(l.parse_work(b"service/coordinator/work/w1"), Ok("w1"));
        assert_eq!(
            l.parse_work(b"service/coordinator/work/"),
            Err(BadKey::Empty)
        );
        assert_eq!(
            l.parse_work(b"service/coordinator/work/\xff"),
            Err(BadKey::NotUtf8)
        );
        assert_eq!(
            l.parse_assignment(b"service/coordinator/assignments/m1/w1"),
            Ok(("m1", "w1"))
        );
        assert_eq!(
            l.parse_assignment(b"service/coordinator/assignments/m1/w1/x"),
            Err(BadKey::Nested)
        );
        assert_eq!(
            l.assignment_key("m1", "w1"),
            "service/coordinator/assignments/m1/w1"
        );
    }

    #[test]
    fn member_meta_defaults_and_draining() {
        assert_eq!(MemberMeta::parse(b"").unwrap(), MemberMeta::default());
        let m = MemberMeta::parse(br#"{"weight":2}"#).unwrap();
        assert_eq!(m.weight, 2);
        assert_eq!(m.effective_weight(), 2);
        let d = MemberMeta::parse(br#"{"weight":2,"draining":true}"#).unwrap();
        assert_eq!(d.effective_weight(), 0);
        assert!(MemberMeta::parse(b"{not json").is_err());
        assert_eq!(&MemberMeta::default().to_bytes()[..], br#"{"weight":1}"#);
        let s =
            MemberMeta::parse(br#"{"weight":1,"acked":3,"ttl_ms":15000,"session":"abc"}"#).unwrap();
        assert_eq!(s.ttl_ms, Some(15_000));
        assert_eq!(s.session.as_deref(), Some("abc"));
    }

    #[test]
    fn overlapping_prefixes_are_refused() {
        let mut l = Layout::default();
        assert!(l.validate().is_ok());
        l.work = "service/coordinator/".into();
        let e = l.validate().unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
    }

    #[test]
    fn a_sequence_key_under_or_over_a_prefix_is_refused() {
        let mut l = Layout {
            sequence: "service/coordinator/assignments/seq".into(),
            ..Layout::default()
        };
        let e = l.validate().unwrap_err();
        assert!(e.to_string().contains("sequence_key"), "{e}");
        l.sequence = "service/coordinator/work".into();
        assert!(l.validate().is_err(), "a prefix lies under it");
        l.sequence = "service/coordinator/seq/".into();
        assert!(l.validate().is_err());
        l.sequence = "service/coordinator/seq".into();
        assert!(l.validate().is_ok());
    }
}
