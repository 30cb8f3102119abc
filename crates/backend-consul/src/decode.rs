//! Decoding Consul's KV answers (`[{"Key": …, "Value": base64, …}, …]`).
//!
//! A recursive read is decoded in one pass straight into core entries: keys
//! are copied once out of the JSON text, values base64-decoded from it, the
//! other fields skipped, without an intermediate pair type (consulrs's
//! `KVPair` owns every string and converts the value twice). The same pass
//! takes the answer's [`Fingerprint`].

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use worker_core::{KvEntry, StoreError};

/// What tells two answers for one prefix apart: the number of keys, and the
/// highest and the sum of their `ModifyIndex`es. Every write under the prefix
/// gives the written key a `ModifyIndex` above all others (the highest grows);
/// a delete alone lowers the count; so an answer that holds other entries than
/// an earlier one (at a later index of the same store) has another fingerprint.
/// An index that goes backwards is handled before (the position is lost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    keys: usize,
    max_modify: u64,
    sum_modify: u64,
}

impl Fingerprint {
    fn add(&mut self, modify_index: u64) {
        self.keys += 1;
        self.max_modify = self.max_modify.max(modify_index);
        self.sum_modify = self.sum_modify.wrapping_add(modify_index);
    }

    /// The number of keys.
    pub(crate) fn keys(&self) -> usize {
        self.keys
    }
}

/// The entries of an answer under `prefix`, in the answer's order (Consul's:
/// by key), and its fingerprint.
/// An empty body (a 404) is no entry. `capacity` is a guess of the number of
/// entries (e.g. that of the previous answer).
pub(crate) fn entries(
    prefix: &str,
    body: &[u8],
    capacity: usize,
) -> Result<(Vec<KvEntry>, Fingerprint), StoreError> {
    if body.is_empty() {
        return Ok((Vec::new(), Fingerprint::default()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let (entries, fingerprint) = Entries { prefix, capacity }
        .deserialize(&mut de)
        .map_err(StoreError::protocol)?;
    de.end().map_err(StoreError::protocol)?;
    // Not sorted here: Consul answers in key order already, and a snapshot's
    // entries may come in any order (the core checks, and sorts if needed).
    Ok((entries, fingerprint))
}

/// One element of the answer; unknown fields are skipped.
///
/// Decoded by hand rather than derived: field names, keys and values are read
/// as raw bytes (`deserialize_bytes`), which spares `serde_json` a UTF-8
/// validation of each string (a key's is done by the core, which needs its
/// work id as text; a value is base64, checked by its decoding).
struct Pair {
    key: Key,
    value: Option<Value>,
    modify_index: u64,
    create_index: u64,
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pair;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a KV pair object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pair, A::Error> {
                let (mut key, mut value, mut modify_index) = (None, None, None);
                let mut create_index = 0;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Key => key = Some(map.next_value::<Key>()?),
                        Field::Value => value = map.next_value::<Option<Value>>()?,
                        Field::ModifyIndex => modify_index = Some(map.next_value::<u64>()?),
                        Field::CreateIndex => create_index = map.next_value::<u64>()?,
                        Field::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Pair {
                    key: key.ok_or_else(|| de::Error::missing_field("Key"))?,
                    value,
                    modify_index: modify_index
                        .ok_or_else(|| de::Error::missing_field("ModifyIndex"))?,
                    create_index,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// The fields of a pair this backend reads.
enum Field {
    Key,
    Value,
    ModifyIndex,
    CreateIndex,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Field, E> {
                Ok(match v {
                    b"Key" => Field::Key,
                    b"Value" => Field::Value,
                    b"ModifyIndex" => Field::ModifyIndex,
                    b"CreateIndex" => Field::CreateIndex,
                    _ => Field::Other,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A key, copied once out of the JSON text.
struct Key(Vec<u8>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(Key(v.to_vec()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A base64 value, decoded straight from the JSON text.
struct Value(Bytes);

/// Values whose base64 text is at most this long are decoded on the stack
/// and copied into an allocation of their exact size.
const STACK_B64: usize = 336;

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
                if v.len() <= STACK_B64 {
                    let mut buf = [0u8; STACK_B64 / 4 * 3];
                    let n = STANDARD.decode_slice(v, &mut buf).map_err(E::custom)?;
                    Ok(Value(Bytes::copy_from_slice(&buf[..n])))
                } else {
                    Ok(Value(STANDARD.decode(v).map_err(E::custom)?.into()))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The answer as a sequence of pairs, kept when under `prefix`.
struct Entries<'p> {
    prefix: &'p str,
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = (Vec<KvEntry>, Fingerprint);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = (Vec<KvEntry>, Fingerprint);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of KV pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(self.capacity));
        let mut fingerprint = Fingerprint::default();
        while let Some(pair) = seq.next_element::<Pair>()? {
            // Consul's recursive read is a plain string-prefix match, which is
            // what we want; this only guards against a server that answers
            // more than asked.
            if !pair.key.0.starts_with(self.prefix.as_bytes()) {
                continue;
            }
            fingerprint.add(pair.modify_index);
            entries.push(KvEntry {
                key: pair.key.0,
                value: pair.value.map_or_else(Bytes::new, |v| v.0),
                revision: pair.create_index,
            });
        }
        Ok((entries, fingerprint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pairs: &[(&str, Option<&str>, u64)]) -> Vec<u8> {
        let list: Vec<_> = pairs
            .iter()
            .map(|(k, v, m)| {
                serde_json::json!({
                    "LockIndex": 0, "Key": k, "Flags": 0,
                    "Value": v.map(|v| STANDARD.encode(v)),
                    "CreateIndex": 3, "ModifyIndex": m, "Session": "x"
                })
            })
            .collect();
        serde_json::to_vec(&list).unwrap()
    }

    #[test]
    fn answers_decode_into_entries_under_the_prefix() {
        let long = "v".repeat(1000);
        let body = answer(&[
            ("p/m1/a", Some(&long), 5),
            ("p/m1/b", Some("2"), 7),
            ("p/m1/c\"q", None, 6),
            ("p/m10/x", Some("no"), 9),
        ]);
        let (got, fp) = entries("p/m1/", &body, 0).unwrap();
        let keys: Vec<_> = got.iter().map(|e| e.key.clone()).collect();
        assert_eq!(
            keys,
            [
                b"p/m1/a".to_vec(),
                b"p/m1/b".to_vec(),
                b"p/m1/c\"q".to_vec()
            ]
        );
        assert_eq!(got[0].value, long.as_bytes());
        assert_eq!(got[1].value, &b"2"[..]);
        assert!(got[2].value.is_empty());
        assert_eq!(fp.keys(), 3);
        assert_eq!(entries("p/m1/", b"", 0).unwrap().0, []);
    }

    #[test]
    fn fingerprints_change_with_every_write_or_delete() {
        let fp = |pairs: &[(&str, Option<&str>, u64)]| entries("p/", &answer(pairs), 0).unwrap().1;
        let base = fp(&[("p/a", Some("1"), 5), ("p/b", Some("2"), 6)]);
        assert_eq!(base, fp(&[("p/a", Some("1"), 5), ("p/b", Some("2"), 6)]));
        // Rewrite, add, delete, delete + add in one transaction.
        assert_ne!(base, fp(&[("p/a", Some("3"), 7), ("p/b", Some("2"), 6)]));
        assert_ne!(
            base,
            fp(&[
                ("p/a", Some("1"), 5),
                ("p/b", Some("2"), 6),
                ("p/c", None, 7)
            ])
        );
        assert_ne!(base, fp(&[("p/a", Some("1"), 5)]));
        assert_ne!(base, fp(&[("p/a", Some("1"), 5), ("p/c", Some("2"), 7)]));
        // Foreign keys do not count.
        assert_eq!(
            base,
            fp(&[
                ("p/a", Some("1"), 5),
                ("p/b", Some("2"), 6),
                ("q/x", None, 9)
            ])
        );
    }

    #[test]
    fn bad_answers_are_protocol_errors() {
        for bad in [
            &br#"{"Key": "p/a"}"#[..],
            br#"[{"Key": "p/a", "Value": "!!"}]"#,
            br#"[{"Key": "p/a"}]"#,
            br#"[{"ModifyIndex": 1}]"#,
            br#"[{"Key": 1, "ModifyIndex": 1}]"#,
            br#"[{"Key": [1], "ModifyIndex": 1}]"#,
            br#"[{"Key": "p/a", "ModifyIndex": "1"}]"#,
            br#"[{"Key": "p/a", "Value": 5, "ModifyIndex": 1}]"#,
            br#"[["p/a", null, 1]]"#,
            b"[] x",
        ] {
            let err = entries("p/", bad, 0).unwrap_err();
            assert!(matches!(err, StoreError::Protocol(_)), "{err:?}");
        }
    }
}
