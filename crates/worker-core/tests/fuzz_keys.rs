//! Property-based fuzzing of the key parser and instance-id validation.
//!
//! CI runs 10,000 cases per property; set `PROPTEST_CASES` for a longer run
//! (see docs/operations.md for the last long run).

use proptest::prelude::*;
use worker_core::{validate_instance_id, AssignmentKeys, ForeignReason};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Bytes biased towards the characters that matter: `/`, the member id, prefix bits.
fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"p/".to_vec()),
        Just(b"m1".to_vec()),
        Just(b"m10".to_vec()),
        Just(b"/".to_vec()),
        Just(b"%2F".to_vec()),
        Just(" ".as_bytes().to_vec()),
        Just("ü".as_bytes().to_vec()),
        Just(vec![0xff]),
        Just(vec![0]),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn parser_never_panics_and_accepts_only_own_single_segments(key in key_bytes()) {
        let keys = AssignmentKeys::new("p/", "m1").unwrap();
        match keys.parse(&key) {
            Ok(id) => {
                prop_assert!(!id.is_empty());
                prop_assert!(!id.contains('/'));
                let mut rebuilt = b"p/m1/".to_vec();
                rebuilt.extend_from_slice(id.as_bytes());
                prop_assert_eq!(rebuilt, key);
            }
            Err(ForeignReason::OtherPrefix) => prop_assert!(!key.starts_with(b"p/m1/")),
            Err(ForeignReason::EmptyWorkId) => prop_assert_eq!(&key[..], b"p/m1/"),
            Err(ForeignReason::Nested) => prop_assert!(key[5..].contains(&b'/')),
            Err(ForeignReason::NotUtf8) => prop_assert!(std::str::from_utf8(&key[5..]).is_err()),
        }
    }

    #[test]
    fn any_prefix_and_valid_id_round_trip(prefix in ".{0,20}", id in "[^/\\p{Cc}\\s]{1,40}", work in "[^/]{1,40}") {
        prop_assume!(id.len() <= 128 && id != "." && id != "..");
        let keys = AssignmentKeys::new(&prefix, &id).unwrap();
        let key = format!("{prefix}{id}/{work}");
        prop_assert_eq!(keys.parse(key.as_bytes()), Ok(work.as_str()));
        // A longer member id sharing the prefix is never ours.
        let other = format!("{prefix}{id}0/{work}");
        prop_assert!(keys.parse(other.as_bytes()).is_err());
    }

    #[test]
    fn instance_id_validation_matches_the_rules(id in any::<String>()) {
        let ok = validate_instance_id(&id).is_ok();
        let rules = !id.is_empty()
            && id.len() <= 128
            && id != "."
            && id != ".."
            && !id.contains('/')
            && !id.chars().any(char::is_whitespace)
            && !id.chars().any(char::is_control);
        prop_assert_eq!(ok, rules);
    }
}
