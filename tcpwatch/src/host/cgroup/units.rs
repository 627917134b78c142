//! The filesystem side of [`super`]: finding the directory of a cgroup id
//! under the cgroup2 mount, through the process that carried it or by a
//! walk of the hierarchy, and the shared handle the rest of tcpwatch asks.
use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{cgroup2_mount, classify, v2_path, Cache, Known, Mount, Workload};
use crate::host::clock::monotonic_ns;

/// Why ids cannot be resolved on this host.
#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (a host with only cgroup v1 hierarchies)")]
    NoCgroup2,
}

/// The cgroup2 mount of this process's mount namespace.
pub fn find_mount() -> Result<Mount, UnitsError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(UnitsError::Mountinfo)?;
    cgroup2_mount(&text).ok_or(UnitsError::NoCgroup2)
}

/// Directories visited by one walk at most: a bound on a host gone wild.
const WALK_MAX_DIRS: usize = 200_000;
/// Deepest level walked (systemd nests a few levels, Kubernetes five).
const WALK_MAX_DEPTH: usize = 32;

/// Walks the hierarchy under `mount` for the directories whose inode
/// numbers are in `wanted`, and returns each found id with its path (as
/// `/proc/PID/cgroup` names it). Stops once all are found. The inode of a
/// directory entry comes with the directory's listing (kernfs gives the
/// cgroup id as `d_ino`), so a walk costs one listing per cgroup.
pub fn walk(mount: &Mount, wanted: &HashSet<u64>) -> Vec<(u64, String)> {
    let mut found = Vec::new();
    if let Ok(meta) = fs::metadata(&mount.point) {
        if wanted.contains(&meta.ino()) {
            found.push((meta.ino(), mount.path_of("")));
        }
    }
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(mount.point.clone(), String::new(), 0)];
    let mut visited = 0;
    while let Some((dir, rel, depth)) = stack.pop() {
        if found.len() == wanted.len() || visited >= WALK_MAX_DIRS {
            break;
        }
        visited += 1;
        let Ok(entries) = fs::read_dir(&dir) else {
            // Removed while walking, or unreadable: skipped.
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if wanted.contains(&entry.ino()) {
                found.push((entry.ino(), mount.path_of(&child)));
            }
            if depth + 1 < WALK_MAX_DEPTH {
                stack.push((entry.path(), child, depth + 1));
            }
        }
    }
    found
}

/// The path and id of process `pid`'s cgroup: its v2 line in
/// `/proc/PID/cgroup` and the inode of that directory under `mount`.
pub fn of_process(mount: &Mount, pid: u32) -> Option<(u64, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = v2_path(&text)?;
    let dir = mount.dir_of(path)?;
    let id = fs::metadata(dir).ok()?.ino();
    Some((id, path.to_owned()))
}

struct Resolver {
    /// Discovered at first use; None on hosts without cgroup v2.
    mount: Option<Option<Mount>>,
    cache: Cache,
}

impl Resolver {
    fn mount(&mut self) -> Option<&Mount> {
        self.mount
            .get_or_insert_with(|| match find_mount() {
                Ok(m) => {
                    log::debug!("cgroup v2 hierarchy at {}", m.point.display());
                    Some(m)
                }
                Err(e) => {
                    // Once: the mount is looked for at first use only.
                    log::warn!("{e}: units and containers are not shown");
                    None
                }
            })
            .as_ref()
    }

    fn learn(&mut self, id: u64, path: &str) -> Option<Arc<Workload>> {
        let workload = classify(path).map(Arc::new);
        self.cache.insert(id, Known::Found(workload.clone()));
        workload
    }
}

/// What each cgroup id is, shared by everything that shows owners: ids are
/// resolved once, where they come in ([`Units::resolve`], with the process
/// that carried them), and read from the cache after ([`Units::get`]), so
/// an owner that has exited, or a cgroup removed since, is still named.
#[derive(Clone)]
pub struct Units(Arc<Mutex<Resolver>>);

impl std::fmt::Debug for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Units")
    }
}

impl Default for Units {
    /// Resolves nothing: for tests and callers without a host to look at.
    fn default() -> Self {
        Units::with_mount(None)
    }
}

impl Units {
    /// This host's: the cgroup2 mount is found at first use.
    pub fn system() -> Self {
        Units(Arc::new(Mutex::new(Resolver {
            mount: None,
            cache: Cache::default(),
        })))
    }

    /// Ids resolved under `mount` (None: none are).
    pub fn with_mount(mount: Option<Mount>) -> Self {
        Units(Arc::new(Mutex::new(Resolver {
            mount: Some(mount),
            cache: Cache::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Resolver> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What cgroup `id` is, from the cache only (no filesystem access).
    pub fn get(&self, id: u64) -> Option<Arc<Workload>> {
        if id == 0 {
            return None;
        }
        match self.lock().cache.get(id) {
            Some(Known::Found(w)) => w.clone(),
            _ => None,
        }
    }

    /// What cgroup `id` is, carried by an event of process `pid` (0 when
    /// unknown). A miss looks at the process's own cgroup first (at most
    /// every [`super::RETRY_NS`] per id), then waits for a walk of the
    /// hierarchy, at most every [`super::SCAN_EVERY_NS`] for all the ids
    /// missing by then: never a walk per event.
    pub fn resolve(&self, id: u64, pid: u32) -> Option<Arc<Workload>> {
        if id == 0 {
            return None;
        }
        let mut r = self.lock();
        match r.cache.get(id) {
            Some(Known::Found(w)) => return w.clone(),
            Some(Known::Absent) => return None,
            None => {}
        }
        let now = monotonic_ns();
        // Noted as missing either way, for the next walk.
        let may_look = r.cache.may_retry(id, now);
        if pid != 0 && may_look {
            let mount = r.mount()?.clone();
            if let Some((found, path)) = of_process(&mount, pid) {
                if found == id {
                    return r.learn(id, &path);
                }
                // The process moved since; what it is in now is worth knowing too.
                r.learn(found, &path);
            }
        }
        let wanted: HashSet<u64> = r.cache.scan_due(now)?.into_iter().collect();
        let mount = r.mount()?.clone();
        let found = walk(&mount, &wanted);
        log::debug!(
            "cgroup walk of {}: {} of {} ids found",
            mount.point.display(),
            found.len(),
            wanted.len()
        );
        let mut answer = None;
        for (found_id, path) in &found {
            let w = r.learn(*found_id, path);
            if *found_id == id {
                answer = w;
            }
        }
        let seen: HashSet<u64> = found.iter().map(|(i, _)| *i).collect();
        for missing in wanted.difference(&seen) {
            r.cache.insert(*missing, Known::Absent);
        }
        answer
    }

    /// Remembers that cgroup `id` is the one at `path` (as `/proc/PID/cgroup`
    /// names it), learnt elsewhere; returns what it is.
    pub fn learn(&self, id: u64, path: &str) -> Option<Arc<Workload>> {
        self.lock().learn(id, path)
    }

    /// The cgroup id of process `pid` now (0 when unknown), learnt with
    /// what it is: for owners read from `/proc` rather than told by the kernel.
    pub fn of_pid(&self, pid: u32) -> u64 {
        let mut r = self.lock();
        let Some(mount) = r.mount().cloned() else {
            return 0;
        };
        match of_process(&mount, pid) {
            Some((id, path)) => {
                if !matches!(r.cache.get(id), Some(Known::Found(_))) {
                    r.learn(id, &path);
                }
                id
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory tree shaped like a cgroup hierarchy, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str, dirs: &[&str]) -> Tree {
            let root = std::env::temp_dir().join(format!("tcpwatch-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for d in dirs {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            Tree(root)
        }

        fn id(&self, rel: &str) -> u64 {
            fs::metadata(self.0.join(rel)).unwrap().ino()
        }

        fn mount(&self) -> Mount {
            Mount {
                point: self.0.clone(),
                root: "/".into(),
            }
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const DOCKER: &str =
        "docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";

    #[test]
    fn the_walk_finds_ids_by_inode() {
        let docker = format!("test.slice/{DOCKER}");
        let t = Tree::new("walk", &["system.slice/a.service", &docker, "user.slice"]);
        let wanted: HashSet<u64> = [t.id("system.slice/a.service"), t.id(&docker), 1].into();
        let mut found = walk(&t.mount(), &wanted);
        found.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            found,
            [
                (
                    t.id("system.slice/a.service"),
                    "/system.slice/a.service".to_owned()
                ),
                (t.id(&docker), format!("/{docker}")),
            ]
        );
    }

    /// the cache drops the oldest *inserted* id first, however
    /// often it is asked for: the services learnt at start (nginx.service,
    /// sshd.service) are the first to go once 4,096 other ids have come
    /// (transient scopes: cron jobs, `systemd-run`, sessions, pods; and
    /// the `Absent` entries of every walk). From then on a CLOSE_WAIT leak
    /// of a long-lived, idle connection loses its unit label and its
    /// finding's prefix (they read the cache only), and an exited owner
    /// whose cgroup was removed is never named again.
    #[test]
    fn an_id_in_use_is_not_evicted_by_churn() {
        let units = Units::default();
        units.learn(1, "/system.slice/nginx.service");
        for id in 2..(super::super::CACHE_CAPACITY as u64 + 2) {
            units.learn(id, &format!("/system.slice/run-r{id}.scope"));
            // In use all along: asked for between every two new ids.
            let _ = units.get(1);
            let _ = units.resolve(1, 0);
        }
        assert_eq!(
            units.get(1).as_deref(),
            Some(&Workload::Unit("nginx.service".into()))
        );
    }

    #[test]
    fn ids_are_resolved_once_and_remembered_after_the_directory_is_gone() {
        let t = Tree::new("resolve", &["system.slice/b.service", "x.slice"]);
        let units = Units::with_mount(Some(t.mount()));
        let id = t.id("system.slice/b.service");
        assert_eq!(units.get(id), None, "nothing resolved yet");
        // No process to ask (pid 0): the walk finds it.
        let w = units.resolve(id, 0);
        assert_eq!(w.as_deref(), Some(&Workload::Unit("b.service".into())));
        fs::remove_dir_all(t.0.join("system.slice")).unwrap();
        assert_eq!(
            units.get(id).as_deref(),
            Some(&Workload::Unit("b.service".into()))
        );
        assert_eq!(
            units.resolve(id, 0).as_deref(),
            Some(&Workload::Unit("b.service".into()))
        );
        // Within SCAN_EVERY_NS of that walk, misses wait for the next one.
        assert_eq!(units.resolve(t.id("x.slice"), 0), None);
        assert_eq!(units.get(t.id("x.slice")), None);
        assert_eq!(units.resolve(0, 0), None);
        assert_eq!(Units::default().resolve(id, 0), None);
    }
}
