//! tcpwatch: an eBPF observer of the Linux TCP connection lifecycle.
//!
//! The data flow, from the kernel to the operator:
//!
//! 1. **Kernel**: `loader` discovers the running kernel (tracefs `layout`s,
//!    `btf` offsets), loads and attaches the programs and drops privileges
//!    (`privilege`); the programs send events through a ring buffer and
//!    aggregate counts in maps; `event` decodes them.
//! 2. **Loop**: `session` drains the ring buffer, ticks, and dumps the
//!    kernel's socket list (`diag`, in each namespace via `netns`, owners
//!    from `/proc` via `snapshot`, units via `cgroup`) off the runtime thread.
//! 3. **Model** (pure): `observer` feeds `model` (connections, listeners,
//!    TIME_WAIT, end reasons; storage in `records`) with events and dumps.
//! 4. **Findings** (pure): `detect` (one module per detector) and `audit`
//!    (sysctls) turn the model and the kernel's counters into `finding`s.
//! 5. **Presentation**: `filter`, `output` (text and JSON lines), `summary`
//!    (for `top`); **serving**: `daemon`, `metrics`, `web` (HTTP, TLS,
//!    auth), `config`, `logging`.
//! 6. `cli`: one module per subcommand, each a thin loop over the above.
//!
//! Everything below the command line is a library so the tests can drive
//! the pure parts without a kernel.
pub mod audit;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod diag;
pub mod event;
pub mod filter;
pub mod finding;
pub mod layout;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod observer;
pub mod output;
pub mod privilege;
pub mod records;
pub mod session;
pub mod snapshot;
pub mod summary;
pub mod web;
