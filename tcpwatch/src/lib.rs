//! tcpwatch: an eBPF observer of the Linux TCP connection lifecycle.
//!
//! The folders are the data flow, from the kernel to the operator; each
//! uses only those above it in this list:
//!
//! 1. [`tcp`] and [`duration`]: the shared vocabulary (states, namespaces,
//!    endpoints; durations as operators write them).
//! 2. [`host`]: what is read without eBPF: the kernel's socket list
//!    (sock_diag), namespaces and their sysctls, socket owners from `/proc`,
//!    cgroups (units, containers), clocks.
//! 3. [`kernel`]: the running kernel's tracefs formats and BTF offsets, the
//!    eBPF programs loaded and attached with them, their counters, the ring
//!    buffer's records decoded; privileges dropped after attaching.
//! 4. [`model`] (pure): connections, listeners, TIME_WAIT and closes from
//!    events and dumps; bounded storage.
//! 5. [`findings`] (pure): the finding kinds, one module per detector with
//!    its advice, and the sysctl audit.
//! 6. [`session`]: the one event loop: drains the ring buffer, ticks, dumps
//!    the socket list off the runtime thread, and feeds the `observer`
//!    (attribution, model, detectors).
//! 7. [`present`]: filters, text and JSON lines, the summaries `top` and the
//!    metrics share; [`serve`]: the daemon's state, metrics, HTTP with TLS
//!    and authentication, configuration.
//! 8. [`cli`]: one module per subcommand, each a thin loop over the above.
//!
//! Everything below the command line is a library so the tests can drive
//! the pure parts without a kernel.
pub mod duration;
pub mod tcp;

pub mod host;
pub mod kernel;

pub mod findings;
pub mod model;

pub mod session;

pub mod present;
pub mod serve;

pub mod cli;
