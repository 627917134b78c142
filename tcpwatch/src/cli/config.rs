//! `tcpwatch config`: the effective configuration of `tcpwatch run`.
use std::io::Write;

use super::run::RunArgs;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.effective()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# tcpwatch {} effective configuration",
        env!("CARGO_PKG_VERSION")
    )?;
    out.write_all(config.to_toml().as_bytes())?;
    Ok(())
}
