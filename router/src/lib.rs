//! Route post IDs to PostgreSQL shards.
//!
//! A key (post ID) becomes a 64-bit token with PostgreSQL's own
//! `hashint8extended`, so SQL on a shard can compute the same token; the shard
//! that owns the ring arc holding that token owns the key. [`ShardMap`] holds
//! the validated map; [`Router`] adds one connection pool per shard.

pub mod connect;
mod connect_failures;
pub mod hash;
pub mod live_map;
mod live_router;
pub mod load;
pub mod map;
pub mod ring;
mod router;
pub mod url;

pub use connect::{connect, ConnectError};
pub use hash::{hashint8extended, Token};
pub use live_router::LiveOptions;
pub use load::{HotToken, LoadReport, LoadUnit};
pub use map::{MapError, ShardMap};
pub use ring::Ring;
pub use router::{
    describe as describe_db_error, Client, MapRef, Params, Router, RouterError, ShardRef,
    ShardRows, SQLSTATE_MOVED,
};
pub use url::ConnUrl;
