//! `token_mint` and `mint_open_topics`: who may ask `POST /token` for a token.

use std::fmt;

/// How `POST /token` answers callers (admin tokens always need `admin_key` besides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMint {
    /// Anyone may mint a token for any non-admin topic: Tangram's behaviour, the default.
    Open,
    /// `Authorization: Bearer <mint_key>` is needed, except for topics matching
    /// `mint_open_topics` (a backend mints for its users).
    Key,
    /// `POST /token` mints nothing: tokens come from the backend (the format is documented) or
    /// from `channel token`.
    Off,
}

impl TokenMint {
    /// Parses the configured word.
    pub fn parse(text: &str) -> Option<TokenMint> {
        match text.trim() {
            "open" => Some(TokenMint::Open),
            "key" => Some(TokenMint::Key),
            "off" => Some(TokenMint::Off),
            _ => None,
        }
    }

    /// The configured word.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenMint::Open => "open",
            TokenMint::Key => "key",
            TokenMint::Off => "off",
        }
    }
}

/// One entry of `mint_open_topics`: a topic (`system`), or a prefix ending in `*`
/// (`public:*` admits `public:news` and `public:` itself). `*` alone admits every topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
}

impl TopicPattern {
    /// Parses one entry: 1 to 255 bytes without control characters, `*` only at the end.
    pub fn parse(text: &str) -> Option<TopicPattern> {
        let body = text.strip_suffix('*').unwrap_or(text);
        let valid = !text.is_empty()
            && text.len() <= 255
            && !body.contains('*')
            && !text.chars().any(char::is_control);
        valid.then(|| TopicPattern {
            text: text.to_string(),
        })
    }

    /// Whether `topic` is admitted.
    pub fn matches(&self, topic: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => topic == self.text,
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_exactly_or_by_prefix() {
        let exact = TopicPattern::parse("system").expect("valid");
        assert!(exact.matches("system"));
        assert!(!exact.matches("system:x"));
        assert!(!exact.matches("System"));
        let prefix = TopicPattern::parse("public:*").expect("valid");
        assert!(prefix.matches("public:news"));
        assert!(prefix.matches("public:"));
        assert!(!prefix.matches("public"));
        assert!(!prefix.matches("private:news"));
        assert!(TopicPattern::parse("*").expect("valid").matches("anything"));
    }

    #[test]
    fn malformed_topic_patterns_are_refused() {
        for text in ["", "a*b", "**", "*x", "a\nb"] {
            assert_eq!(TopicPattern::parse(text), None, "{text:?}");
        }
        assert_eq!(TopicPattern::parse(&"x".repeat(256)), None);
    }

    #[test]
    fn token_mint_words_round_trip() {
        for mode in [TokenMint::Open, TokenMint::Key, TokenMint::Off] {
            assert_eq!(TokenMint::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(TokenMint::parse("closed"), None);
    }
}
