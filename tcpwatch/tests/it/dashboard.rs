//! deploy/grafana/tcpwatch.json: every query of the dashboard names metrics
//! tcpwatch exports, and every panel shows data from a real Prometheus
//! scraping a real `tcpwatch run` during a workload.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::common::*;
use serde_json::Value;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/tcpwatch.json"))
        .expect("deploy/grafana/tcpwatch.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// One query of a panel.
struct Query {
    panel: String,
    ref_id: String,
    expr: String,
    instant: bool,
}

/// Every panel's queries, rows included (a collapsed row holds its panels).
fn queries(dashboard: &Value) -> Vec<Query> {
    fn walk(panels: &[Value], out: &mut Vec<Query>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    panel: title.to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                    expr: t["expr"].as_str().expect("a PromQL expr").to_owned(),
                    instant: t["instant"] == true && t["range"] != true,
                });
            }
            walk(p["panels"].as_array().map_or(&[], |v| v), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

/// The `tcpwatch_*` metric names in a PromQL expression, histogram series
/// suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tcpwatch_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metrics the README's Metrics table lists.
fn documented_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_file("README.md")).expect("README.md");
    readme
        .lines()
        .filter(|l| l.starts_with("| `tcpwatch_"))
        .flat_map(|l| l.split('|').nth(1).map(metric_names).unwrap_or_default())
        .collect()
}

/// The dashboard's shape (variables, data source) and every metric its
/// queries and the alerting rules name is one the README documents.
#[test]
fn dashboard_and_rules_name_documented_metrics() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 39));
    let variables: Vec<&Value> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .collect();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["instance", "namespace"] {
        assert_eq!(variable(name)["type"], "query", "${name}");
        assert_eq!(variable(name)["datasource"]["uid"], "${datasource}");
    }
    let documented = documented_metrics();
    assert!(documented.len() > 30, "{documented:?}");
    let queries = queries(&d);
    assert!(queries.len() > 20);
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64()), "panel id {} twice", p["id"]);
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }
    let rules = std::fs::read_to_string(repo_file("deploy/tcpwatch.rules.yml")).expect("rules");
    let exprs = queries
        .iter()
        .map(|q| {
            (
                format!("panel {:?} ({})", q.panel, q.ref_id),
                q.expr.clone(),
            )
        })
        .chain(std::iter::once(("the rules".to_owned(), rules)));
    for (place, expr) in exprs {
        for name in metric_names(&expr) {
            assert!(
                documented.contains(&name),
                "{place} uses {name}, which the README's metrics table does not list"
            );
        }
    }
}

/// Panels whose truthful value on a healthy host is zero: data, but no
/// activity is asked of them.
const ZERO_IS_HEALTHY: &[&str] = &[
    "Events lost",
    "Ring buffer peak fill",
    "Reconciliation corrections",
];

/// `name` as Grafana puts a single selected value into a regex matcher
/// (`=~"..."`): its regex metacharacters escaped, inside a PromQL string.
fn regex_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if r"\.+*?()|[]{}^$".contains(c) {
                format!(r"\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The dashboard's variables and Grafana's interval macros replaced as
/// Grafana would with one instance and one namespace selected and a 1 s
/// step against a 1 s scrape interval.
fn substitute(expr: &str, instance: &str, netns: &str) -> String {
    expr.replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("${namespace}", netns)
        .replace("$namespace", netns)
        // max(interval + scrape interval, 4 x scrape interval)
        .replace("$__rate_interval", "4s")
        .replace("$__interval", "1s")
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// What a query answered: whether it had series, and whether any sample
/// was a number other than zero.
fn answer(result: &Value) -> Result<(bool, bool), String> {
    if result["status"] != "success" {
        return Err(format!("{result}"));
    }
    let series = result["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let nonzero = series.iter().any(|s| {
        let values = s["values"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![s["value"].clone()]);
        values.iter().any(|v| {
            v[1].as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .is_some_and(|x| x.is_finite() && x != 0.0)
        })
    });
    Ok((!series.is_empty(), nonzero))
}

/// A workload in a namespace of the test's own, scraped by a real Prometheus
/// from a real `tcpwatch run`: every panel's every query, with the
/// dashboard's variables set to that daemon and that namespace (each
/// variable's own query must offer them), returns series through the
/// Prometheus HTTP API, and every panel but those where zero is the
/// healthy value shows activity.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn every_dashboard_panel_shows_data_from_a_real_prometheus() {
    const NAME: &str = "every_dashboard_panel_shows_data_from_a_real_prometheus";
    if !privileged_or_skip(NAME) || !tool("prometheus", NAME) || !tool("nft", NAME) {
        return;
    }
    let began = Instant::now();
    let d = dashboard();
    let ns = Netns::new("dash");
    // Connects stuck behind a full accept queue give up after one retry.
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    // Other tests' namespaces may be busier than this one: every namespace
    // gets series of its own, so this one is never folded into `other`.
    let config_dir = temp_dir("dashboard-config");
    let config = config_dir.join("tcpwatch.toml");
    std::fs::write(&config, "top_n = 1000\n").expect("config written");
    let config = config.display().to_string();
    let daemon = RunningDaemon::start(&[
        "--config",
        &config,
        "--reconcile-interval",
        "1s",
        "--netns-labels",
        "--close-wait-age",
        "1s",
        "--time-wait-count",
        "2",
        "--finding-interval",
        "1s",
    ]);
    // Read at start: not needed after.
    let _ = std::fs::remove_dir_all(&config_dir);
    let prometheus = Prometheus::start("dashboard", &daemon.addr, None);
    let start = now_unix() - 2.0;
    let set_up = began.elapsed();

    // Rates show what happens between two scrapes of a series: most of the
    // workload runs twice, so that the series born in the first round
    // (a counter appears at its first increment) are moved by the second.
    let mut servers = leak_and_buildup(&ns, 2, 3);
    let mut refused = ns.peer("tw-refused");
    let mut backlog = ns.peer("tw-backlog");
    let backlog_port: u16 = backlog.ok("listen 127.0.0.1 1").parse().expect("port");
    let mut waiting: Vec<Peer> = (0..5).map(|_| ns.peer("tw-waiting")).collect();
    let (first, second) = waiting.split_at_mut(3);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let mut round = |waiting: &mut [Peer], closed_port: u16| {
        // TIME_WAIT on the client (its ephemeral ports).
        for _ in 0..3 {
            client_closes_first(
                &mut servers.client,
                &mut servers.closer,
                "127.0.0.1",
                servers.closer_port,
            );
        }
        // A refused connect: a reset answers the SYN (each round to
        // another port: another connect_refused finding raised).
        assert_eq!(
            refused.cmd(&format!("connect 127.0.0.1 {closed_port}")),
            "err ConnectionRefused"
        );
        // An accept queue of one (two places) that is never accepted
        // from: SYNs beyond it dropped (ListenOverflows), retransmitted,
        // and their connects time out.
        for c in waiting.iter_mut() {
            c.send(&format!("connect 127.0.0.1 {backlog_port}"));
        }
    };
    round(first, 1);
    // Data and a FIN whose ACKs a firewall drops: retransmitted.
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().expect("port");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    server.ok("accept");
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("send hello");
    thread::sleep(Duration::from_millis(1200));
    client.ok("close");
    thread::sleep(Duration::from_millis(1200));
    ns.exec(&["nft", "delete", "table", "inet", "tw"]);
    // The series the first round made exist in Prometheus.
    let born = [
        format!(
            "tcpwatch_tcpext_total{{netns=\"{}\",counter=\"TW\"}}",
            ns.inode
        ),
        format!(
            "tcpwatch_tcpext_total{{netns=\"{}\",counter=\"ListenOverflows\"}}",
            ns.inode
        ),
        "tcpwatch_findings_reported_total{kind=\"connect_refused\",status=\"raised\"}".to_owned(),
    ];
    let seen = |q: &String| {
        prometheus.query(q)["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    };
    assert!(
        wait_until(Duration::from_secs(15), || born.iter().all(seen)),
        "the first round's series never reached Prometheus: {:?}",
        born.iter().filter(|q| !seen(q)).collect::<Vec<_>>()
    );
    round(second, 2);
    for c in &mut waiting {
        let _ = c.reply();
    }
    let workload = began.elapsed() - set_up;

    // The variables, from their own queries.
    let variable = |name: &str| {
        d["templating"]["list"]
            .as_array()
            .and_then(|l| l.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let instances = || -> Vec<String> {
        let def = variable("instance")["query"]
            .as_str()
            .expect("a query")
            .to_owned();
        // label_values(METRIC, LABEL)
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .expect("label_values(...)");
        let (metric, label) = inner.rsplit_once(',').expect("two arguments");
        prometheus.api(&format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            url_encode(metric.trim())
        ))["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let namespaces = |instance: &str| -> Vec<String> {
        let v = variable("namespace");
        let def = v["query"].as_str().expect("a query");
        let query = def
            .strip_prefix("query_result(")
            .and_then(|s| s.strip_suffix(')'))
            .expect("query_result(...)");
        // The variable's regex /netns="([^"]+)"/ picks the label's value.
        assert_eq!(v["regex"], "/netns=\"([^\"]+)\"/");
        prometheus.query(&substitute(query, instance, ""))["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["metric"]["netns"].as_str().map(str::to_owned))
            .collect()
    };
    let inode = ns.inode.to_string();
    assert!(
        wait_until(Duration::from_secs(20), || instances()
            .contains(&daemon.addr)),
        "$instance never offered {}: {:?}",
        daemon.addr,
        instances()
    );
    let instance = regex_value(&daemon.addr);
    assert!(
        wait_until(Duration::from_secs(20), || namespaces(&instance)
            .contains(&inode)),
        "$namespace never offered the test's namespace {inode}: {:?}",
        namespaces(&instance)
    );

    // Every query, as Grafana sends it: a range query over the test for
    // graphs and heatmaps, an instant query for tables. The last
    // reconciliations and scrapes may still be on their way: retried for
    // a while, then every failure is named.
    let queries = queries(&d);
    let check = || -> Vec<String> {
        let end = now_unix();
        let mut failures = Vec::new();
        let mut active: BTreeSet<&str> = BTreeSet::new();
        for q in &queries {
            let expr = substitute(&q.expr, &instance, &inode);
            let result = if q.instant {
                prometheus.query(&expr)
            } else {
                prometheus.query_range(&expr, start, end, 1.0)
            };
            match answer(&result) {
                Err(e) => failures.push(format!(
                    "panel {:?} ({}): `{expr}` failed: {e}",
                    q.panel, q.ref_id
                )),
                Ok((false, _)) => failures.push(format!(
                    "panel {:?} ({}): `{expr}` returned no data",
                    q.panel, q.ref_id
                )),
                Ok((true, nonzero)) => {
                    if nonzero {
                        active.insert(&q.panel);
                    }
                }
            }
        }
        let panels: BTreeSet<&str> = queries.iter().map(|q| q.panel.as_str()).collect();
        for panel in panels {
            if !active.contains(panel) && !ZERO_IS_HEALTHY.contains(&panel) {
                failures.push(format!("panel {panel:?}: only zeros during the workload"));
            }
        }
        failures
    };
    let mut failures = check();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !failures.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_secs(1));
        failures = check();
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries or panels without data:\n{}\n/metrics:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n"),
        http_get(&daemon.addr, "/metrics").2
    );
    let panels: BTreeSet<&str> = queries.iter().map(|q| q.panel.as_str()).collect();
    eprintln!(
        "{} panels, {} queries with data; set-up {:.1} s, workload {:.1} s, whole test {:.1} s",
        panels.len(),
        queries.len(),
        set_up.as_secs_f64(),
        workload.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    drop(servers);
}
