//! Debian's cloud kernels for `cargo xtask vm-test`: fetched through the
//! machine's own Debian mirror into a private apt state (the machine's apt
//! sources stay as they are) and cached by exact release under
//! `~/.cache/tcpwatch/kernels/<release>/`: `vmlinuz`, `inet_diag.ko` and
//! `tcp_diag.ko` (decompressed), and `SOURCE` naming the packages.
//!
//! A series already in the cache is used without any network access; only
//! missing series cost an `apt-get update` of their suites and a download.
//! The mirror's address is read from the machine's apt configuration at run
//! time and never written anywhere but apt's own private state.
use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::setup::{self, cache_dir};

/// A kernel series and where Debian ships it.
pub struct Series {
    /// `5.10`, `6.1`, ...: what `--kernels` takes.
    pub name: &'static str,
    /// The Debian suite whose cloud kernel is of this series.
    suite: &'static str,
    /// Package name before the release (`linux-image-`, `linux-binary-`).
    prefix: &'static str,
    /// Package name after the release (`-unsigned` for the unsigned images).
    trailer: &'static str,
    /// Since forky the modules come in a package of their own:
    /// `linux-modules-<release>`.
    modules_prefix: Option<&'static str>,
}

/// The kernels tcpwatch is proven on: Debian 11 to 14's cloud kernels.
pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-",
        trailer: "-unsigned",
        modules_prefix: None,
    },
    Series {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-",
        trailer: "-unsigned",
        modules_prefix: None,
    },
    Series {
        name: "6.12",
        suite: "trixie",
        prefix: "linux-image-",
        trailer: "-unsigned",
        modules_prefix: None,
    },
    Series {
        name: "7.2",
        suite: "forky",
        prefix: "linux-binary-",
        trailer: "",
        modules_prefix: Some("linux-modules-"),
    },
];

/// The modules the guest loads, in load order: tcp_diag needs inet_diag.
/// Without them sock_diag dumps fail and tcpwatch cannot reconcile.
pub const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];

/// The flavour every series is fetched in: small, with BTF, virtio built in.
const FLAVOUR: &str = "-cloud-amd64";

/// A cached kernel, ready to boot.
pub struct Kernel {
    pub series: &'static str,
    /// `uname -r`, e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    pub fn module(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ko"))
    }
}

impl Series {
    fn find(name: &str) -> Result<&'static Series> {
        SERIES.iter().find(|s| s.name == name).with_context(|| {
            let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
            format!("no Debian cloud kernel known for `{name}`; known series: {known:?}")
        })
    }

    /// Whether `release` (e.g. `6.12.117+deb13-cloud-amd64`) belongs to this
    /// series: `6.1.` must not take `6.12.x`.
    fn owns(&self, release: &str) -> bool {
        release
            .strip_prefix(self.name)
            .is_some_and(|rest| rest.starts_with('.'))
            && release.ends_with(FLAVOUR)
    }

    /// The release a package of this series carries, if the name is one.
    fn release_of(&self, package: &str) -> Option<String> {
        let release = package
            .strip_prefix(self.prefix)?
            .strip_suffix(self.trailer)?;
        self.owns(release).then(|| release.to_owned())
    }

    fn packages(&self, release: &str) -> Vec<String> {
        let mut names = vec![format!("{}{release}{}", self.prefix, self.trailer)];
        names.extend(self.modules_prefix.map(|p| format!("{p}{release}")));
        names
    }
}

/// The kernels of `names`, from the cache or fetched into it.
pub fn kernels(names: &[String]) -> Result<Vec<Kernel>> {
    let root = cache_dir()?.join("kernels");
    let series: Vec<&'static Series> = names
        .iter()
        .map(|n| Series::find(n.trim()))
        .collect::<Result<_>>()?;
    let missing: Vec<&'static Series> = series
        .iter()
        .copied()
        .filter(|s| cached(&root, s).is_none())
        .collect();
    if !missing.is_empty() {
        let apt = Apt::new(&missing)?;
        for s in &missing {
            fetch(&apt, &root, s)?;
        }
    }
    series
        .iter()
        .map(|s| {
            cached(&root, s).with_context(|| {
                format!(
                    "the {} kernel is not in {} after fetching it",
                    s.name,
                    root.display()
                )
            })
        })
        .collect()
}

/// The newest complete cached kernel of a series.
fn cached(root: &Path, series: &'static Series) -> Option<Kernel> {
    let entries = fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|release| series.owns(release))
        .map(|release| Kernel {
            series: series.name,
            dir: root.join(&release),
            release,
        })
        .filter(|k| k.vmlinuz().is_file() && MODULES.iter().all(|m| k.module(m).is_file()))
        .max_by(|a, b| natural_cmp(&a.release, &b.release))
}

/// Downloads the newest kernel of `series` and caches what the guest needs.
fn fetch(apt: &Apt, root: &Path, series: &'static Series) -> Result<()> {
    let started = std::time::Instant::now();
    let release = apt.newest_release(series)?;
    let packages = series.packages(&release);
    eprintln!(
        "xtask: fetching Debian's {} kernel {release} ({})",
        series.name,
        packages.join(", ")
    );
    let work = apt.dir.join("work");
    let _ = fs::remove_dir_all(&work);
    let debs = work.join("debs");
    let tree = work.join("tree");
    fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    fs::create_dir_all(&tree).with_context(|| format!("cannot create {}", tree.display()))?;
    apt.download(&packages, &debs)?;
    let mut source = String::new();
    for deb in fs::read_dir(&debs).with_context(|| format!("cannot list {}", debs.display()))? {
        let deb = deb?.path();
        setup::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        source.push_str(&deb.file_name().unwrap_or_default().to_string_lossy());
        source.push('\n');
    }
    // Written beside the final directory and renamed into place, so an
    // interrupted fetch never leaves a kernel that looks complete.
    let partial = root.join(format!(".{release}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let vmlinuz = find_vmlinuz(&tree, &release)?;
    fs::copy(&vmlinuz, partial.join("vmlinuz"))
        .with_context(|| format!("cannot copy {}", vmlinuz.display()))?;
    for module in MODULES {
        let found = find_module(&tree, &release, module)?;
        decompress(&found, &partial.join(format!("{module}.ko")))?;
    }
    fs::write(partial.join("SOURCE"), source).context("cannot write SOURCE")?;
    let dir = root.join(&release);
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)
        .with_context(|| format!("cannot move the kernel to {}", dir.display()))?;
    // The packages are 20-40 MB each and every file the guest needs is kept.
    let _ = fs::remove_dir_all(&work);
    eprintln!(
        "xtask: cached {release} in {} ({:.0} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `boot/vmlinuz-<release>` up to trixie, `usr/lib/modules/<release>/vmlinuz` since.
fn find_vmlinuz(tree: &Path, release: &str) -> Result<PathBuf> {
    let candidates = [
        tree.join("boot").join(format!("vmlinuz-{release}")),
        tree.join("usr/lib/modules").join(release).join("vmlinuz"),
        tree.join("lib/modules").join(release).join("vmlinuz"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!("no vmlinuz for {release} in the packages (looked at {candidates:?})")
        })
}

/// A module of the kernel, plain or compressed, under `/lib` or `/usr/lib`.
fn find_module(tree: &Path, release: &str, module: &str) -> Result<PathBuf> {
    let mut looked = Vec::new();
    for lib in ["lib/modules", "usr/lib/modules"] {
        for ext in ["ko", "ko.xz", "ko.zst"] {
            let path = tree
                .join(lib)
                .join(release)
                .join("kernel/net/ipv4")
                .join(format!("{module}.{ext}"));
            if path.is_file() {
                return Ok(path);
            }
            looked.push(path);
        }
    }
    bail!("no {module} module for {release} in the packages (looked at {looked:?})")
}

/// Copies a module, decompressing `.ko.xz` and `.ko.zst` with the host's
/// tools: busybox's insmod in the guest takes plain modules only.
fn decompress(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
        return Ok(());
    };
    let out = Command::new(tool)
        .args(["-d", "-c", "-q"])
        .arg(from)
        .output()
        .with_context(|| format!("cannot run {tool} (cargo xtask setup installs it)"))?;
    if !out.status.success() {
        bail!(
            "{tool} cannot decompress {}: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::write(to, out.stdout).with_context(|| format!("cannot write {}", to.display()))
}

/// A private apt state under `~/.cache/tcpwatch/apt/`, with the machine's
/// Debian mirror and only the suites asked for.
struct Apt {
    dir: PathBuf,
    mirror: Mirror,
}

/// The machine's Debian archive, as its apt configuration names it.
pub struct Mirror {
    pub uri: String,
    pub keyring: String,
}

/// The machine's apt sources in deb822 form, where Debian 12 keeps them.
pub const DEB822_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// apt's default keyring for Debian's archive, when the source names none.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl Apt {
    /// Writes the private sources and fetches the suites' package lists.
    fn new(series: &[&'static Series]) -> Result<Apt> {
        let dir = cache_dir()?.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let mirror = Mirror::of_this_machine()?;
        let mut sources = String::new();
        for s in series {
            sources.push_str(&format!(
                "deb [signed-by={}] {} {} main\n",
                mirror.keyring, mirror.uri, s.suite
            ));
        }
        fs::write(dir.join("sources.list"), sources)
            .context("cannot write the private apt sources")?;
        let apt = Apt { dir, mirror };
        let suites: Vec<&str> = series.iter().map(|s| s.suite).collect();
        eprintln!(
            "xtask: reading the package lists of {} from the machine's Debian mirror",
            suites.join(", ")
        );
        apt.output(apt.command("apt-get").args([
            // Only the Packages index: no translations, no AppStream data.
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false",
            "update",
        ]))
        .context("apt-get update of the private kernel sources failed")?;
        Ok(apt)
    }

    /// apt-get or apt-cache with the private state instead of the machine's.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let opt = |name: &str, value: &Path| format!("{name}={}", value.display());
        cmd.arg("-q")
            .args([
                "-o",
                &opt("Dir::Etc::sourcelist", &self.dir.join("sources.list")),
            ])
            .args(["-o", "Dir::Etc::sourceparts=/nonexistent"])
            .args(["-o", &opt("Dir::State::Lists", &self.dir.join("lists"))])
            .args(["-o", &opt("Dir::Cache", &self.dir.join("cache"))]);
        if crate::tasks::is_root() {
            // apt's download sandbox user cannot write to root's cache.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }

    /// Runs an apt command; its messages name the mirror, so a failure is
    /// reported with the mirror's address replaced.
    fn output(&self, cmd: &mut Command) -> Result<String> {
        setup::output(cmd).map_err(|e| anyhow::anyhow!(self.mirror.redact(&format!("{e:#}"))))
    }

    /// The newest release of `series` the mirror has.
    fn newest_release(&self, series: &Series) -> Result<String> {
        let listed = self.output(
            self.command("apt-cache")
                .arg("pkgnames")
                .arg(format!("{}{}.", series.prefix, series.name)),
        )?;
        listed
            .lines()
            .filter_map(|p| series.release_of(p.trim()))
            .max_by(|a, b| natural_cmp(a, b))
            .with_context(|| {
                format!(
                    "Debian {} lists no {}{}.*{FLAVOUR}{} package",
                    series.suite, series.prefix, series.name, series.trailer
                )
            })
    }

    fn download(&self, packages: &[String], into: &Path) -> Result<()> {
        self.output(
            self.command("apt-get")
                .arg("download")
                .args(packages)
                .current_dir(into),
        )
        .map(|_| ())
    }
}

impl Mirror {
    /// The main archive of the machine's apt sources (not its security
    /// archive): the deb822 `debian.sources`, or the one-line `sources.list`.
    pub fn of_this_machine() -> Result<Mirror> {
        let deb822 = Path::new(DEB822_SOURCES);
        let one_line = Path::new("/etc/apt/sources.list");
        let found = fs::read_to_string(deb822)
            .ok()
            .and_then(|text| Mirror::from_deb822(&text))
            .or_else(|| {
                fs::read_to_string(one_line)
                    .ok()
                    .and_then(|text| Mirror::from_one_line(&text))
            });
        found.with_context(|| {
            format!(
                "no Debian archive (other than -security) in {} or {}: vm-test fetches kernels through the machine's mirror",
                deb822.display(),
                one_line.display()
            )
        })
    }

    fn from_deb822(text: &str) -> Option<Mirror> {
        text.split("\n\n").find_map(|stanza| {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
                })
            };
            let is_deb = field("Types")?.split_whitespace().any(|t| t == "deb");
            let suites = field("Suites")?;
            let main_archive = !suites.split_whitespace().any(|s| s.ends_with("-security"));
            let uri = field("URIs")?.split_whitespace().next()?;
            (is_deb && main_archive).then(|| Mirror {
                uri: uri.to_owned(),
                keyring: field("Signed-By")
                    .filter(|k| k.starts_with('/'))
                    .unwrap_or(DEBIAN_KEYRING)
                    .to_owned(),
            })
        })
    }

    fn from_one_line(text: &str) -> Option<Mirror> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "deb" {
                return None;
            }
            let mut keyring = DEBIAN_KEYRING.to_owned();
            let mut uri = words.next()?;
            if uri.starts_with('[') {
                // Options: `[arch=amd64 signed-by=/path]`.
                let mut option = uri;
                loop {
                    let value = option.trim_start_matches('[').trim_end_matches(']');
                    if let Some(k) = value.strip_prefix("signed-by=") {
                        keyring = k.to_owned();
                    }
                    if option.ends_with(']') {
                        break;
                    }
                    option = words.next()?;
                }
                uri = words.next()?;
            }
            let suite = words.next()?;
            (!suite.ends_with("-security")).then(|| Mirror {
                uri: uri.to_owned(),
                keyring,
            })
        })
    }

    /// `text` with the mirror's host replaced, for messages shown or logged.
    pub fn redact(&self, text: &str) -> String {
        let host = self
            .uri
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .filter(|h| !h.is_empty());
        match host {
            Some(host) => text.replace(host, "<mirror>"),
            None => text.to_owned(),
        }
    }
}

/// Compares version-like strings with digit runs as numbers:
/// `6.12.117` after `6.12.107`, `5.10.0-32` after `5.10.0-30`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_number(a);
                let (nb, rb) = split_number(b);
                match na.cmp(&nb) {
                    Ordering::Equal => (a, b) = (ra, rb),
                    other => return other,
                }
            }
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => (a, b) = (&a[1..], &b[1..]),
                other => return other,
            },
        }
    }
}

fn split_number(s: &[u8]) -> (u128, &[u8]) {
    let end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    let value = s[..end].iter().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    });
    (value, &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_sort_by_number() {
        assert_eq!(
            natural_cmp("5.10.0-32-cloud-amd64", "5.10.0-30-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            natural_cmp("6.12.107+deb13-cloud-amd64", "6.12.117+deb13-cloud-amd64"),
            Ordering::Less
        );
        assert_eq!(
            natural_cmp("6.1.0-9-cloud-amd64", "6.1.0-50-cloud-amd64"),
            Ordering::Less
        );
    }

    #[test]
    fn package_names_map_to_their_series() {
        let s61 = Series::find("6.1").unwrap();
        assert_eq!(
            s61.release_of("linux-image-6.1.0-50-cloud-amd64-unsigned")
                .as_deref(),
            Some("6.1.0-50-cloud-amd64")
        );
        assert_eq!(
            s61.release_of("linux-image-6.12.117+deb13-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(s61.release_of("linux-image-6.1.0-50-amd64-unsigned"), None);
        let s72 = Series::find("7.2").unwrap();
        assert_eq!(
            s72.release_of("linux-binary-7.2.12+deb14-cloud-amd64")
                .as_deref(),
            Some("7.2.12+deb14-cloud-amd64")
        );
        assert_eq!(
            s72.release_of("linux-binary-unsigned-7.2.12+deb14-cloud-amd64"),
            None
        );
        assert_eq!(
            s72.packages("7.2.12+deb14-cloud-amd64"),
            [
                "linux-binary-7.2.12+deb14-cloud-amd64",
                "linux-modules-7.2.12+deb14-cloud-amd64"
            ]
        );
        assert!(Series::find("4.19").is_err());
    }

    #[test]
    fn reads_the_main_archive_of_apt_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\nSigned-By: /k.gpg\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        let m = Mirror::from_deb822(deb822).unwrap();
        assert_eq!(
            (m.uri.as_str(), m.keyring.as_str()),
            ("http://mirror.example/debian", "/k.gpg")
        );
        assert_eq!(
            m.redact("Get:1 http://mirror.example/debian x"),
            "Get:1 http://<mirror>/debian x"
        );
        let security_first = "Types: deb\nURIs: http://s.example/ds\nSuites: bookworm-security\n\n\
                              Types: deb\nURIs: http://m.example/d\nSuites: bookworm\n";
        assert_eq!(
            Mirror::from_deb822(security_first).unwrap().uri,
            "http://m.example/d"
        );
        let one_line = "# comment\ndeb http://s.example/ds bookworm-security main\n\
                        deb [arch=amd64 signed-by=/x.gpg] http://m.example/d bookworm main\n";
        let m = Mirror::from_one_line(one_line).unwrap();
        assert_eq!(
            (m.uri.as_str(), m.keyring.as_str()),
            ("http://m.example/d", "/x.gpg")
        );
    }
}
