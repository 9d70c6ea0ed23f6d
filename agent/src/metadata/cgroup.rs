//! Container id from a `/proc/<pid>/cgroup` file, for the layouts container runtimes use.

/// Finds the container id in the text of `/proc/<pid>/cgroup` (v1 or v2).
///
/// Recognised path segments, with systemd or cgroupfs drivers:
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// and plain `<id>` segments (`/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`), where `<id>`
/// is 64 lowercase hex digits. The deepest match wins (nested kind/k3s hierarchies).
pub fn container_id(cgroup_file: &str) -> Option<String> {
    let mut found = None;
    for line in cgroup_file.lines() {
        // hierarchy-id:controllers:path
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for segment in path.split('/') {
            if let Some(id) = id_in_segment(segment) {
                found = Some(id.to_owned());
            }
        }
    }
    found
}

fn id_in_segment(segment: &str) -> Option<&str> {
    let trimmed = segment.strip_suffix(".scope").unwrap_or(segment);
    let candidate = trimmed.rsplit('-').next().unwrap_or(trimmed);
    let is_id = candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit());
    is_id.then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::container_id;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn layouts() {
        let cases = [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("12:memory:/docker/{ID}"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope"),
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_cd.slice/crio-{ID}.scope"),
            format!("4:cpu,cpuacct:/kubepods/burstable/pod11111111-2222-3333-4444-555555555555/{ID}"),
            format!("0::/kubepods/pod11111111-2222-3333-4444-555555555555/{ID}"),
        ];
        for case in cases {
            assert_eq!(container_id(&case).as_deref(), Some(ID), "{case}");
        }
    }

    #[test]
    fn host_processes_have_none() {
        assert_eq!(
            container_id("0::/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id("0::/"), None);
        assert_eq!(container_id("garbage"), None);
        assert_eq!(container_id(""), None);
    }
}
