//! The mailbox between the threads that are not shards (the Redis core, the `system` and
//! `admin` tickers, the server's start and shutdown) and the shards' executors.
//!
//! What it owns: the messages a shard can be told ([`ShardMessage`]) with the return addresses
//! they carry ([`tickets`]), each shard's bounded lock-free inbox ([`ShardInbox`]), the handle
//! that reaches them all ([`Shards`]), shard masks ([`mask`]), and the message a shard sends
//! back to the Redis core when its interest in a topic changes ([`InterestChange`]).
//!
//! What it must never do: know what a connection, a Redis command or a session is. It sits
//! below both the shards and the broker so that neither has to import the other.

mod interest;
mod mailbox;
pub mod mask;
mod shards;
pub mod tickets;

pub use interest::InterestChange;
pub use mailbox::{ShardInbox, ShardMessage};
pub use mask::MAX_SHARDS;
pub use shards::Shards;
pub use tickets::{AdminAnswerAs, AdminTicket, HistoryTicket, PushAck, PushOutcome};
