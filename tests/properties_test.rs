//! Property tests of two rules the whole bridge rests on:
//!
//! - Redis names: `to:<topic>:<event>` splits at the **last** `:` (topics may contain `:`,
//!   events may not), and the upstream name `from:<topic>:<event>` is built so that the same
//!   split takes it apart again (docs/protocol.md "Topics and events").
//! - Tokens: a token minted for channel X opens X and nothing else, however close the other
//!   name is (docs/protocol.md "Joins": tokens are tied to their channel).

use channel::auth::{AuthError, Reason, TokenAuthority};
use channel::broker::naming::{split_downstream, upstream_channel};
use proptest::prelude::*;

/// A topic as backends and browsers make them: segments joined by `:`, possibly empty
/// segments (`a::b`, a leading or trailing `:`), ASCII or not.
fn topic() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => "[a-z0-9_.-]{0,8}",
        1 => "\\PC{0,6}",
        1 => any::<String>().prop_map(|s| s.chars().take(6).collect::<String>()),
    ];
    prop::collection::vec(segment, 1..6)
        .prop_map(|segments| segments.join(":"))
        .prop_filter("a topic is not empty", |t| !t.is_empty())
}

/// An event: anything non-empty without `:`.
fn event() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_.-]{1,12}",
        1 => any::<String>(),
    ]
    .prop_map(|e| e.replace(':', ""))
    .prop_filter("an event is not empty", |e| !e.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn downstream_name_splits_into_its_topic_and_event(topic in topic(), event in event()) {
        let name = format!("to:{topic}:{event}");
        prop_assert_eq!(
            split_downstream(name.as_bytes()),
            Some((topic.as_str(), event.as_str())),
            "name {:?}", name
        );
    }

    #[test]
    fn upstream_name_splits_back_like_a_downstream_one(topic in topic(), event in event()) {
        let upstream = upstream_channel(&topic, &event);
        prop_assert_eq!(&upstream, &format!("from:{topic}:{event}"));
        let as_downstream = format!("to:{}", &upstream["from:".len()..]);
        prop_assert_eq!(
            split_downstream(as_downstream.as_bytes()),
            Some((topic.as_str(), event.as_str()))
        );
    }

    #[test]
    fn downstream_name_without_an_event_has_no_receiver(topic in topic()) {
        // `to:<topic>:` (empty event) and `to:<colon-free topic>` (no event at all).
        let trailing = format!("to:{topic}:");
        prop_assert_eq!(split_downstream(trailing.as_bytes()), None);
        let colon_free = topic.replace(':', "");
        let bare = format!("to:{colon_free}");
        prop_assert_eq!(split_downstream(bare.as_bytes()), None);
    }

    #[test]
    fn name_without_the_to_prefix_has_no_receiver(
        prefix in "[a-z]{0,4}",
        topic in topic(),
        event in event(),
    ) {
        prop_assume!(prefix != "to");
        let name = format!("{prefix}:{topic}:{event}");
        prop_assert_eq!(split_downstream(name.as_bytes()), None);
    }

    #[test]
    fn any_split_is_exactly_the_name(name in prop::collection::vec(any::<u8>(), 0..64)) {
        // Arbitrary bytes never panic, and whatever is accepted re-joins to the same name.
        let mut name = name;
        if name.len() % 2 == 0 {
            name = [&b"to:"[..], &name].concat();
        }
        if let Some((topic, event)) = split_downstream(&name) {
            prop_assert!(!topic.is_empty() && !event.is_empty());
            prop_assert!(!event.contains(':'));
            let rejoined = format!("to:{topic}:{event}");
            prop_assert_eq!(rejoined.as_bytes(), &name[..]);
        }
    }
}

/// A channel name close to `x`: the confusions a lax comparison would let through.
fn near_miss(x: String) -> impl Strategy<Value = (String, String)> {
    let upper = x.to_uppercase();
    let lower = x.to_lowercase();
    let candidates = vec![
        format!("{x} "),
        format!(" {x}"),
        format!("{x}:"),
        format!("{x}:sub"),
        format!("{x}*"),
        format!("{x}\0"),
        format!("{x}\u{301}"),
        x.chars().rev().collect::<String>(),
        x.chars().skip(1).collect::<String>(),
        x.chars()
            .take(x.chars().count().saturating_sub(1))
            .collect::<String>(),
        upper,
        lower,
        String::new(),
        "*".to_string(),
        "admin".to_string(),
    ];
    (Just(x), prop::sample::select(candidates))
}

/// A channel X and a channel Y ≠ X: arbitrary, or a near miss of X.
fn two_channels() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (topic(), topic()),
        topic().prop_flat_map(near_miss),
        Just(("admin".to_string(), "Admin".to_string())),
        Just(("admin".to_string(), "admin ".to_string())),
        Just(("caf\u{e9}".to_string(), "cafe\u{301}".to_string())),
    ]
    .prop_filter("the channels differ", |(x, y)| x != y)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn token_for_one_channel_never_admits_to_another(
        (x, y) in two_channels(),
        id in "\\PC{0,16}",
    ) {
        let authority = TokenAuthority::new("property-test-secret-0123456789", 3600);
        let token = authority.mint(&x, &id).expect("HS256 minting of string claims works");
        match authority.verify_for_channel(&token, &y) {
            Err(AuthError::Unauthorized(Reason::WrongChannel { claimed, topic })) => {
                prop_assert_eq!(claimed, x.clone());
                prop_assert_eq!(topic, y.clone());
            }
            other => prop_assert!(
                false,
                "a token for {:?} was answered {:?} for {:?}", x, other, y
            ),
        }
        // ... and it does open its own channel, with its identity.
        let claims = authority
            .verify_for_channel(&token, &x)
            .map_err(|e| TestCaseError::fail(format!("own channel {x:?} refused: {e}")))?;
        prop_assert_eq!(claims.channel, x);
        prop_assert_eq!(claims.id, id);
    }

    #[test]
    fn token_of_another_secret_admits_nowhere(x in topic(), id in "[a-z0-9]{1,8}") {
        let ours = TokenAuthority::new("property-test-secret-0123456789", 3600);
        let theirs = TokenAuthority::new("property-test-secret-0123456788", 3600);
        let token = theirs.mint(&x, &id).expect("HS256 minting of string claims works");
        prop_assert_eq!(
            ours.verify_for_channel(&token, &x),
            Err(AuthError::Unauthorized(Reason::BadSignature))
        );
    }
}
