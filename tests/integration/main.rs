//! Integration tests of postshard, against real throwaway PostgreSQL servers
//! and the built `postshard` binary. One binary, one module per area.

mod cli_files;
mod cli_map;
mod common;
mod conn_secrets;
mod conn_tls;
mod control;
mod demo_cli;
mod fence;
mod hash_pg;
mod init;
mod live_router;
mod move_cli_output;
mod move_faults;
mod move_online;
mod move_online_cut;
mod move_online_faults;
mod move_online_seeds;
mod move_refusals;
mod move_support;
mod move_writers;
mod plan_cli;
mod range_copy;
mod router_pg;
mod sandbox_cli;
mod skew_activity;
mod skew_live;
mod skew_schemas;
mod skew_simulate;
mod verify_cli;
mod yaml_files;
