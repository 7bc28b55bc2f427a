//! The JSON shapes of presence: the stored entry, `presence_state` and `presence_diff`.
//!
//! Built with serde_json so that keys and refs are always escaped correctly; diffs are read and
//! merged without building JSON trees (metas are carried as raw text).

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::Presence;

/// `s` as a JSON string (quoted and escaped): how a presence key appears in a state or a diff.
pub fn to_json_string(s: &str) -> String {
    // Serialising a `str` cannot fail; the fallback only keeps the function total.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// The value stored in the members hash: `{"key": <id>, "meta": {"phx_ref", "online_at"}}`.
pub fn stored_entry(presence: &Presence) -> String {
    json!({ "key": presence.key, "meta": meta(presence) }).to_string()
}

fn meta(presence: &Presence) -> Value {
    json!({ "phx_ref": presence.phx_ref, "online_at": presence.online_at })
}

/// A diff with one join: `{"joins":{<key>:{"metas":[meta]}},"leaves":{}}`.
pub fn join_diff(presence: &Presence) -> String {
    json!({ "joins": one(presence), "leaves": {} }).to_string()
}

/// A diff with one leave: `{"joins":{},"leaves":{<key>:{"metas":[meta]}}}`.
pub fn leave_diff(presence: &Presence) -> String {
    json!({ "joins": {}, "leaves": one(presence) }).to_string()
}

fn one(presence: &Presence) -> Value {
    let mut map = Map::new();
    map.insert(presence.key.clone(), json!({ "metas": [meta(presence)] }));
    Value::Object(map)
}

/// A `presence_diff` payload, `{"joins":{key:{"metas":[…]}},"leaves":{…}}`, parsed without
/// building a tree: metas stay raw JSON text.
#[derive(Deserialize)]
pub struct DiffRef<'a> {
    /// The joins, in document order.
    #[serde(borrow, default)]
    pub joins: ByKey<'a>,
    /// The leaves, in document order.
    #[serde(borrow, default)]
    pub leaves: ByKey<'a>,
}

/// A diff side, `{key: {"metas": [...]}}`, as a list of `(key, metas)`.
#[derive(Default)]
pub struct ByKey<'a>(pub Vec<(String, Vec<&'a RawValue>)>);

#[derive(Deserialize)]
struct MetaList<'a> {
    #[serde(borrow)]
    metas: Vec<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ByKey<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = ByKey<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of {\"metas\": [...]} by key")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: MetaList<'de> = map.next_value()?;
                    out.push((key, value.metas));
                }
                Ok(ByKey(out))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// One `presence_diff` payload with the joins and the leaves of `diffs`, in order (those that do
/// not parse are skipped). Applying it (joins, then leaves, as phoenix.js does) gives the same
/// presences as applying them one by one, because a `phx_ref` joins at most once and leaves at
/// most once, after its join. Built by concatenation of the raw metas.
pub fn merge_diffs<'a>(diffs: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut joins: IndexMap<String, Vec<&'a RawValue>> = IndexMap::new();
    let mut leaves: IndexMap<String, Vec<&'a RawValue>> = IndexMap::new();
    let mut bytes = 0;
    for payload in diffs {
        let Ok(diff) = serde_json::from_slice::<DiffRef<'a>>(payload) else {
            continue;
        };
        bytes += payload.len();
        for (side, into) in [(diff.joins, &mut joins), (diff.leaves, &mut leaves)] {
            for (key, metas) in side.0 {
                into.entry(key).or_default().extend(metas);
            }
        }
    }
    let mut out = String::with_capacity(bytes + 32);
    for (name, side) in [("{\"joins\":{", &joins), ("},\"leaves\":{", &leaves)] {
        out.push_str(name);
        for (i, (key, metas)) in side.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&to_json_string(key));
            out.push_str(":{\"metas\":[");
            for (j, meta) in metas.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(meta.get());
            }
            out.push_str("]}");
        }
    }
    out.push_str("}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, r: &str) -> Presence {
        Presence::for_test(key, r)
    }

    #[test]
    fn join_and_leave_diffs_have_both_sides() {
        assert_eq!(
            join_diff(&p("u1", "r1")),
            r#"{"joins":{"u1":{"metas":[{"online_at":1700000000000,"phx_ref":"r1"}]}},"leaves":{}}"#
        );
        assert_eq!(
            leave_diff(&p("u1", "r1")),
            r#"{"joins":{},"leaves":{"u1":{"metas":[{"online_at":1700000000000,"phx_ref":"r1"}]}}}"#
        );
    }

    #[test]
    fn merged_diff_keeps_every_join_and_leave_in_order() {
        let a = br#"{"joins":{"u1":{"metas":[{"phx_ref":"a"}]}},"leaves":{}}"#;
        let b = br#"{"joins":{"u1":{"metas":[{"phx_ref":"b"}]}},"leaves":{}}"#;
        let c = br#"{"joins":{},"leaves":{"u1":{"metas":[{"phx_ref":"a"}]}}}"#;
        let d = br#"{"joins":{"q\"x":{"metas":[{"phx_ref":"d"}]}},"leaves":{}}"#;
        let merged = merge_diffs([&a[..], b, b"not json", c, d]);
        assert_eq!(
            merged,
            r#"{"joins":{"u1":{"metas":[{"phx_ref":"a"},{"phx_ref":"b"}]},"q\"x":{"metas":[{"phx_ref":"d"}]}},"leaves":{"u1":{"metas":[{"phx_ref":"a"}]}}}"#
        );
        assert_eq!(
            merge_diffs(std::iter::empty::<&[u8]>()),
            r#"{"joins":{},"leaves":{}}"#
        );
    }
}
