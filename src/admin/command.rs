//! What an admin push asks ([`Command`]), read from its event and payload, or why it cannot
//! be asked. docs/operations.md "The `admin` channel" lists every command.
//!
//! What it must never do: carry out a command (the shard and the broker do), or accept a
//! topic or event no client could join or be sent.

use serde_json::Value;

use crate::broker::admin_queries::AdminQuery;
use crate::protocol::names::{is_valid_topic, MAX_TOPIC_BYTES, RESERVED_EVENTS};
use crate::protocol::Payload;

/// The most messages one `history` command returns.
pub const MAX_HISTORY_LIMIT: u64 = 1000;
/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A question only Redis can answer for the whole deployment (`list`, `disconnect`,
    /// `presence`, `client`, `history`).
    Ask(AdminQuery),
    /// `tail {"topic"}`: send me the topic's messages as `message` events; `{"topic": null}`
    /// stops.
    Tail(Option<String>),
    /// `publish {"topic", "event", "payload"}`: a downstream message to every subscriber of
    /// the topic in the deployment, as if a backend had published it.
    Publish {
        /// The topic.
        topic: String,
        /// The event.
        event: String,
        /// The payload, JSON text.
        payload: String,
    },
    /// `token`: a fresh short-lived admin token for this admin (the console renews its own).
    RenewToken,
}

/// What an admin push asks, or why it cannot be asked.
pub fn parse_command(event: &str, payload: &Payload<'_>) -> Result<Command, &'static str> {
    let object = json_object(payload);
    let text = |name: &str| -> Option<String> {
        let value = object.as_ref()?.get(name)?.as_str()?;
        (!value.is_empty()).then(|| value.to_owned())
    };
    match event {
        "list" => Ok(Command::Ask(AdminQuery::Topics)),
        "disconnect" => text("id")
            .map(|id| Command::Ask(AdminQuery::Disconnect(id)))
            .ok_or("disconnect needs {\"id\": \"<client id>\"}"),
        "presence" => text("topic")
            .filter(|t| is_valid_topic(t))
            .map(|topic| Command::Ask(AdminQuery::Presence(topic)))
            .ok_or("presence needs {\"topic\": \"<topic>\"}"),
        "client" => text("id")
            .map(|id| Command::Ask(AdminQuery::Client(id)))
            .ok_or("client needs {\"id\": \"<client id>\"}"),
        "tail" => match object.as_ref().and_then(|o| o.get("topic")) {
            None | Some(Value::Null) => Ok(Command::Tail(None)),
            Some(Value::String(topic)) if is_valid_topic(topic) => {
                Ok(Command::Tail(Some(topic.clone())))
            }
            Some(_) => Err("tail needs {\"topic\": \"<topic>\"} or {\"topic\": null}"),
        },
        "publish" => {
            let shape = "publish needs {\"topic\", \"event\", \"payload\"}: a joinable topic, \
                         an event without ':' that is not a phx_/presence_ event";
            let topic = text("topic").filter(|t| is_valid_topic(t)).ok_or(shape)?;
            let event = text("event").filter(|e| is_valid_event(e)).ok_or(shape)?;
            let payload = object
                .as_ref()
                .and_then(|o| o.get("payload"))
                .map_or_else(|| "{}".to_owned(), Value::to_string);
            Ok(Command::Publish {
                topic,
                event,
                payload,
            })
        }
        "token" => Ok(Command::RenewToken),
        "history" => {
            let shape = "history needs {\"topic\": \"<topic>\", \"limit\": <1..=1000, default 10>}";
            let topic = text("topic").filter(|t| is_valid_topic(t)).ok_or(shape)?;
            let limit = match object.as_ref().and_then(|o| o.get("limit")) {
                None => 10,
                Some(limit) => limit
                    .as_u64()
                    .filter(|l| (1..=MAX_HISTORY_LIMIT).contains(l))
                    .ok_or(shape)?,
            };
            Ok(Command::Ask(AdminQuery::History { topic, limit }))
        }
        _ => Err("unknown admin command"),
    }
}

fn json_object(payload: &Payload<'_>) -> Option<serde_json::Map<String, Value>> {
    let Payload::Json(text) = payload else {
        return None;
    };
    match serde_json::from_str(text).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// Events a backend could publish: the Redis channel `to:<topic>:<event>` splits at the last
/// `:`, so an event has none; the server's own events are refused.
fn is_valid_event(event: &str) -> bool {
    !event.is_empty()
        && event.len() <= MAX_TOPIC_BYTES
        && !event.contains(':')
        && !event.chars().any(char::is_control)
        && !RESERVED_EVENTS.contains(&event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(event: &str, payload: &str) -> Result<Command, &'static str> {
        parse_command(event, &Payload::Json(payload))
    }

    #[test]
    fn commands_are_parsed_with_a_reason_when_malformed() {
        assert_eq!(parse("list", "{}"), Ok(Command::Ask(AdminQuery::Topics)));
        assert_eq!(
            parse("disconnect", r#"{"id":"ada"}"#),
            Ok(Command::Ask(AdminQuery::Disconnect("ada".into())))
        );
        assert!(parse("disconnect", r#"{"id":""}"#).is_err());
        assert_eq!(
            parse("presence", r#"{"topic":"room:1"}"#),
            Ok(Command::Ask(AdminQuery::Presence("room:1".into())))
        );
        assert!(parse("presence", r#"{"topic":"phoenix"}"#).is_err());
        assert_eq!(
            parse("client", r#"{"id":"ada"}"#),
            Ok(Command::Ask(AdminQuery::Client("ada".into())))
        );
        assert_eq!(parse("token", "{}"), Ok(Command::RenewToken));
        assert_eq!(parse("reboot", "{}"), Err("unknown admin command"));
    }

    #[test]
    fn history_takes_a_topic_and_a_bounded_limit() {
        assert_eq!(
            parse("history", r#"{"topic":"room:1","limit":3}"#),
            Ok(Command::Ask(AdminQuery::History {
                topic: "room:1".into(),
                limit: 3
            }))
        );
        assert_eq!(
            parse("history", r#"{"topic":"room:1"}"#),
            Ok(Command::Ask(AdminQuery::History {
                topic: "room:1".into(),
                limit: 10
            }))
        );
        for bad in [
            r#"{"topic":""}"#,
            r#"{"limit":3}"#,
            r#"{"topic":"t","limit":0}"#,
            r#"{"topic":"t","limit":1001}"#,
        ] {
            assert!(parse("history", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tail_takes_a_topic_or_null_to_stop() {
        assert_eq!(
            parse("tail", r#"{"topic":"room:1"}"#),
            Ok(Command::Tail(Some("room:1".into())))
        );
        assert_eq!(parse("tail", r#"{"topic":null}"#), Ok(Command::Tail(None)));
        assert_eq!(parse("tail", "{}"), Ok(Command::Tail(None)));
        assert!(parse("tail", r#"{"topic":7}"#).is_err());
    }

    #[test]
    fn publish_refuses_events_a_backend_could_not_publish() {
        assert_eq!(
            parse(
                "publish",
                r#"{"topic":"a:b","event":"news","payload":{"n":1}}"#
            ),
            Ok(Command::Publish {
                topic: "a:b".into(),
                event: "news".into(),
                payload: r#"{"n":1}"#.into(),
            })
        );
        for event in ["a:b", "", "phx_reply", "presence_diff"] {
            let payload = serde_json::json!({"topic": "t", "event": event}).to_string();
            assert!(parse("publish", &payload).is_err(), "{event:?}");
        }
    }
}
