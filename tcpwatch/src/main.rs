use std::process::ExitCode;

use clap::Parser as _;
use tcpwatch::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    tcpwatch::logging::init(level);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One sentence: the outermost context and its causes, no backtrace.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("tcpwatch: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
