//! Roles and the envelope that carries them in values.
//!
//! With one replica per item (the default), values are the application's bytes, untouched:
//! a work item's value is copied to its owner's assignment key as it is.
//!
//! With replicas, two things travel in values, in an **envelope**: a header line that begins
//! with [`ENVELOPE_MAGIC`] (a NUL byte, then `coordinator:`), holds comma-separated
//! `name=value` settings and ends at the first `\n`; the application's bytes follow:
//!
//! | where | header | meaning |
//! |---|---|---|
//! | a work item (`work/<id>`) | `replicas=N` | this item wants `N` replicas (overrides the cluster's `replicas`) |
//! | an assignment key | `role=secondary` | the member holds the item as a secondary (standby) |
//!
//! A primary's assignment key carries no envelope: its value is the item's bytes, as with one
//! replica, so that readers that know nothing of roles keep working. The leader strips a work
//! item's envelope before copying its bytes. A value that begins with the magic but does not
//! parse is refused by the leader (a work item) or treated as a primary with the whole value
//! (an assignment key, which only the leader writes).
//!
//! ```
//! use worker_core::{Envelope, Role};
//!
//! let secondary = Envelope::secondary(b"params");
//! assert_eq!(Envelope::role_of(&secondary), (Role::Secondary, &b"params"[..]));
//! assert_eq!(Envelope::role_of(b"params"), (Role::Primary, &b"params"[..]));
//!
//! let item = Envelope::with_replicas(3, b"params");
//! let (env, payload) = Envelope::split(&item).unwrap();
//! assert_eq!((env.replicas, payload), (Some(3), &b"params"[..]));
//! ```

use std::fmt;

use bytes::Bytes;

/// The bytes an envelope begins with.
pub const ENVELOPE_MAGIC: &[u8] = b"\0coordinator:";

/// The largest per-item replica count an envelope may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// The role of a member for an item it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The primary: the one replica that serves the item (in exclusive mode, never two at
    /// once).
    Primary,
    /// A secondary (standby): kept warm, promoted when the primary is lost.
    Secondary,
}

impl Role {
    /// `"primary"` or `"secondary"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings of an envelope: a header line that begins with
/// [`ENVELOPE_MAGIC`], holds comma-separated `name=value` settings and ends
/// at the first `\n`, before the application's bytes. A work item's may say
/// `replicas=N` (its own replica count); a secondary's assignment key says
/// `role=secondary`; a primary's assignment key has none (its value is the
/// item's bytes, as with one replica per item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Envelope {
    /// `replicas=N`: the item's replica count (work items).
    pub replicas: Option<u32>,
    /// `role=…`: the holder's role (assignment keys).
    pub role: Option<Role>,
}

/// Why a value that begins with [`ENVELOPE_MAGIC`] does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError(String);

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad envelope: {}", self.0)
    }
}

impl std::error::Error for EnvelopeError {}

impl Envelope {
    /// Splits `value` into its envelope (default when it has none) and the application's
    /// bytes.
    ///
    /// # Errors
    /// The value begins with [`ENVELOPE_MAGIC`] but its header is not `name=value` pairs this
    /// version knows, or has no end.
    pub fn split(value: &[u8]) -> Result<(Envelope, &[u8]), EnvelopeError> {
        let Some(rest) = value.strip_prefix(ENVELOPE_MAGIC) else {
            return Ok((Envelope::default(), value));
        };
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| EnvelopeError("the header line has no end (\\n)".to_owned()))?;
        let header = std::str::from_utf8(&rest[..end])
            .map_err(|_| EnvelopeError("the header is not UTF-8".to_owned()))?;
        let mut env = Envelope::default();
        for setting in header.split(',').filter(|s| !s.is_empty()) {
            let (name, v) = setting
                .split_once('=')
                .ok_or_else(|| EnvelopeError(format!("{setting:?} is not name=value")))?;
            match name {
                "replicas" => {
                    let n: u32 = v.parse().map_err(|_| {
                        EnvelopeError(format!("replicas={v:?} is not a whole number"))
                    })?;
                    if n == 0 || n > MAX_REPLICAS {
                        return Err(EnvelopeError(format!(
                            "replicas={n} is outside 1..={MAX_REPLICAS}"
                        )));
                    }
                    env.replicas = Some(n);
                }
                "role" => {
                    env.role = Some(match v {
                        "primary" => Role::Primary,
                        "secondary" => Role::Secondary,
                        _ => return Err(EnvelopeError(format!("unknown role {v:?}"))),
                    });
                }
                _ => return Err(EnvelopeError(format!("unknown setting {name:?}"))),
            }
        }
        Ok((env, &rest[end + 1..]))
    }

    /// The role an assignment key's value gives its holder, and the application's bytes: a
    /// value without an envelope (or one that does not parse) is a primary's, whole.
    pub fn role_of(value: &[u8]) -> (Role, &[u8]) {
        match Envelope::split(value) {
            Ok((env, payload)) => (env.role.unwrap_or(Role::Primary), payload),
            Err(_) => (Role::Primary, value),
        }
    }

    /// The value of a secondary's assignment key for an item of `payload`.
    pub fn secondary(payload: &[u8]) -> Bytes {
        Self::wrap("role=secondary", payload)
    }

    /// The value of an assignment key for `role`: the payload itself for a primary.
    pub fn for_role(role: Role, payload: &Bytes) -> Bytes {
        match role {
            Role::Primary => payload.clone(),
            Role::Secondary => Self::secondary(payload),
        }
    }

    /// A work item's value that asks for `replicas` replicas.
    pub fn with_replicas(replicas: u32, payload: &[u8]) -> Bytes {
        Self::wrap(&format!("replicas={replicas}"), payload)
    }

    /// Whether the value of an assignment key holds `payload` in `role`.
    pub fn holds(value: &[u8], role: Role, payload: &[u8]) -> bool {
        Self::role_of(value) == (role, payload)
    }

    fn wrap(header: &str, payload: &[u8]) -> Bytes {
        let mut v = Vec::with_capacity(ENVELOPE_MAGIC.len() + header.len() + 1 + payload.len());
        v.extend_from_slice(ENVELOPE_MAGIC);
        v.extend_from_slice(header.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(payload);
        Bytes::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_without_the_magic_are_untouched() {
        for v in [&b""[..], b"x", b"\0coordinato", b"{\"a\":1}\n"] {
            assert_eq!(Envelope::split(v).unwrap(), (Envelope::default(), v));
            assert_eq!(Envelope::role_of(v), (Role::Primary, v));
        }
    }

    #[test]
    fn round_trips_and_refusals() {
        let s = Envelope::secondary(b"a\nb");
        assert_eq!(Envelope::role_of(&s), (Role::Secondary, &b"a\nb"[..]));
        assert!(Envelope::holds(&s, Role::Secondary, b"a\nb"));
        assert!(!Envelope::holds(&s, Role::Primary, b"a\nb"));
        assert!(Envelope::holds(b"a", Role::Primary, b"a"));
        let r = Envelope::with_replicas(2, b"");
        assert_eq!(Envelope::split(&r).unwrap().0.replicas, Some(2));
        let both = b"\0coordinator:replicas=3,role=primary\nx";
        let (env, p) = Envelope::split(both).unwrap();
        assert_eq!(
            (env.replicas, env.role, p),
            (Some(3), Some(Role::Primary), &b"x"[..])
        );
        for bad in [
            &b"\0coordinator:replicas=0\n"[..],
            b"\0coordinator:replicas=17\n",
            b"\0coordinator:replicas=x\n",
            b"\0coordinator:role=boss\n",
            b"\0coordinator:colour=red\n",
            b"\0coordinator:replicas\n",
            b"\0coordinator:replicas=2",
        ] {
            let e = Envelope::split(bad).unwrap_err();
            assert!(e.to_string().starts_with("bad envelope"), "{e}");
            assert_eq!(Envelope::role_of(bad), (Role::Primary, bad));
        }
    }
}
