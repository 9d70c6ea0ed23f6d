//! cgroup v2 id → path, for the `cgroup_path` label.
//!
//! The kernel names a task's cgroup by its v2 id (`bpf_get_current_cgroup_id`), which is the
//! inode number of the cgroup's directory in the cgroup2 filesystem. The map is built by walking
//! that filesystem, found in `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified host,
//! `/sys/fs/cgroup/unified` on a hybrid one), and rebuilt when an unknown id shows up.

use std::collections::HashMap;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the cgroup2 filesystem is mounted, and which cgroup its root is (`/` unless the mount
/// was made inside a cgroup namespace or of a subtree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub mount_point: PathBuf,
    /// The cgroup path of the mount's root directory.
    pub root: String,
}

/// Finds the first cgroup2 mount in the text of `/proc/self/mountinfo`.
///
/// A line is `id parent major:minor root mount_point options [optional fields] - fstype source
/// super_options`; paths escape spaces and the like as octal (`\040`).
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<Cgroup2Mount> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = before.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        Some(Cgroup2Mount {
            mount_point: PathBuf::from(unescape_octal(mount_point)),
            root: unescape_octal(root),
        })
    })
}

/// Undoes mountinfo's `\ooo` escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Joins the mount's root cgroup path and a path relative to the mount point.
fn join_cgroup(root: &str, relative: &str) -> String {
    let root = root.trim_end_matches('/');
    if relative.is_empty() {
        if root.is_empty() {
            "/".to_owned()
        } else {
            root.to_owned()
        }
    } else {
        format!("{root}/{relative}")
    }
}

/// cgroup id → cgroup path (`/`, `/system.slice/ssh.service`, ...).
#[derive(Debug)]
pub struct CgroupPaths {
    mount: Option<Cgroup2Mount>,
    by_id: HashMap<u64, String>,
}

impl CgroupPaths {
    /// Finds the cgroup2 mount (none: every id stays unknown) and walks it once.
    pub fn discover() -> CgroupPaths {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| find_cgroup2_mount(&text));
        match &mount {
            Some(m) => log::info!("cgroup v2 hierarchy at {}", m.mount_point.display()),
            None => log::warn!(
                "no cgroup2 mount in /proc/self/mountinfo; \
                 cgroup_path and container_id labels will be empty"
            ),
        }
        let mut paths = CgroupPaths::with_mount(mount);
        paths.refresh();
        paths
    }

    /// A map over the cgroup2 filesystem at `mount` (tests use a plain directory tree).
    pub fn with_mount(mount: Option<Cgroup2Mount>) -> CgroupPaths {
        CgroupPaths {
            mount,
            by_id: HashMap::new(),
        }
    }

    /// The path of cgroup `id`, if it was seen in the last walk.
    pub fn get(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// Number of cgroups known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no cgroup is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Rebuilds the map by walking the hierarchy (directories only; `d_ino` from `readdir`, so
    /// no `stat` per cgroup).
    pub fn refresh(&mut self) {
        let Some(mount) = &self.mount else {
            return;
        };
        let mut by_id = HashMap::with_capacity(self.by_id.len().max(64));
        if let Ok(meta) = std::fs::metadata(&mount.mount_point) {
            by_id.insert(meta.ino(), join_cgroup(&mount.root, ""));
        }
        let mut stack: Vec<(PathBuf, String)> = vec![(mount.mount_point.clone(), String::new())];
        while let Some((dir, relative)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue; // removed while walking
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if relative.is_empty() {
                    name
                } else {
                    format!("{relative}/{name}")
                };
                by_id.insert(entry.ino(), join_cgroup(&mount.root, &child));
                stack.push((entry.path(), child));
            }
        }
        self.by_id = by_id;
    }

    /// Whether cgroup `id` still exists: its directory is there and is still the same inode (a
    /// removed and recreated cgroup gets a new id). Unknown ids count as gone.
    pub fn exists(&self, id: u64) -> bool {
        let (Some(mount), Some(path)) = (&self.mount, self.by_id.get(&id)) else {
            return false;
        };
        let relative = path
            .strip_prefix(mount.root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        let dir: PathBuf = if relative.is_empty() {
            mount.mount_point.clone()
        } else {
            Path::new(&mount.mount_point).join(relative)
        };
        std::fs::metadata(dir).is_ok_and(|m| m.ino() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount() {
        assert_eq!(
            find_cgroup2_mount(HYBRID),
            Some(Cgroup2Mount {
                mount_point: "/sys/fs/cgroup/unified".into(),
                root: "/".into(),
            })
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_cgroup2_mount(unified).map(|m| m.mount_point),
            Some("/sys/fs/cgroup".into())
        );
        let namespaced = "1 0 0:26 /kubepods.slice/pod\\040x /host\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            find_cgroup2_mount(namespaced),
            Some(Cgroup2Mount {
                mount_point: "/host cg".into(),
                root: "/kubepods.slice/pod x".into(),
            })
        );
        assert_eq!(find_cgroup2_mount("garbage\n\n- cgroup2"), None);
        assert_eq!(
            find_cgroup2_mount(&HYBRID.replace("cgroup2 cgroup2", "ext4 x")),
            None
        );
    }

    #[test]
    fn joins_paths_under_the_mount_root() {
        assert_eq!(join_cgroup("/", ""), "/");
        assert_eq!(join_cgroup("/", "a/b"), "/a/b");
        assert_eq!(join_cgroup("/kubepods", ""), "/kubepods");
        assert_eq!(join_cgroup("/kubepods", "pod1/c"), "/kubepods/pod1/c");
    }

    #[test]
    fn maps_directory_inodes_to_paths_and_notices_removal() {
        let dir = std::env::temp_dir().join(format!("periscope-cgpaths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::create_dir_all(dir.join("c")).unwrap();
        std::fs::write(dir.join("a/cgroup.procs"), "").unwrap();
        let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
        let mut paths = CgroupPaths::with_mount(Some(Cgroup2Mount {
            mount_point: dir.clone(),
            root: "/".into(),
        }));
        paths.refresh();
        assert_eq!(paths.len(), 4, "root, a, a/b, c; files are not cgroups");
        assert_eq!(paths.get(ino("")), Some("/"));
        assert_eq!(paths.get(ino("a/b")), Some("/a/b"));
        assert_eq!(paths.get(ino("c")), Some("/c"));
        let c = ino("c");
        assert!(paths.exists(c));
        std::fs::remove_dir(dir.join("c")).unwrap();
        assert!(!paths.exists(c), "removed directory");
        assert!(!paths.exists(u64::MAX), "unknown id");
        paths.refresh();
        assert_eq!(paths.get(c), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
