//! `postshard`: validate shard maps, route IDs, plan and apply migrations.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid input or usage.
//! Output into a closed pipe (`| head`) stops the command quietly with 0.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // clap prints help and version to stdout with success; usage
            // errors get 2. A closed stdout or stderr loses the text quietly.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message() {
                cli::eprint(format!("{message}\n"));
            }
            ExitCode::from(failure.code())
        }
    }
}
