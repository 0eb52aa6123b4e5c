//! `taxi-operator`: reconciles `TaxiPipeline` resources into shard-assigned worker StatefulSets.
//! It parses the command line and dispatches to [`taxi_operator::cli`], where each command lives.

use std::process::ExitCode;

use clap::Parser;
use taxi_operator::cli::{self, Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => cli::run(args),
        Command::Crd => cli::crd(),
        Command::Simulate(args) => cli::simulate(&args),
    }
}
