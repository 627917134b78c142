//! The daemon's configuration file (TOML). Every key has a default; unknown
//! keys are rejected by name; command-line flags override the file.
use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{duration::HumanDuration, findings::detect::Thresholds, model::Limits};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("configuration file {path}: {key} {problem}")]
    Invalid {
        path: String,
        key: &'static str,
        problem: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server (/metrics, /healthz, /api). Loopback unless
    /// exposing it is a deliberate choice.
    pub listen: SocketAddr,
    /// Kernel-to-user ring buffer size in KiB (a power of two).
    pub ring_kib: u32,
    /// The kernel's run-time statistics of BPF programs, on while tcpwatch
    /// runs: tcpwatch's own cost per program in the metrics.
    pub bpf_stats: bool,
    /// How often the model is checked against the kernel's socket list.
    pub reconcile_interval: HumanDuration,
    /// Rows of per-endpoint and per-process metrics before `other`.
    pub top_n: usize,
    /// Also export sockets by network namespace (`tcpwatch_netns_sockets`,
    /// the top_n namespaces, then other).
    pub netns_labels: bool,
    /// TLS and basic authentication of the endpoint (a Prometheus
    /// exporter-toolkit web configuration file); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_config_file: Option<std::path::PathBuf>,
    /// Live connection records the model keeps (the oldest are evicted).
    pub max_connections: usize,
    /// TIME_WAIT entries the model keeps (the oldest are evicted).
    pub max_time_wait: usize,
    pub thresholds: Thresholds,
}

/// The daemon's port, next to node_exporter's 9100 family.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9775";

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9775))),
            ring_kib: tcpwatch_common::DEFAULT_RING_BYTES / 1024,
            bpf_stats: true,
            reconcile_interval: HumanDuration(crate::session::DEFAULT_RECONCILE_INTERVAL),
            top_n: 10,
            netns_labels: false,
            web_config_file: None,
            max_connections: limits.max_connections,
            max_time_wait: limits.max_time_wait,
            thresholds: Thresholds::default(),
        }
    }
}

impl Config {
    /// Parses and validates the text of a configuration file.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line(e.message()) + &location(text, e.span()),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown)
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, problem: String| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem,
            })
        };
        if let Err(problem) = check_ring_kib(self.ring_kib) {
            return bad("ring_kib", format!("= {problem}"));
        }
        if !(1..=1000).contains(&self.top_n) {
            return bad(
                "top_n",
                format!("= {} is not between 1 and 1000", self.top_n),
            );
        }
        if self.max_connections == 0 || self.max_time_wait == 0 {
            return bad(
                "max_connections/max_time_wait",
                "must be above 0".to_owned(),
            );
        }
        let f = self.thresholds.port_use_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return bad(
                "thresholds.port_use_fraction",
                format!("= {f} is not between 0 (excluded) and 1"),
            );
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_time_wait: self.max_time_wait,
        }
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// A ring buffer size in KiB the kernel accepts: a power of two of pages,
/// within what tcpwatch allows (4 KiB to 1 GiB).
pub fn check_ring_kib(kib: u32) -> Result<u32, String> {
    if (4..=1 << 20).contains(&kib) && kib.is_power_of_two() {
        Ok(kib)
    } else {
        Err(format!(
            "{kib} KiB is not a power of two between 4 and 1048576"
        ))
    }
}

/// A parser's message folded onto one line: toml's and YAML's can span
/// several, and a user-facing failure is one sentence.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// ` (line L)` for an error's byte span, when known.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => format!(
            " (line {})",
            text[..span.start.min(text.len())].lines().count().max(1)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn empty_file_is_all_defaults_and_defaults_round_trip() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        let again = Config::parse(&c.to_toml(), "t.toml").unwrap();
        assert_eq!(again, c);
        assert!(
            c.to_toml().contains("close_wait_age = \"1m\""),
            "{}",
            c.to_toml()
        );
    }

    #[test]
    fn values_are_read() {
        let c = Config::parse(
            "listen = \"0.0.0.0:9999\"\ntop_n = 3\n[thresholds]\nclose_wait_age = \"2m\"\nport_use_fraction = 0.8\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.top_n, 3);
        assert_eq!(c.thresholds.close_wait_age, Duration::from_secs(120));
        assert_eq!(c.thresholds.port_use_fraction, 0.8);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("listn = \"x\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `listn`") && e.contains("t.toml"),
            "{e}"
        );
        let e = Config::parse("[thresholds]\nclose_wait_age = \"soon\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon") && e.contains("line 2"), "{e}");
        let e = Config::parse("ring_kib = 3000\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ring_kib"), "{e}");
        let e = Config::parse("[thresholds]\nport_use_fraction = 2.0\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port_use_fraction"), "{e}");
        let e = Config::parse("listen = \"nope\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") || e.contains("socket address"), "{e}");
        assert!(matches!(
            Config::load(Path::new("/nonexistent/tcpwatch.toml")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn durations_print_in_their_largest_unit() {
        for (d, s) in [
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
        ] {
            assert_eq!(HumanDuration(d).to_string(), s);
        }
    }
}
