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

/// `presence_state` from the stored entries (values of the members hash), grouped by key:
/// `{<key>: {"metas": [...]}}`. Entries that do not parse are skipped.
pub fn state_from_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut state = Map::new();
    for raw in entries {
        let Ok(Value::Object(mut entry)) = serde_json::from_slice::<Value>(raw) else {
            continue;
        };
        let (Some(Value::String(key)), Some(meta)) = (entry.remove("key"), entry.remove("meta"))
        else {
            continue;
        };
        let slot = state.entry(key).or_insert_with(|| json!({ "metas": [] }));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(meta);
        }
    }
    Value::Object(state).to_string()
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
}
