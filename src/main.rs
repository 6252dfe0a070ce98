//! The `chat-relay` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

use chat_relay::config::{init_tracing, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate(args) => {
            init_tracing(&args.log, false);
            chat_relay::run_migrate(&args).await
        }
        Command::Serve(args) => {
            init_tracing(&args.log, args.log_format == "json");
            chat_relay::relay::serve(*args).await
        }
        Command::Demo(args) => {
            init_tracing(&args.log, false);
            chat_relay::tools::demo::run(args).await
        }
        Command::Bench(args) => {
            init_tracing(&args.log, false);
            chat_relay::tools::bench::run(args).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
