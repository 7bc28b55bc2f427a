//! The JSON shapes of presence: the stored entry, `presence_state` and `presence_diff`.
//!
//! Built with serde_json so that keys and refs are always escaped correctly.

use serde_json::{json, Map, Value};

use super::Presence;

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

/// A stored entry, borrowed: the meta stays raw JSON text, never parsed into a tree.
#[derive(serde::Deserialize)]
struct StoredEntry<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    meta: &'a serde_json::value::RawValue,
}

/// `presence_state` from the stored entries (values of the members hash), grouped by key:
/// `{<key>: {"metas": [...]}}`. Entries that do not parse are skipped. Built by concatenation
/// of the stored metas (this runs once per join over every member of the topic).
pub fn state_from_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut by_key: Vec<(std::borrow::Cow<'a, str>, Vec<&'a str>)> = Vec::new();
    let mut index: std::collections::HashMap<std::borrow::Cow<'a, str>, usize> =
        std::collections::HashMap::new();
    for raw in entries {
        let Ok(entry) = serde_json::from_slice::<StoredEntry<'a>>(raw) else {
            continue;
        };
        match index.get(&entry.key) {
            Some(&i) => by_key[i].1.push(entry.meta.get()),
            None => {
                index.insert(entry.key.clone(), by_key.len());
                by_key.push((entry.key, vec![entry.meta.get()]));
            }
        }
    }
    let mut out = String::with_capacity(2 + by_key.len() * 96);
    out.push('{');
    for (i, (key, metas)) in by_key.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.to_string()).to_string());
        out.push_str(":{\"metas\":[");
        for (j, meta) in metas.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(meta);
        }
        out.push_str("]}");
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, r: &str) -> Presence {
        Presence {
            key: key.into(),
            phx_ref: r.into(),
            online_at: 1_700_000_000_000,
        }
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
    fn one_key_on_two_sockets_is_one_key_with_two_metas() {
        let a = stored_entry(&p("u1", "r1"));
        let b = stored_entry(&p("u1", "r2"));
        let c = stored_entry(&p("u2", "r3"));
        let state = state_from_entries([a.as_bytes(), b.as_bytes(), c.as_bytes(), b"junk"]);
        let state: Value = serde_json::from_str(&state).unwrap();
        assert_eq!(state["u1"]["metas"].as_array().unwrap().len(), 2);
        assert_eq!(state["u2"]["metas"][0]["phx_ref"], "r3");
    }

    #[test]
    fn state_escapes_keys_and_keeps_metas_verbatim() {
        let odd = stored_entry(&p("a\"b\\c", "r1"));
        let state = state_from_entries([odd.as_bytes()]);
        assert_eq!(
            state,
            r#"{"a\"b\\c":{"metas":[{"online_at":1700000000000,"phx_ref":"r1"}]}}"#
        );
        assert_eq!(state_from_entries(std::iter::empty::<&[u8]>()), "{}");
    }
}
