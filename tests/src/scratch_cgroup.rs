//! Fresh cgroup v2 directories for tests that count what one process does.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Where the cgroup2 filesystem is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    crate::cgroup::mount_point("cgroup2", None)
}

/// A new, empty cgroup `/<parent>/<leaf>` under the cgroup2 mount, removed (leaf, then
/// parent) on drop. The parent's name is unique to this process and moment, so that the leaf
/// can carry a fixed name (such as `docker-<id>.scope`).
#[derive(Debug)]
pub struct ScratchCgroup {
    mount: PathBuf,
    parent: PathBuf,
    leaf: PathBuf,
    removed: bool,
}

impl ScratchCgroup {
    /// Creates `periscope-e2e-<pid>-<nanos>/<leaf_name>`.
    pub fn new(leaf_name: &str) -> anyhow::Result<ScratchCgroup> {
        let mount = cgroup2_mount()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let parent = mount.join(format!("periscope-e2e-{}-{nanos}", std::process::id()));
        let leaf = parent.join(leaf_name);
        std::fs::create_dir_all(&leaf)
            .with_context(|| format!("creating cgroup {} (needs root)", leaf.display()))?;
        Ok(ScratchCgroup {
            mount,
            parent,
            leaf,
            removed: false,
        })
    }

    /// The leaf's directory, where a process joins by writing its pid to `cgroup.procs`.
    pub fn dir(&self) -> &Path {
        &self.leaf
    }

    /// The leaf's cgroup path (`/periscope-e2e-…/<leaf>`), as the kernel and the agent name it.
    pub fn path(&self) -> String {
        let relative = self.leaf.strip_prefix(&self.mount).unwrap_or(&self.leaf);
        format!("/{}", relative.display())
    }

    /// The leaf's cgroup id: its directory's inode number.
    pub fn id(&self) -> anyhow::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(&self.leaf)?.ino())
    }

    /// Removes both directories; fails while a process is still in the cgroup.
    pub fn remove(&mut self) -> anyhow::Result<()> {
        if self.removed {
            return Ok(());
        }
        for dir in [&self.leaf, &self.parent] {
            if let Err(e) = std::fs::remove_dir(dir) {
                bail!("removing cgroup {}: {e}", dir.display());
            }
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir(&self.leaf);
            let _ = std::fs::remove_dir(&self.parent);
        }
    }
}
