//! Integration tests of postshard, against real throwaway PostgreSQL servers
//! and the built `postshard` binary. One binary, one module per area.

mod cli_map;
mod common;
mod hash_pg;
mod plan_cli;
mod router_pg;
mod skew_activity;
mod skew_live;
mod skew_simulate;
mod yaml_files;
