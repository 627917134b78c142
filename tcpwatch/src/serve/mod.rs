//! Serving: the daemon's state (`daemon`), its Prometheus metrics
//! (`metrics`), the HTTP endpoints with TLS and authentication (`web`), and
//! the configuration file (`config`).
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod web;
