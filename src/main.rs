//! The `corral` binary: parse the command line, dispatch, map errors to
//! exit codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use corral::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<i32, (i32, String)> = match cli.command {
        Command::Run(args) => corral::run::main(*args).map_err(|e| (e.code, e.message)),
        Command::Worker(args) => corral::worker::main(args)
            .map(|()| 0)
            .map_err(|e| (2, e.to_string())),
        Command::Status(args) => corral::client::status(args)
            .map(|()| 0)
            .map_err(|e| (1, e.to_string())),
        Command::Scale(args) => corral::client::scale(args)
            .map(|()| 0)
            .map_err(|e| (1, e.to_string())),
        Command::Restart(args) => corral::client::restart(args)
            .map(|()| 0)
            .map_err(|e| (1, e.to_string())),
        Command::Operator(args) => corral::operator::main(args)
            .map(|()| 0)
            .map_err(|e| match e {
                corral::operator::OperatorError::Usage(_)
                | corral::operator::OperatorError::Flags(_)
                | corral::operator::OperatorError::Tls(_)
                | corral::operator::OperatorError::Bind { .. } => (2, e.to_string()),
                _ => (1, e.to_string()),
            }),
        Command::Crd => {
            print!("{}", corral::operator::crd_yaml());
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err((code, message)) => {
            eprintln!("corral: error: {message}");
            ExitCode::from(code.clamp(0, 255) as u8)
        }
    }
}
