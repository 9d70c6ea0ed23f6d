//! Real cgroups with the names kubelet gives them, so attribution is tested against the kernel's
//! own `/proc/<pid>/cgroup` text, in both the v2 (systemd driver) and v1 (cgroupfs driver)
//! layouts.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A cgroup directory the test made (with its parents), removed again on drop after its
/// processes are moved back to the root.
pub struct TestCgroup {
    /// The hierarchy's mount point (`/sys/fs/cgroup/unified`, `/sys/fs/cgroup/pids`, ...).
    root: PathBuf,
    /// The created directories, outermost first.
    created: Vec<PathBuf>,
}

impl TestCgroup {
    /// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`
    /// under the cgroup v2 mount: what kubelet's systemd driver makes for containerd.
    pub fn v2_systemd(qos: &str, pod_uid: &str, container_id: &str) -> anyhow::Result<TestCgroup> {
        let root = mount_point("cgroup2", None)?;
        let uid = pod_uid.replace('-', "_");
        let path = format!(
            "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice/cri-containerd-{container_id}.scope"
        );
        TestCgroup::create(root, &path)
    }

    /// `kubepods/<qos>/pod<uid>/<id>` under a cgroup v1 hierarchy (the `pids` controller's):
    /// what kubelet's cgroupfs driver makes.
    pub fn v1_cgroupfs(qos: &str, pod_uid: &str, container_id: &str) -> anyhow::Result<TestCgroup> {
        let root = mount_point("cgroup", Some("pids"))?;
        let path = format!("kubepods/{qos}/pod{pod_uid}/{container_id}");
        TestCgroup::create(root, &path)
    }

    fn create(root: PathBuf, relative: &str) -> anyhow::Result<TestCgroup> {
        let mut cgroup = TestCgroup {
            root: root.clone(),
            created: Vec::new(),
        };
        let mut dir = root;
        for part in relative.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .with_context(|| format!("creating cgroup {}", dir.display()))?;
                cgroup.created.push(dir.clone());
            }
        }
        Ok(cgroup)
    }

    /// The innermost directory.
    pub fn path(&self) -> &Path {
        self.created.last().map_or(&self.root, |p| p.as_path())
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.path().join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.path().display()))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where a hierarchy is mounted: the cgroup2 mount, or the v1 mount carrying `controller`.
pub(crate) fn mount_point(fstype: &str, controller: Option<&str>) -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // ... mount-point ... - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        if right.next() != Some(fstype) {
            continue;
        }
        let options = right.nth(1).unwrap_or_default();
        if let Some(c) = controller {
            if !options.split(',').any(|o| o == c) {
                continue;
            }
        }
        if let Some(mount) = left.split(' ').nth(4) {
            return Ok(PathBuf::from(mount));
        }
    }
    anyhow::bail!(
        "no {fstype} hierarchy{} is mounted",
        controller.map(|c| format!(" with {c}")).unwrap_or_default()
    )
}
