//! Channel-bound JSON Web Tokens: minting them (`POST /token`, `channel token`) and verifying
//! them (the upgrade's `userToken`, every `phx_join`).
//!
//! What this module owns: the claims (`id`, `channel`, `iat`, `exp`), the algorithm (HS256 only),
//! the clock leeway, and the rule that a token opens exactly the channel named in it (the defect
//! of the implementation we replace was that any token opened any channel, `admin` included).
//! What it must never do: block or allocate more than a token's worth: verification runs on the
//! shards, once per join, with keys and validation rules built once.

mod endpoint;

pub use endpoint::{
    handle_token_request, TokenRequest, TokenResponse, MAX_CHANNEL_LEN, MAX_ID_LEN,
};

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distr::Alphanumeric;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// The channel whose tokens only an operator may mint (docs/protocol.md, "Tokens" and "Presence and the built-in channels").
pub const ADMIN_CHANNEL: &str = "admin";

/// Clock skew tolerated on `exp` and `nbf`, in seconds: enough for two hosts with NTP, short enough that
/// an expired token is dead for practical purposes.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// What a token says. `id` is the client's identity (the presence key); `channel` is the only
/// topic the token opens.
///
/// The time claims are typed here, not left to the JWT library: each must be a JSON integer
/// from 0 to 2^64-1 where it appears, so a string, a float, a negative number or `null` makes
/// the token malformed (refused `unauthorized`) instead of "absent" (CVE-2026-25537 was a
/// library treating a mistyped `nbf`/`exp` as absent). docs/protocol.md "Tokens" has the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub id: String,
    pub channel: String,
    /// Issued at, Unix seconds. Required: every token we mint carries it, so a token without
    /// it was not made by us or by `channel token`. Not compared with the clock (a backend
    /// minting on a host whose clock runs ahead must not see its fresh tokens refused).
    pub iat: u64,
    /// Expiry, Unix seconds. Required; checked with [`EXP_LEEWAY_SECS`] of leeway.
    pub exp: u64,
    /// Not before, Unix seconds. Optional (we never mint it); when present it must be an
    /// integer and the token is refused until then (with the same leeway).
    #[serde(
        default,
        deserialize_with = "present_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<u64>,
}

/// An optional claim that, when present, must be an integer: `"nbf": null` is as malformed as
/// `"nbf": "soon"` (serde's plain `Option` would read `null` as absent).
fn present_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

/// Why a token was refused, for the logs. Clients only ever see "unauthorized".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not three base64url parts of JSON, or claims missing / of the wrong type.
    Malformed(String),
    /// The signature does not match our secret (or the algorithm is not HS256).
    BadSignature,
    /// `exp` is in the past (beyond [`EXP_LEEWAY_SECS`]).
    Expired,
    /// `nbf` is in the future (beyond [`EXP_LEEWAY_SECS`]).
    NotYetValid,
    /// A valid token for another channel.
    WrongChannel { claimed: String, topic: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Malformed(why) => write!(f, "malformed token: {why}"),
            Reason::BadSignature => f.write_str("bad signature"),
            Reason::Expired => f.write_str("token expired"),
            Reason::NotYetValid => f.write_str("token not valid yet (nbf)"),
            Reason::WrongChannel { claimed, topic } => {
                write!(f, "token is for channel {claimed:?}, not {topic:?}")
            }
        }
    }
}

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token does not open what was asked. Reply `unauthorized`; log the reason.
    #[error("unauthorized: {0}")]
    Unauthorized(Reason),
    /// Signing failed (should not happen with HS256 and serialisable claims).
    #[error("cannot mint token: {0}")]
    Mint(String),
}

/// Mints and verifies tokens with one HS256 secret. Build it once at start-up and share it
/// (`Arc`) with every shard: keys and validation rules are precomputed here.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    header: Header,
    expiration_secs: u64,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("secret", &"<redacted>")
            .field("expiration_secs", &self.expiration_secs)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenAuthority {
    /// An authority signing with `secret` (pass [`Secret::expose`]), minting tokens valid for
    /// `expiration_secs`.
    pub fn new(secret: &str, expiration_secs: u64) -> Self {
        let key = secret.as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_exp = true;
        // A present `nbf` is honoured; `Claims` makes a mistyped one malformed.
        validation.validate_nbf = true;
        // Our tokens carry no audience; a foreign `aud` does not make a token we signed invalid.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        TokenAuthority {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            header: Header::new(Algorithm::HS256),
            expiration_secs,
        }
    }

    /// A token for `id` on `channel`, valid from now for the configured lifetime.
    pub fn mint(&self, channel: &str, id: &str) -> Result<String, AuthError> {
        let iat = now_secs();
        self.mint_claims(&Claims {
            id: id.to_string(),
            channel: channel.to_string(),
            iat,
            exp: iat.saturating_add(self.expiration_secs),
            nbf: None,
        })
    }

    /// A token for `id` on `channel` valid for `lifetime_secs` from now, whatever the configured
    /// lifetime (the console's short-lived admin tokens).
    pub fn mint_for(
        &self,
        channel: &str,
        id: &str,
        lifetime_secs: u64,
    ) -> Result<String, AuthError> {
        let iat = now_secs();
        self.mint_claims(&Claims {
            id: id.to_string(),
            channel: channel.to_string(),
            iat,
            exp: iat.saturating_add(lifetime_secs),
            nbf: None,
        })
    }

    /// Signs arbitrary claims (tests and tools that need a given `iat`/`exp`).
    pub fn mint_claims(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&self.header, claims, &self.encoding)
            .map_err(|e| AuthError::Mint(e.to_string()))
    }

    /// Verifies signature and expiry, without looking at the channel: for the socket-level
    /// `userToken`, which identifies the client but opens no channel by itself.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                AuthError::Unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => Reason::Expired,
                    ErrorKind::ImmatureSignature => Reason::NotYetValid,
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        Reason::BadSignature
                    }
                    _ => Reason::Malformed(e.to_string()),
                })
            })
    }

    /// Verifies a join token: [`TokenAuthority::verify`], and its `channel` claim must equal
    /// `topic` exactly (no prefixes, no wildcards, no case folding).
    pub fn verify_for_channel(&self, token: &str, topic: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.channel != topic {
            return Err(AuthError::Unauthorized(Reason::WrongChannel {
                claimed: claims.channel,
                topic: topic.to_string(),
            }));
        }
        Ok(claims)
    }
}

/// A random alphanumeric string of `len` characters: client ids minted by `POST /token`.
pub fn random_id(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A fresh 256-bit secret (base64url) for a server started without `jwt_secret`. Tokens signed
/// with it die with the process.
pub fn random_secret() -> Secret {
    let mut bytes = [0u8; 32];
    // The thread RNG is a CSPRNG (ChaCha12) seeded from the OS, and it cannot fail.
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> TokenAuthority {
        TokenAuthority::new("test-secret", 900)
    }

    #[test]
    fn minted_token_verifies_for_its_channel() {
        let a = authority();
        let token = a.mint("weather:wind", "alice").expect("mint");
        let claims = a.verify_for_channel(&token, "weather:wind").expect("valid");
        assert_eq!(claims.id, "alice");
        assert_eq!(claims.channel, "weather:wind");
        assert_eq!(claims.exp - claims.iat, 900);
        assert!(claims.iat.abs_diff(now_secs()) <= 2);
    }

    #[test]
    fn token_for_other_channel_is_refused() {
        let a = authority();
        let token = a.mint("system", "alice").expect("mint");
        for topic in ["admin", "System", "system:x", "syste", ""] {
            assert!(
                matches!(
                    a.verify_for_channel(&token, topic),
                    Err(AuthError::Unauthorized(Reason::WrongChannel { .. }))
                ),
                "{topic}"
            );
        }
        // The socket-level check does not look at the channel.
        assert!(a.verify(&token).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let a = authority();
        let now = now_secs();
        let expired = a
            .mint_claims(&Claims {
                id: "a".into(),
                channel: "c".into(),
                iat: now - 100,
                exp: now - EXP_LEEWAY_SECS - 2,
                nbf: None,
            })
            .expect("mint");
        assert_eq!(
            a.verify_for_channel(&expired, "c"),
            Err(AuthError::Unauthorized(Reason::Expired))
        );
        let within_leeway = a
            .mint_claims(&Claims {
                id: "a".into(),
                channel: "c".into(),
                iat: now - 100,
                exp: now - 1,
                nbf: None,
            })
            .expect("mint");
        assert!(a.verify(&within_leeway).is_ok());
    }

    #[test]
    fn token_signed_with_other_secret_is_refused() {
        let other = TokenAuthority::new("other-secret", 900);
        let token = other.mint("c", "a").expect("mint");
        assert_eq!(
            authority().verify_for_channel(&token, "c"),
            Err(AuthError::Unauthorized(Reason::BadSignature))
        );
    }

    #[test]
    fn token_with_other_algorithm_is_refused() {
        let secret = b"test-secret";
        let claims = Claims {
            id: "a".into(),
            channel: "c".into(),
            iat: now_secs(),
            exp: now_secs() + 60,
            nbf: None,
        };
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("mint");
        assert!(matches!(
            authority().verify(&hs512),
            Err(AuthError::Unauthorized(_))
        ));
        // "alg": "none" with an empty signature.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&claims).expect("claims serialise"))
        );
        assert!(authority().verify(&none).is_err());
    }

    #[test]
    fn garbage_and_missing_claims_are_malformed() {
        let a = authority();
        for token in ["", "x", "a.b.c", "....", "\u{0}"] {
            assert!(
                matches!(a.verify(token), Err(AuthError::Unauthorized(_))),
                "{token:?}"
            );
        }
        #[derive(Serialize)]
        struct NoChannel {
            id: String,
            exp: u64,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoChannel {
                id: "a".into(),
                exp: now_secs() + 60,
            },
            &EncodingKey::from_secret(b"test-secret"),
        )
        .expect("mint");
        assert!(matches!(
            a.verify(&token),
            Err(AuthError::Unauthorized(Reason::Malformed(_)))
        ));
    }

    /// Signs any JSON object as claims with the test secret: the signature is valid, so only
    /// the claims decide.
    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"test-secret"),
        )
        .expect("HS256 signing of a JSON object cannot fail")
    }

    /// Valid claims with `claim` replaced by `value`, or removed when `value` is `None`.
    fn claims_with(claim: &str, value: Option<serde_json::Value>) -> serde_json::Value {
        let now = now_secs();
        let mut claims =
            serde_json::json!({"id": "a", "channel": "c", "iat": now, "exp": now + 600});
        let object = claims.as_object_mut().expect("a JSON object");
        match value {
            Some(v) => object.insert(claim.to_string(), v),
            None => object.remove(claim),
        };
        claims
    }

    fn refused_as_malformed(token: &str) -> bool {
        matches!(
            authority().verify_for_channel(token, "c"),
            Err(AuthError::Unauthorized(Reason::Malformed(_)))
        )
    }

    #[test]
    fn time_claims_of_the_wrong_type_are_refused() {
        use serde_json::json;
        for claim in ["exp", "nbf", "iat"] {
            // A time that would pass as an integer (`exp` ahead, `nbf` behind), so that only
            // the type can be the reason for the refusal.
            let time = if claim == "nbf" {
                now_secs() - 600
            } else {
                now_secs() + 600
            };
            let control = signed(claims_with(claim, Some(json!(time))));
            assert!(
                authority().verify_for_channel(&control, "c").is_ok(),
                "{claim}"
            );
            for (what, value) in [
                ("a string", json!(time.to_string())),
                ("a word", json!("never")),
                ("a float", json!(time as f64 + 0.5)),
                ("an integral float", json!(time as f64)),
                ("negative", json!(-1)),
                ("null", json!(null)),
                ("an object", json!({"secs": time})),
                ("a boolean", json!(true)),
            ] {
                let token = signed(claims_with(claim, Some(value)));
                assert!(
                    refused_as_malformed(&token),
                    "{claim} as {what}: {:?}",
                    authority().verify_for_channel(&token, "c")
                );
            }
        }
    }

    #[test]
    fn absent_exp_or_iat_is_refused_and_absent_nbf_is_accepted() {
        for claim in ["exp", "iat"] {
            let token = signed(claims_with(claim, None));
            assert!(
                matches!(authority().verify(&token), Err(AuthError::Unauthorized(_))),
                "{claim} absent"
            );
        }
        // We never mint `nbf`: its absence is the normal case.
        let token = signed(claims_with("nbf", None));
        assert!(authority().verify_for_channel(&token, "c").is_ok());
    }

    #[test]
    fn nbf_in_the_future_is_refused_and_in_the_past_accepted() {
        let now = now_secs();
        let later = signed(claims_with(
            "nbf",
            Some(serde_json::json!(now + EXP_LEEWAY_SECS + 60)),
        ));
        assert_eq!(
            authority().verify(&later),
            Err(AuthError::Unauthorized(Reason::NotYetValid))
        );
        let earlier = signed(claims_with("nbf", Some(serde_json::json!(now - 60))));
        let claims = authority().verify(&earlier).expect("nbf in the past");
        assert_eq!(claims.nbf, Some(now - 60));
    }

    #[test]
    fn minted_tokens_carry_iat_and_exp_and_no_nbf() {
        let token = authority().mint("c", "a").expect("mint");
        let payload = token.split('.').nth(1).expect("three parts");
        let json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64url"),
        )
        .expect("JSON claims");
        assert!(json["iat"].is_u64() && json["exp"].is_u64(), "{json}");
        assert!(json.get("nbf").is_none(), "{json}");
    }

    #[test]
    fn random_ids_are_alphanumeric_of_the_asked_length() {
        let id = random_id(8);
        assert_eq!(id.len(), 8);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(random_id(16), random_id(16));
        assert_eq!(random_secret().expose().len(), 43);
    }
}
