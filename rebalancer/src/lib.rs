//! Plan and measure moves of token ranges between shards.
//!
//! [`layout`] computes the ideal division of the token space by weight;
//! [`skew`] measures how unevenly load is spread.

pub mod layout;
pub mod skew;
