//! Plan and measure moves of token ranges between shards.
//!
//! [`layout`] computes the ideal division of the token space by weight;
//! [`skew`] measures how unevenly load is spread; [`plan`] plans the token
//! moves that add, remove or reweight shards or even out load; [`range`]
//! copies, checksums and deletes token ranges and verifies a whole cluster.

pub mod capture;
pub mod control;
pub mod fence;
pub mod init;
pub mod layout;
pub mod live;
pub mod migrate;
pub mod plan;
pub mod range;
pub mod simulate;
pub mod skew;
