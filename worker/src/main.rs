//! `taxi-worker`: the TaxiPipeline worker binary. It parses the command line and dispatches to
//! [`taxi_worker::cli`], where each command lives.

use std::process::ExitCode;

use clap::Parser;
use taxi_core::redact;
use taxi_worker::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing();
    let result = match cli.command {
        Command::Local(args) => cli::local::local(args),
        Command::Generate(args) => cli::generate::generate(&args),
        Command::Run(args) => cli::run::run(*args),
        Command::Results(args) => cli::results::results(&args),
        Command::Replay(args) => cli::replay::replay(&args),
        Command::DeadLetter(args) => cli::dead_letter::dead_letter(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            // Whatever a command's error quotes, a URL's credentials are not printed.
            eprintln!("taxi-worker: {}", redact::url(&message));
            ExitCode::FAILURE
        }
    }
}
