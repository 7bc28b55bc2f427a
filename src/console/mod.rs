//! The operator console (`GET /console`, docs/operations.md "The console"): a single page whose
//! files are compiled into the binary, and the login that exchanges an operator's `admin_key`
//! (or an admin token) for a short-lived admin token.
//!
//! What this module owns: the page's files and the security headers they are served with
//! ([`assets`]), the login exchange ([`login`]) and the limit on failed logins
//! ([`login_limiter`]). What it must never do: give the page any power the `admin` channel
//! does not give (everything the page shows or does goes through the admin channel over the
//! WebSocket, with the token minted here), do I/O, or store the key it is shown.

mod assets;
mod login;
mod login_limiter;

pub use assets::{asset_response, CONTENT_SECURITY_POLICY};
pub use login::{handle_login, CONSOLE_TOKEN_SECS};
pub use login_limiter::{LoginLimiter, MAX_FAILURES, WINDOW};
