//! The primary phase alone (no port caps, no repair) against brute force over every
//! primary choice meeting the primary balance: the least (cold, changed) is reached.
use super::*;
use proptest::prelude::*;

fn balanced(c: usize, n: usize, w: u32, total: u128) -> bool {
    (c as u128 * total).abs_diff(n as u128 * u128::from(w)) < total
}

type Spec = (
    Vec<Option<u32>>,
    Vec<Option<u32>>,
    Vec<(Option<usize>, Vec<usize>)>,
);

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(prop::option::weighted(0.85, 0u32..=2), 4),
        prop::collection::vec(prop::option::weighted(0.8, 1u32..=3), 6),
        prop::collection::vec(
            (
                prop::option::weighted(0.7, 0usize..5),
                prop::collection::vec(0usize..5, 0..3),
            ),
            6,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]
    #[test]
    fn min_cost_primaries((ws, ns, cur) in spec()) {
        let name = |i: usize| -> MemberId { Arc::from(format!("m{i}")) };
        let members: BTreeMap<MemberId, ReplicaMember> = ws
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| (name(i), ReplicaMember::new(w, None))))
            .collect();
        let items: BTreeMap<WorkId, u32> = ns
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|r| (Arc::from(format!("w{i}")), r)))
            .collect();
        let current: ReplicaAssignment = cur
            .iter()
            .enumerate()
            .map(|(i, (p, s))| {
                let r = Replicas {
                    primary: p.map(name),
                    secondaries: s.iter().map(|&m| name(m)).collect(),
                };
                (Arc::from(format!("w{i}")), r)
            })
            .collect();
        let opts = Opts { ports: false, repair: false };
        let p = plan_with(&items, &members, &current, opts);
        let elig: Vec<&MemberId> =
            members.iter().filter(|(_, m)| m.weight > 0).map(|(k, _)| k).collect();
        prop_assume!(!elig.is_empty());
        let total: u128 = members.values().map(|m| u128::from(m.weight)).sum();
        let keys: Vec<&WorkId> = items.keys().collect();
        let n = keys.len();
        let cost = |x: usize, m: &MemberId| {
            let r = current.get(keys[x]);
            let live: Vec<&MemberId> = r
                .map(|r| r.primary.iter().chain(&r.secondaries).filter(|o| elig.contains(o)).collect())
                .unwrap_or_default();
            let cold = usize::from(!live.is_empty() && !live.contains(&m));
            let changed = usize::from(r.and_then(|r| r.primary.as_ref()).is_some_and(|o| o != m));
            (cold, changed)
        };
        let mut best = (usize::MAX, usize::MAX);
        for mut code in 0..elig.len().pow(n as u32) {
            let mut counts = vec![0; elig.len()];
            let mut c = (0, 0);
            for x in 0..n {
                let i = code % elig.len();
                code /= elig.len();
                counts[i] += 1;
                let d = cost(x, elig[i]);
                c = (c.0 + d.0, c.1 + d.1);
            }
            if (0..elig.len()).all(|i| balanced(counts[i], n, members[elig[i]].weight, total)) {
                best = best.min(c);
            }
        }
        prop_assert_eq!((p.cold_primaries, p.primaries_changed), best);
    }
}
