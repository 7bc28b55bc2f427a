//! Who may connect and who may mint: the accepted forms of `allowed_origins`,
//! `allow_missing_origin`, `token_mint` and `mint_open_topics`, and the rules that match a
//! request against them (docs/configuration.md "Access control").
//!
//! What this module owns: parsing those values (for [`crate::config`]) and deciding one
//! upgrade's `Origin` or one topic against them. What it must never do: I/O, or know about
//! HTTP responses or tokens: [`crate::shard`] answers the upgrade and [`crate::auth`] answers
//! `POST /token` with what these functions decide. It imports nothing from the crate, so the
//! configuration can hold its values without a cycle.

mod mint;
mod origin;

pub use mint::{TokenMint, TopicPattern};
pub use origin::{check_origin, OriginPattern, OriginRefusal};
