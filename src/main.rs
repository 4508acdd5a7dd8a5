//! The `rotator` binary: parses the command line, sets up logging, runs the command through
//! `cli::run`, and maps its failure to the exit code (0 success, 1 a rotation or check failed,
//! 2 invalid input or usage).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (notes/stack.md section 2).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = rotator::cli::Cli::parse();
    let format = cli.log_format.unwrap_or(match cli.command {
        rotator::cli::Command::Serve(_) => rotator::telemetry::LogFormat::Json,
        _ => rotator::telemetry::LogFormat::Text,
    });
    let quiet = matches!(cli.command, rotator::cli::Command::Demo(_));
    rotator::telemetry::init(format, cli.verbose, quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(rotator::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // `{:#}` prints the whole cause chain on one line.
            match &failure {
                rotator::cli::Failure::Other(e) => eprintln!("error: {e:#}"),
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
