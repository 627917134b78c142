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
    tcpwatch::cli::logging::init(level);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One sentence: the outermost context and the causes it does
            // not already quote, no backtrace.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            eprintln!("tcpwatch: {line}");
            ExitCode::from(cli::exit_status(&e))
        }
    }
}
