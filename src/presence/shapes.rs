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
}
