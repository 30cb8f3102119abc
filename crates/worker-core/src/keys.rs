//! Assignment keys: `<prefix><member_id>/<work_id>`.

use std::fmt;

use crate::error::ConfigError;

/// The longest accepted instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Checks an instance id: non-empty, no `/`, no control characters, at most
/// [`MAX_INSTANCE_ID_LEN`] bytes.
pub fn validate_instance_id(id: &str) -> Result<(), ConfigError> {
    let reason = if id.is_empty() {
        "must not be empty".to_owned()
    } else if id.len() > MAX_INSTANCE_ID_LEN {
        format!(
            "is {} bytes long, at most {MAX_INSTANCE_ID_LEN} are allowed",
            id.len()
        )
    } else if id.trim().is_empty() {
        format!("{id:?} is blank")
    } else if id == "." || id == ".." {
        format!("{id:?} is not a name (a path step in the member's keys)")
    } else if id.contains('/') {
        format!("{id:?} contains '/'")
    } else if id.chars().any(char::is_whitespace) {
        format!("{id:?} contains whitespace")
    } else if id.chars().any(char::is_control) {
        format!("{id:?} contains a control character")
    } else {
        return Ok(());
    };
    Err(ConfigError::new("instance_id", reason))
}

/// Why a key under a member's prefix is not an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignReason {
    /// The key is not under the member's prefix at all.
    OtherPrefix,
    /// Nothing follows the member prefix (`<prefix>m1/`).
    EmptyWorkId,
    /// More than one segment follows the member prefix (`<prefix>m1/a/b`).
    Nested,
    /// The work id is not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for ForeignReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OtherPrefix => "not under the member prefix",
            Self::EmptyWorkId => "empty work id",
            Self::Nested => "nested deeper than <member>/<work>",
            Self::NotUtf8 => "work id is not valid UTF-8",
        })
    }
}

/// Parses the keys of one member, by prefix stripping (no regex, so a prefix
/// with regex metacharacters such as `svc.a+b/(x)/` works as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentKeys {
    member_prefix: String,
}

impl AssignmentKeys {
    /// Keys of `instance_id` under `prefix`. The instance id is validated.
    pub fn new(prefix: &str, instance_id: &str) -> Result<Self, ConfigError> {
        validate_instance_id(instance_id)?;
        Ok(Self {
            member_prefix: format!("{prefix}{instance_id}/"),
        })
    }

    /// `<prefix><instance_id>/`: the prefix to list and watch (with its trailing
    /// slash, so that `m1` does not see `m10`).
    pub fn member_prefix(&self) -> &str {
        &self.member_prefix
    }

    /// The work id of `key`, or why the key is not an assignment of this member.
    pub fn parse<'k>(&self, key: &'k [u8]) -> Result<&'k str, ForeignReason> {
        let rest = key
            .strip_prefix(self.member_prefix.as_bytes())
            .ok_or(ForeignReason::OtherPrefix)?;
        if rest.is_empty() {
            return Err(ForeignReason::EmptyWorkId);
        }
        if rest.contains(&b'/') {
            return Err(ForeignReason::Nested);
        }
        std::str::from_utf8(rest).map_err(|_| ForeignReason::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(validate_instance_id("m1").is_ok());
        assert!(validate_instance_id("Ünïcode-ok").is_ok());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("a/b").is_err());
        assert!(validate_instance_id("a\nb").is_err());
        assert!(validate_instance_id("a\u{7f}").is_err());
        assert!(validate_instance_id(&"x".repeat(128)).is_ok());
        let e = validate_instance_id(&"x".repeat(10_000)).unwrap_err();
        assert_eq!(e.field, "instance_id");
        assert!(e.to_string().contains("10000 bytes"), "{e}");
    }

    #[test]
    fn member_m1_ignores_m10() {
        let k = AssignmentKeys::new("p/", "m1").unwrap();
        assert_eq!(k.member_prefix(), "p/m1/");
        assert_eq!(k.parse(b"p/m1/w1"), Ok("w1"));
        assert_eq!(k.parse(b"p/m10/w1"), Err(ForeignReason::OtherPrefix));
        assert_eq!(k.parse(b"p/m1"), Err(ForeignReason::OtherPrefix));
    }

    #[test]
    fn bad_shapes_are_foreign() {
        let k = AssignmentKeys::new("p/", "m1").unwrap();
        assert_eq!(k.parse(b"p/m1/"), Err(ForeignReason::EmptyWorkId));
        assert_eq!(k.parse(b"p/m1/a/b"), Err(ForeignReason::Nested));
        assert_eq!(k.parse(b"p/m1/a/"), Err(ForeignReason::Nested));
        assert_eq!(k.parse(b"p/m1/\xff\xfe"), Err(ForeignReason::NotUtf8));
        assert_eq!(k.parse("p/m1/a b%20ü".as_bytes()), Ok("a b%20ü"));
    }

    #[test]
    fn regex_metacharacters_in_prefix() {
        let k = AssignmentKeys::new("svc.a+b/(x)/", "m1").unwrap();
        assert_eq!(k.parse(b"svc.a+b/(x)/m1/w"), Ok("w"));
        assert_eq!(
            k.parse(b"svcXaab/(x)/m1/w"),
            Err(ForeignReason::OtherPrefix)
        );
        assert_eq!(k.parse(b"svc.a+b/x/m1/w"), Err(ForeignReason::OtherPrefix));
    }
}
