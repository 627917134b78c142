//! Units and containers: what the cgroup v2 id every owner carries says
//! about it.
//!
//! The kernel programs take `bpf_get_current_cgroup_id()` where they bind an
//! owner: the id of the task's cgroup in the unified (v2) hierarchy, which
//! is the inode number of that cgroup's directory under the cgroup2 mount.
//! [`units::Units`] finds the directory (the filesystem part, apart); this
//! module is pure: it names what a cgroup path is ([`classify`]), finds the
//! cgroup2 mount in `/proc/self/mountinfo` text ([`cgroup2_mount`]), reads
//! a process's v2 path from `/proc/PID/cgroup` text ([`v2_path`]), and keeps
//! what was learnt in a bounded cache ([`Cache`]).
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    path::PathBuf,
    sync::Arc,
};

use serde::{Serialize, Serializer};

pub mod units;

pub use units::Units;

/// A container runtime, told by the name of the container's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `docker-<id>.scope` (systemd cgroup driver) or `/docker/<id>` (cgroupfs).
    Docker,
    /// `cri-containerd-<id>.scope` (Kubernetes on containerd).
    Containerd,
    /// `crio-<id>.scope` (Kubernetes on CRI-O).
    CriO,
    /// `libpod-<id>.scope` (podman, rootless too).
    Podman,
    /// `/kubepods/[<qos>/]pod<uid>/<id>`: kubelet's cgroupfs driver, whose
    /// paths do not say which runtime runs the container.
    Kubernetes,
}

impl Runtime {
    /// The stable name used in JSON and labels.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Kubernetes => "kubernetes",
        }
    }
}

impl Serialize for Runtime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Characters of a container id shown: what `docker ps` shows.
pub const SHORT_ID_LEN: usize = 12;

/// A container, from the cgroup its runtime made for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    pub runtime: Runtime,
    /// The full id (64 hexadecimal digits).
    pub id: String,
    /// The container's own cgroup, e.g. `docker-<id>.scope`.
    pub scope: String,
    /// The innermost systemd unit around or inside it that is not the
    /// container's own scope: `user@1000.service` for a rootless podman
    /// container, a service of a systemd running inside the container.
    pub unit: Option<String>,
}

impl Container {
    /// The first [`SHORT_ID_LEN`] digits of the id.
    pub fn short_id(&self) -> &str {
        self.id.get(..SHORT_ID_LEN).unwrap_or(&self.id)
    }

    /// `docker:0123456789ab`: the runtime and the short id.
    pub fn label(&self) -> String {
        format!("{}:{}", self.runtime.name(), self.short_id())
    }
}

/// `{"runtime": "docker", "id": "0123456789ab"}` (the short id).
impl Serialize for Container {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Container", 2)?;
        st.serialize_field("runtime", &self.runtime)?;
        st.serialize_field("id", self.short_id())?;
        st.end()
    }
}

/// What a cgroup is, as operators name what runs on a host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A systemd unit: a service (`nginx.service`, `user@1000.service`), a
    /// scope (`session-3.scope`), a socket, mount or swap unit.
    Unit(String),
    /// A container of one of the [`Runtime`]s.
    Container(Container),
    /// A slice with no unit below it on the path (`user-1000.slice`).
    Slice(String),
}

impl Workload {
    /// The `unit` of JSON output: the unit, or the slice; for a container
    /// the unit around or inside it, if any.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Workload::Unit(u) | Workload::Slice(u) => Some(u),
            Workload::Container(c) => c.unit.as_deref(),
        }
    }

    /// The `container` of JSON output.
    pub fn container(&self) -> Option<&Container> {
        match self {
            Workload::Container(c) => Some(c),
            _ => None,
        }
    }

    /// One word for columns, finding summaries and metric labels: the unit
    /// or slice name, or `runtime:short-id` for a container.
    pub fn label(&self) -> String {
        match self {
            Workload::Unit(u) | Workload::Slice(u) => u.clone(),
            Workload::Container(c) => c.label(),
        }
    }

    /// Whether `--unit NAME` selects it: the unit or slice by its name (a
    /// name without a dot as `NAME.service`, as systemctl reads it), a
    /// container by its label, short or full id, or scope, or by the unit
    /// around it.
    pub fn matches(&self, name: &str) -> bool {
        let same = |unit: &str| {
            unit == name
                || !name.contains('.')
                    && unit
                        .strip_suffix(".service")
                        .is_some_and(|stem| stem == name)
        };
        match self {
            Workload::Unit(u) | Workload::Slice(u) => same(u),
            Workload::Container(c) => {
                name == c.label()
                    || name == c.short_id()
                    || name == c.id
                    || name == c.scope
                    || c.unit.as_deref().is_some_and(same)
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Suffixes of the systemd units that have a cgroup of their own (slices apart).
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

fn is_unit(component: &str) -> bool {
    UNIT_SUFFIXES.iter().any(|s| {
        component
            .strip_suffix(s)
            .is_some_and(|stem| !stem.is_empty())
    })
}

fn is_slice(component: &str) -> bool {
    component
        .strip_suffix(".slice")
        .is_some_and(|stem| !stem.is_empty())
}

/// A container id: 64 lowercase hexadecimal digits, as every runtime here makes them.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The runtime and id of a container's cgroup: `component` within `parent`.
fn container_of(parent: Option<&str>, component: &str) -> Option<(Runtime, String)> {
    if parent == Some("docker") && is_container_id(component) {
        return Some((Runtime::Docker, component.to_owned()));
    }
    // kubelet's cgroupfs driver: the container's id under its pod's cgroup.
    if parent.is_some_and(|p| p.starts_with("pod")) && is_container_id(component) {
        return Some((Runtime::Kubernetes, component.to_owned()));
    }
    // `crio-conmon-<id>` and `libpod-conmon-<id>` are the monitors, not the
    // containers: their ids do not parse as ids.
    let name = component.strip_suffix(".scope").unwrap_or(component);
    [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix).filter(|id| is_container_id(id))?;
        Some((runtime, id.to_owned()))
    })
}

/// What the cgroup at `path` (as `/proc/PID/cgroup` writes it, e.g.
/// `/system.slice/nginx.service`) is: the innermost container on the path,
/// else the innermost unit, else the innermost slice. None for the root
/// and for paths that name none of these.
pub fn classify(path: &str) -> Option<Workload> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let container = parts.iter().enumerate().rev().find_map(|(i, part)| {
        let parent = i.checked_sub(1).and_then(|p| parts.get(p)).copied();
        container_of(parent, part).map(|found| (*part, found))
    });
    let unit = parts
        .iter()
        .rev()
        .find(|p| is_unit(p) && container_of(None, p).is_none())
        .map(|u| (*u).to_owned());
    if let Some((scope, (runtime, id))) = container {
        return Some(Workload::Container(Container {
            runtime,
            id,
            scope: scope.to_owned(),
            unit,
        }));
    }
    if let Some(unit) = unit {
        return Some(Workload::Unit(unit));
    }
    parts
        .iter()
        .rev()
        .find(|p| is_slice(p))
        .map(|s| Workload::Slice((*s).to_owned()))
}

/// Where the unified (v2) hierarchy is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount point: `/sys/fs/cgroup` on a pure v2 host,
    /// `/sys/fs/cgroup/unified` on a hybrid one.
    pub point: PathBuf,
    /// The cgroup the mount shows as its root, as `/proc/PID/cgroup` names
    /// it (`/` unless a subtree is mounted).
    pub root: String,
}

impl Mount {
    /// The directory of the cgroup at `path` (as `/proc/PID/cgroup` names it).
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
        };
        let rel = rel.trim_start_matches('/');
        // A cgroup outside this namespace's view reads as `/../..`.
        if rel.split('/').any(|p| p == "..") {
            return None;
        }
        Some(if rel.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rel)
        })
    }

    /// The path (as `/proc/PID/cgroup` names it) of a directory `rel` below
    /// the mount point (`a/b`, or empty for the mount point itself).
    pub fn path_of(&self, rel: &str) -> String {
        let root = self.root.trim_end_matches('/');
        if rel.is_empty() {
            if root.is_empty() {
                "/".to_owned()
            } else {
                root.to_owned()
            }
        } else {
            format!("{root}/{rel}")
        }
    }
}

/// `\040` and the other octal escapes of mountinfo's fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount in `/proc/self/mountinfo` text: `/sys/fs/cgroup` (a
/// pure v2 host) before `/sys/fs/cgroup/unified` (a hybrid host) before
/// any other. None on a host with only v1 hierarchies.
pub fn cgroup2_mount(mountinfo: &str) -> Option<Mount> {
    let mounts: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional...] - type source super
            let (head, tail) = line.split_once(" - ")?;
            if tail.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = head.split_whitespace().collect();
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
            })
        })
        .collect();
    // The mount that sees the most first: inside a private cgroup namespace
    // (a pod's, by default on cgroup v2) the runtime's own mount shows only
    // the pod's subtree (root `/`), while a mount of the node's hierarchy
    // shows its root as `/../..` and resolves the node's processes too.
    let sees_above = |m: &Mount| m.root.split('/').filter(|c| *c == "..").count();
    let rank = |m: &Mount| {
        let point = match m.point.to_str() {
            Some("/sys/fs/cgroup") => 0,
            Some("/sys/fs/cgroup/unified") => 1,
            _ => 2,
        };
        (std::cmp::Reverse(sees_above(m)), point)
    };
    mounts.into_iter().min_by_key(rank)
}

/// The v2 path in `/proc/PID/cgroup` text: the `0::PATH` line.
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
        .filter(|p| p.starts_with('/'))
}

/// What is known of one cgroup id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// Found: what its path is (None for the root and unnamed groups).
    Found(Option<Arc<Workload>>),
    /// A full scan after it was asked for did not find it: gone, or outside
    /// what this mount shows. Ids are never reused, so it stays unknown.
    Absent,
}

/// Ids remembered at most; the oldest go first beyond it.
pub const CACHE_CAPACITY: usize = 4096;
/// Least time between two scans of the whole hierarchy.
pub const SCAN_EVERY_NS: u64 = 2_000_000_000;
/// Least time between two looks for the same missing id through a process.
pub const RETRY_NS: u64 = 2_000_000_000;
/// Ids waiting for a scan, kept at most.
const PENDING_CAPACITY: usize = 1024;

/// What the ids seen so far are, bounded, with the timing of the looks for
/// those not yet found. Pure: time is handed in.
#[derive(Debug, Default)]
pub struct Cache {
    /// What each id is, and when it was last asked for (a tick of `clock`).
    known: HashMap<u64, (Known, std::cell::Cell<u64>)>,
    /// Ids in the order they were queued, with the tick they were queued
    /// at: one asked for since goes back to the end instead of out (the
    /// ids in use stay; transient scopes and unknown ids go first).
    order: VecDeque<(u64, u64)>,
    clock: std::cell::Cell<u64>,
    /// Missing ids and when each was last looked for.
    pending: HashMap<u64, u64>,
    last_scan_ns: Option<u64>,
}

impl Cache {
    pub fn get(&self, id: u64) -> Option<&Known> {
        let (known, used) = self.known.get(&id)?;
        let tick = self.clock.get() + 1;
        self.clock.set(tick);
        used.set(tick);
        Some(known)
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Remembers what `id` is; when full, the entry least recently asked
    /// for goes.
    pub fn insert(&mut self, id: u64, known: Known) {
        self.pending.remove(&id);
        let tick = self.clock.get() + 1;
        self.clock.set(tick);
        if self
            .known
            .insert(id, (known, std::cell::Cell::new(tick)))
            .is_some()
        {
            return;
        }
        self.order.push_back((id, tick));
        while self.known.len() > CACHE_CAPACITY {
            let Some((old, queued)) = self.order.pop_front() else {
                break;
            };
            match self.known.get(&old).map(|(_, used)| used.get()) {
                // Asked for since it was queued: a second chance. Each entry
                // is requeued at most once per pass (nothing is asked for
                // meanwhile), so this ends.
                Some(used) if used > queued => self.order.push_back((old, used)),
                Some(_) => {
                    self.known.remove(&old);
                }
                None => {}
            }
        }
    }

    /// Whether a missing `id` may be looked for through a process now: at
    /// most every [`RETRY_NS`] per id. Notes the look.
    pub fn may_retry(&mut self, id: u64, now: u64) -> bool {
        match self.pending.get(&id) {
            Some(at) if now.saturating_sub(*at) < RETRY_NS => false,
            _ => {
                if self.pending.len() >= PENDING_CAPACITY && !self.pending.contains_key(&id) {
                    // Forgetting the waiting ids only delays their scan.
                    self.pending.clear();
                }
                self.pending.insert(id, now);
                true
            }
        }
    }

    /// The ids a scan should look for, if one may run now (at most every
    /// [`SCAN_EVERY_NS`]); notes the scan.
    pub fn scan_due(&mut self, now: u64) -> Option<Vec<u64>> {
        if self.pending.is_empty()
            || self
                .last_scan_ns
                .is_some_and(|at| now.saturating_sub(at) < SCAN_EVERY_NS)
        {
            return None;
        }
        self.last_scan_ns = Some(now);
        Some(self.pending.keys().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn unit(name: &str) -> Option<Workload> {
        Some(Workload::Unit(name.to_owned()))
    }

    fn container(runtime: Runtime, scope: &str, unit: Option<&str>) -> Option<Workload> {
        Some(Workload::Container(Container {
            runtime,
            id: ID.to_owned(),
            scope: scope.to_owned(),
            unit: unit.map(str::to_owned),
        }))
    }

    #[test]
    fn systemd_units_and_slices() {
        assert_eq!(
            classify("/system.slice/nginx.service"),
            unit("nginx.service")
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice/user@1000.service"),
            unit("user@1000.service")
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice/session-3.scope"),
            unit("session-3.scope")
        );
        // The innermost unit: an application scope under the user manager.
        assert_eq!(
            classify(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-42.scope"
            ),
            unit("app-firefox-42.scope")
        );
        // A delegated subgroup of a service is still the service.
        assert_eq!(
            classify("/system.slice/nginx.service/workers"),
            unit("nginx.service")
        );
        assert_eq!(
            classify("/system.slice/var-lib-x.mount"),
            unit("var-lib-x.mount")
        );
        assert_eq!(classify("/init.scope"), unit("init.scope"));
        assert_eq!(
            classify("/system.slice/docker.service"),
            unit("docker.service")
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice"),
            Some(Workload::Slice("user-1000.slice".into()))
        );
        assert_eq!(
            classify("/system.slice"),
            Some(Workload::Slice("system.slice".into()))
        );
    }

    #[test]
    fn nothing_to_name() {
        assert_eq!(classify("/"), None);
        assert_eq!(classify(""), None);
        assert_eq!(classify("/mygroup/sub"), None);
        // A suffix alone is no unit.
        assert_eq!(classify("/.service"), None);
        assert_eq!(classify("/.slice"), None);
    }

    #[test]
    fn containers_of_each_runtime() {
        assert_eq!(
            classify(&format!("/system.slice/docker-{ID}.scope")),
            container(Runtime::Docker, &format!("docker-{ID}.scope"), None)
        );
        assert_eq!(
            classify(&format!("/docker/{ID}")),
            container(Runtime::Docker, ID, None)
        );
        assert_eq!(
            classify(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            )),
            container(Runtime::Containerd, &format!("cri-containerd-{ID}.scope"), None)
        );
        assert_eq!(
            classify(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice/crio-{ID}.scope"
            )),
            container(Runtime::CriO, &format!("crio-{ID}.scope"), None)
        );
        assert_eq!(
            classify(&format!("/machine.slice/libpod-{ID}.scope")),
            container(Runtime::Podman, &format!("libpod-{ID}.scope"), None)
        );
        // Podman's systemd mode puts the processes one level down.
        assert_eq!(
            classify(&format!("/machine.slice/libpod-{ID}.scope/container")),
            container(Runtime::Podman, &format!("libpod-{ID}.scope"), None)
        );
    }

    #[test]
    fn a_container_keeps_the_unit_around_or_inside_it() {
        // Rootless podman: the user's manager holds it.
        assert_eq!(
            classify(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            container(
                Runtime::Podman,
                &format!("libpod-{ID}.scope"),
                Some("user@1000.service")
            )
        );
        // systemd inside a docker container.
        assert_eq!(
            classify(&format!(
                "/system.slice/docker-{ID}.scope/system.slice/nginx.service"
            )),
            container(
                Runtime::Docker,
                &format!("docker-{ID}.scope"),
                Some("nginx.service")
            )
        );
    }

    #[test]
    fn look_alikes_are_not_containers() {
        // The monitors of CRI-O and podman.
        assert_eq!(
            classify(&format!("/system.slice/crio-conmon-{ID}.scope")),
            unit(&format!("crio-conmon-{ID}.scope"))
        );
        assert_eq!(
            classify(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            unit(&format!("libpod-conmon-{ID}.scope"))
        );
        // Not 64 hexadecimal digits.
        assert_eq!(
            classify("/system.slice/docker-compose.scope"),
            unit("docker-compose.scope")
        );
        let upper = ID.to_uppercase();
        assert_eq!(
            classify(&format!("/system.slice/docker-{upper}.scope")),
            unit(&format!("docker-{upper}.scope"))
        );
        assert_eq!(classify(&format!("/other/{ID}")), None);
    }

    #[test]
    fn labels_json_and_matching() {
        let Some(w) = classify(&format!("/system.slice/docker-{ID}.scope")) else {
            panic!("not a container");
        };
        assert_eq!(w.label(), "docker:0123456789ab");
        assert_eq!(w.unit(), None);
        assert_eq!(
            serde_json::to_value(w.container()).unwrap(),
            serde_json::json!({"runtime": "docker", "id": "0123456789ab"})
        );
        for name in ["docker:0123456789ab", "0123456789ab", ID] {
            assert!(w.matches(name), "{name}");
        }
        assert!(w.matches(&format!("docker-{ID}.scope")));
        assert!(!w.matches("0123456789"));
        assert!(!w.matches("docker.service"));

        let nginx = Workload::Unit("nginx.service".into());
        assert_eq!(
            (nginx.label(), nginx.unit()),
            ("nginx.service".to_owned(), Some("nginx.service"))
        );
        assert!(nginx.matches("nginx.service") && nginx.matches("nginx"));
        assert!(!nginx.matches("nginx.socket") && !nginx.matches("ngin"));
        assert!(nginx.container().is_none());
        let slice = Workload::Slice("user-1000.slice".into());
        assert!(slice.matches("user-1000.slice") && !slice.matches("user-1000"));
        let crio = Runtime::CriO;
        assert_eq!(serde_json::to_value(crio).unwrap(), "cri-o");
    }

    const PURE_V2: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 30 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
";

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_on_pure_and_hybrid_hosts() {
        assert_eq!(
            cgroup2_mount(PURE_V2),
            Some(Mount {
                point: "/sys/fs/cgroup".into(),
                root: "/".into()
            })
        );
        assert_eq!(
            cgroup2_mount(HYBRID).map(|m| m.point),
            Some("/sys/fs/cgroup/unified".into())
        );
        // Only v1 hierarchies: nothing to resolve ids in.
        let v1: String = HYBRID.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(cgroup2_mount(&v1), None);
        // Another mount of the hierarchy (a container's view, with a
        // space escaped) comes after the usual places.
        let elsewhere = "50 1 0:38 /kubepods /host\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(elsewhere),
            Some(Mount {
                point: "/host cg".into(),
                root: "/kubepods".into()
            })
        );
        assert_eq!(
            cgroup2_mount(&format!("{elsewhere}{HYBRID}")).map(|m| m.point),
            Some("/sys/fs/cgroup/unified".into())
        );
    }

    #[test]
    fn paths_and_directories() {
        let m = Mount {
            point: "/sys/fs/cgroup/unified".into(),
            root: "/".into(),
        };
        assert_eq!(
            m.dir_of("/system.slice/a.service"),
            Some("/sys/fs/cgroup/unified/system.slice/a.service".into())
        );
        assert_eq!(m.dir_of("/"), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(m.dir_of("/../../x.service"), None);
        assert_eq!(
            m.path_of("system.slice/a.service"),
            "/system.slice/a.service"
        );
        assert_eq!(m.path_of(""), "/");
        let sub = Mount {
            point: "/host".into(),
            root: "/kubepods".into(),
        };
        assert_eq!(sub.dir_of("/kubepods/pod1"), Some("/host/pod1".into()));
        assert_eq!(sub.dir_of("/kubepodsx"), None);
        assert_eq!(sub.dir_of("/system.slice"), None);
        assert_eq!(sub.path_of("pod1"), "/kubepods/pod1");
        assert_eq!(sub.path_of(""), "/kubepods");
    }

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        let hybrid =
            "9:name=systemd:/system.slice/a.service\n4:memory:/x\n0::/system.slice/a.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/a.service"));
        assert_eq!(v2_path("0::/\n"), Some("/"));
        assert_eq!(v2_path("4:memory:/x\n"), None);
        assert_eq!(v2_path(""), None);
    }

    /// kubelet with the cgroupfs driver (k3s, kubeadm clusters set
    /// up with `cgroupDriver: cgroupfs`) puts each container at
    /// `/kubepods/<qos>/pod<uid>/<id>` (guaranteed pods: `/kubepods/pod<uid>/<id>`):
    /// no scope name to tell the runtime, but a container all the same.
    #[test]
    fn kubepods_with_the_cgroupfs_driver_are_containers() {
        for path in [
            format!("/kubepods/burstable/pod0c6e3a2b-4d0f-4f7e-9e3a-1a2b3c4d5e6f/{ID}"),
            format!("/kubepods/pod0c6e3a2b-4d0f-4f7e-9e3a-1a2b3c4d5e6f/{ID}"),
        ] {
            let w = classify(&path);
            assert!(
                w.as_ref()
                    .and_then(|w| w.container())
                    .is_some_and(|c| c.id == ID),
                "{path}: {w:?}"
            );
        }
    }

    /// the DaemonSet's pod has a private cgroup namespace (the
    /// default of containerd and CRI-O on cgroup v2): the runtime's own
    /// cgroup2 mount at /sys/fs/cgroup shows only the pod's subtree (root
    /// `/`), and the node's processes read as `0::/../../..`. A mount of the
    /// node's hierarchy (a hostPath of /sys/fs/cgroup; mountinfo shows its root as
    /// `/../../..` from inside the namespace, checked with unshare -C) is the
    /// only one that can resolve anything: it is chosen over the one at
    /// /sys/fs/cgroup.
    #[test]
    fn in_a_pod_the_mount_that_sees_the_node_is_chosen() {
        let pod = "\
1200 1100 0:38 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
1201 1100 0:38 /../../.. /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
";
        let m = cgroup2_mount(pod).expect("a cgroup2 mount");
        let host_process = format!("/../../../system.slice/docker-{ID}.scope");
        assert_eq!(
            m.dir_of(&host_process),
            Some(PathBuf::from(format!(
                "/host/sys/fs/cgroup/system.slice/docker-{ID}.scope"
            ))),
            "{m:?}"
        );
    }

    #[test]
    fn the_cache_is_bounded_and_its_looks_rate_limited() {
        let mut c = Cache::default();
        for id in 0..CACHE_CAPACITY as u64 + 10 {
            c.insert(id, Known::Absent);
        }
        assert_eq!(c.len(), CACHE_CAPACITY);
        assert!(c.get(0).is_none() && c.get(9).is_none());
        assert_eq!(c.get(10), Some(&Known::Absent));

        let s = 1_000_000_000;
        let mut c = Cache::default();
        assert_eq!(c.scan_due(s), None, "nothing missing, nothing to scan");
        assert!(c.may_retry(7, s));
        assert!(!c.may_retry(7, s + 1), "one look per id per RETRY_NS");
        assert!(c.may_retry(8, s + 1));
        let mut due = c.scan_due(s).unwrap();
        due.sort_unstable();
        assert_eq!(due, [7, 8]);
        assert_eq!(
            c.scan_due(s + SCAN_EVERY_NS - 1),
            None,
            "one scan per SCAN_EVERY_NS"
        );
        assert!(c.may_retry(7, s + RETRY_NS));
        assert!(c.scan_due(s + SCAN_EVERY_NS).is_some());
        // Found: no longer waiting.
        c.insert(7, Known::Found(None));
        c.insert(8, Known::Absent);
        assert_eq!(c.scan_due(s + 10 * SCAN_EVERY_NS), None);
    }
}
