//! Property-based fuzzing of configuration parsing: durations, TOML configs and
//! environment configs never panic, and errors name the setting.
//!
//! CI runs 10,000 cases per property; set `PROPTEST_CASES` for a longer run.

use coordinator::config::{parse_duration, split_endpoints};
use coordinator::Config;
use std::fmt::Write as _;

use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ./+()-]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("[\"http://127.0.0.1:1\"]".to_owned()),
        "[0-9]{1,4}(ms|s|m|h|x|)".prop_map(|s| format!("{s:?}")),
    ]
}

fn toml_doc() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("backend"),
        Just("endpoints"),
        Just("instance_id"),
        Just("prefix"),
        Just("leader"),
        Just("soak"),
        Just("max_soak"),
        Just("leader_settle"),
        Just("token_file"),
        Just("ca_cert"),
        Just("client_cert"),
        Just("client_key"),
        Just("user"),
        Just("password_file"),
        Just("bogus"),
    ];
    proptest::collection::vec((field, toml_value()), 0..8).prop_map(|kv| {
        let mut seen = std::collections::HashSet::new();
        let mut doc = String::new();
        for (k, v) in kv.into_iter().filter(|(k, _)| seen.insert(*k)) {
            let _ = writeln!(doc, "{k} = {v}");
        }
        doc
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn durations_parse_or_explain(s in "\\PC{0,12}") {
        if let Err(e) = parse_duration(&s) {
            prop_assert!(e.contains("invalid duration") || e.contains("is negative"), "{e}");
        }
    }

    #[test]
    fn toml_configs_never_panic(doc in toml_doc()) {
        if let Ok(c) = toml::from_str::<Config>(&doc) {
            if let Err(e) = c.validate() {
                prop_assert!(!e.field.is_empty());
                prop_assert!(!e.reason.is_empty());
            }
        }
    }

    #[test]
    fn env_configs_never_panic(
        backend in "(consul|etcd|memory|zk|)",
        soak in "\\PC{0,8}",
        endpoints in "\\PC{0,30}",
        id in "\\PC{0,20}",
    ) {
        let vars = [
            ("COORDINATOR_BACKEND", backend),
            ("COORDINATOR_SOAK", soak),
            ("COORDINATOR_ENDPOINTS", endpoints.clone()),
            ("COORDINATOR_INSTANCE_ID", id),
        ];
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        if let Err(e) = Config::from_vars(get) {
            prop_assert!(!e.to_string().is_empty());
        }
        for e in split_endpoints(&endpoints) {
            prop_assert!(!e.is_empty() && !e.contains(','));
        }
    }
}
