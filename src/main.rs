//! The `corral` binary: parse the command line, dispatch, map errors to
//! exit codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use corral::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<i32, (i32, String)> = match cli.command {
        Command::Run(args) => corral::run::main(*args).map_err(|e| (e.code, e.message)),
        Command::Worker(args) => done(corral::worker::main(args), |_| 2),
        Command::Status(args) => done(corral::client::status(args), |_| 1),
        Command::Scale(args) => done(corral::client::scale(args), |_| 1),
        Command::Restart(args) => done(corral::client::restart(args), |_| 1),
        Command::Operator(args) => done(corral::operator::main(args), |e| {
            use corral::operator::OperatorError as E;
            match e {
                E::Usage(_) | E::Flags(_) | E::Tls(_) | E::Bind { .. } => 2,
                _ => 1,
            }
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

/// A subcommand's outcome as the process's: 0, or the error's exit status
/// (2 for usage, 1 for the rest) and its message.
fn done<E: std::fmt::Display>(
    result: Result<(), E>,
    code: impl Fn(&E) -> i32,
) -> Result<i32, (i32, String)> {
    result.map(|()| 0).map_err(|e| (code(&e), e.to_string()))
}
