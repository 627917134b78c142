//! `cargo xtask`: set-up, build, run and test tasks for tcpwatch.
//!
//! Every task installs what it needs first, idempotently: a second run only
//! checks and is fast.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod deb;
mod guest;
mod hold;
mod initramfs;
mod k8s;
mod kernels;
mod probe;
mod setup;
mod soak;
mod systemd_test;
mod tasks;
mod vm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "tcpwatch's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing tcpwatch needs: rust-src, a bpf-linker
    /// built against this toolchain's LLVM, cargo-deb and dpkg-dev for the
    /// Debian package, and Debian packages for the tests.
    Setup {
        /// Also install the Debian packages the privileged tests use, and the
        /// Kubernetes manifests' validator.
        #[arg(long)]
        tests: bool,
        /// Also install what vm-test and systemd-test use: QEMU, busybox, xz,
        /// zstd, mmdebstrap and e2fsprogs.
        #[arg(long)]
        vm: bool,
    },
    /// Set up, then build tcpwatch (release) with its eBPF programs.
    Build,
    /// Set up, build and run tcpwatch with the given arguments (as root).
    Run {
        /// Arguments for tcpwatch, e.g. `trace --json`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure tcpwatch (root; prints Markdown): its overhead on a host
    /// churning connections next to no observer and libbpf-tools' tcpstates,
    /// CPU per event, what happens past capacity, accuracy against ss, and
    /// memory and scrape cost by tracked sockets.
    Bench {
        /// Seconds of churn per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs per observer, interleaved.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tracked sockets for the memory section, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Only these sections (repeatable); all by default.
        #[arg(long, value_enum)]
        only: Vec<bench::Section>,
    },
    /// Opens N loopback connections and holds them until standard input
    /// closes (the memory benchmark's workload).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        connections: usize,
    },
    /// The churn workload of `bench` (connect, 16 bytes, close, as fast as
    /// possible); prints connections per second.
    #[command(hide = true)]
    Churn {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = bench::CLIENTS)]
        clients: usize,
        /// Clients close first (TIME_WAIT on the client side).
        #[arg(long)]
        client_closes: bool,
    },
    /// Run tcpwatch run for MINUTES under mixed churn (server and client
    /// closing first, idle pauses) and report its memory curve, losses, and
    /// its counts against ss at the end (root; prints Markdown).
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Build a release tarball: binary, systemd unit, configuration and
    /// Prometheus files, laid out as they install (target/dist/).
    Dist,
    /// Build the Debian package target/debian/tcpwatch_VERSION_ARCH.deb
    /// (cargo-deb): binary, unit (enabled and started on install),
    /// configuration as a conffile, rules and their tests, completions and
    /// man pages.
    Deb,
    /// Boot Debian's cloud kernels under QEMU and run tcpwatch's guest suite
    /// in each (trace, findings, run's /metrics, TIME_WAIT against the
    /// kernel's list, audit); one line per kernel. Kernels are cached in
    /// ~/.cache/tcpwatch/kernels/ (delete one to fetch its series' newest).
    VmTest {
        /// Kernel series, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12,7.2")]
        kernels: Vec<String>,
        /// Also write each kernel's tracepoint format files to
        /// tcpwatch/tests/data/formats-<series>/.
        #[arg(long)]
        save_formats: bool,
        /// Test this tcpwatch binary instead of building one (e.g. a
        /// release's, or an older commit's).
        #[arg(long)]
        tcpwatch: Option<std::path::PathBuf>,
    },
    /// Prove the Debian package under a real systemd (root): build it, boot
    /// Debian 12 (mmdebstrap, cached in ~/.cache/tcpwatch/debian12/; its
    /// 6.1 kernel) under QEMU, install it with dpkg and check the service:
    /// Type=notify start, watchdog, capabilities, /metrics, restart after
    /// SIGKILL, a bad configuration, purge.
    SystemdTest,
    /// The suite vm-test runs inside each guest (also runs on a host, as root).
    #[command(hide = true)]
    GuestSuite {
        /// The tcpwatch binary to test.
        #[arg(long)]
        tcpwatch: std::path::PathBuf,
        /// Print the tracepoint format files first, between markers.
        #[arg(long)]
        dump_formats: bool,
    },
    /// A guest-suite peer: socket commands on stdin, one reply line each.
    #[command(hide = true)]
    GuestPeer,
    /// The guest's check of tcpwatch without the sock_diag modules, run
    /// before they are loaded.
    #[command(hide = true)]
    GuestWithoutSockDiag {
        #[arg(long)]
        tcpwatch: std::path::PathBuf,
    },
    /// Check deploy/kubernetes/ offline: the manifests against the Kubernetes
    /// API schema, the Containerfile with hadolint, and the DaemonSet's
    /// capabilities against deploy/tcpwatch.service (installs the tools first;
    /// `cargo xtask test` runs the same check).
    K8sCheck,
    /// Set up everything and run the whole test suite, privileged tests
    /// included; under CI=true (or TCPWATCH_VM_TEST=1) vm-test on every
    /// kernel and systemd-test follow.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { tests, vm } => setup::toolchain()
            .and_then(|()| setup::deb_tools().map(|_| ()))
            .and_then(|()| {
                if tests {
                    setup::test_packages()
                } else {
                    Ok(())
                }
            })
            .and_then(|()| if vm { setup::vm_packages() } else { Ok(()) }),
        Task::Build => tasks::build().map(|_| ()),
        Task::Run { args } => tasks::run_tcpwatch(&args),
        Task::Bench {
            seconds,
            runs,
            sizes,
            only,
        } => setup::bench_packages().and_then(|()| bench::bench(seconds, runs, &sizes, &only)),
        Task::Hold { connections } => hold::hold(connections),
        Task::Churn {
            seconds,
            clients,
            client_closes,
        } => bench::churn(seconds, clients, client_closes).map(|rate| println!("{rate:.0}")),
        Task::Soak { minutes } => soak::soak(minutes),
        Task::Dist => tasks::dist().map(|path| println!("{}", path.display())),
        Task::Deb => deb::deb().map(|path| println!("{}", path.display())),
        Task::VmTest {
            kernels,
            save_formats,
            tcpwatch,
        } => vm::vm_test(&kernels, tcpwatch.as_deref(), save_formats),
        Task::SystemdTest => systemd_test::systemd_test(),
        Task::GuestSuite {
            tcpwatch,
            dump_formats,
        } => guest::suite(&tcpwatch, dump_formats),
        Task::GuestPeer => guest::peer(),
        Task::GuestWithoutSockDiag { tcpwatch } => guest::without_sock_diag(&tcpwatch),
        Task::K8sCheck => k8s::install().and_then(|()| k8s::check_installed()),
        Task::Test { args } => tasks::test(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
