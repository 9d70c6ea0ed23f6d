//! Container id and Kubernetes pod UID from a `/proc/<pid>/cgroup` file, for the layouts
//! container runtimes and the kubelet's cgroup drivers use.

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

/// Finds the Kubernetes pod UID in the text of `/proc/<pid>/cgroup` (v1 or v2).
///
/// The kubelet names one cgroup per pod, below a `kubepods` cgroup:
/// - cgroupfs driver: `/kubepods/pod<uid>/…` (Guaranteed), `/kubepods/burstable/pod<uid>/…`,
///   `/kubepods/besteffort/pod<uid>/…`;
/// - systemd driver: `/kubepods.slice/kubepods-pod<uid>.slice/…` (Guaranteed) and
///   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/…`, where the
///   UID's dashes are written as underscores (systemd reserves `-` for nesting);
/// - kind and k3s-in-docker nest the same below a node container's cgroup
///   (`/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<uid>.slice/…`,
///   `/docker/<id>/kubepods/…`).
///
/// The UID is returned with dashes (`11111111-2222-3333-4444-555555555555`), as in
/// `metadata.uid`. Static pods run under their config hash (32 hex digits, no dashes), which
/// is what their mirror pod carries in the `kubernetes.io/config.mirror` annotation. A
/// `pod…` segment only counts below a `kubepods` ancestor, so a host unit that happens to be
/// called `pod…` is not mistaken for a pod. The deepest match wins: with nested clusters the
/// innermost pod is the one the process runs in.
pub fn pod_uid(cgroup_file: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in cgroup_file.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let mut under_kubepods = false;
        for (depth, segment) in path.split('/').enumerate() {
            if under_kubepods {
                if let Some(uid) = uid_in_segment(segment) {
                    if best.as_ref().is_none_or(|(d, _)| depth > *d) {
                        best = Some((depth, uid));
                    }
                }
            }
            // Checked after the segment itself: `kubepods-pod<uid>.slice` is the pod, and its
            // parent `kubepods.slice` is the ancestor that makes it count.
            if segment.contains("kubepods") {
                under_kubepods = true;
            }
        }
    }
    best.map(|(_, uid)| uid)
}

/// `pod<uid>` (cgroupfs) or `…-pod<uid_with_underscores>.slice` (systemd) → the UID.
fn uid_in_segment(segment: &str) -> Option<String> {
    let raw = if let Some(slice) = segment.strip_suffix(".slice") {
        // `kubepods-burstable-pod<uid>.slice`: the UID follows the last `-pod`; underscores
        // never occur in the UID, so `rfind` cannot land inside it.
        let at = slice.rfind("-pod")?;
        &slice[at + "-pod".len()..]
    } else {
        segment.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (8-4-4-4-12 hex digits) or a static pod's 32-hex-digit config hash.
fn is_pod_uid(uid: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    match groups.as_slice() {
        [a, b, c, d, e] => {
            [a.len(), b.len(), c.len(), d.len(), e.len()] == [8, 4, 4, 4, 12]
                && groups.iter().all(|g| hex(g))
        }
        [hash] => hash.len() == 32 && hex(hash),
        _ => false,
    }
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

#[cfg(test)]
mod pod_uid_tests {
    use super::{container_id, pod_uid};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "11111111-2222-3333-4444-555555555555";
    const UID_: &str = "11111111_2222_3333_4444_555555555555";
    const INNER: &str = "99999999-8888-7777-6666-aaaaaaaaaaaa";
    const OUTER_ID: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    /// Each layout with the pod UID and the container id it must yield.
    fn layouts() -> Vec<(String, &'static str, &'static str)> {
        vec![
            // cgroupfs driver, v1 (several controllers) and v2.
            (
                format!("12:memory:/kubepods/burstable/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n0::/"),
                UID,
                ID,
            ),
            (format!("0::/kubepods/pod{UID}/{ID}"), UID, ID),
            (format!("0::/kubepods/besteffort/pod{UID}/{ID}"), UID, ID),
            // systemd driver: underscores in the slice name, runtime-specific scopes.
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                UID,
                ID,
            ),
            (
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                UID,
                ID,
            ),
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"),
                UID,
                ID,
            ),
            (
                format!("1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"),
                UID,
                ID,
            ),
            // kind: the node is a docker container, the kubelet runs under kubelet.slice.
            (
                format!("0::/system.slice/docker-{OUTER_ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                UID,
                ID,
            ),
            (
                format!("0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                UID,
                ID,
            ),
            // k3s in docker, cgroupfs driver below the node container's cgroup (v1).
            (
                format!("4:pids:/docker/{OUTER_ID}/kubepods/burstable/pod{UID}/{ID}"),
                UID,
                ID,
            ),
            // A cluster inside a pod of another cluster: the innermost pod wins.
            (
                format!("0::/kubepods/burstable/pod{UID}/{OUTER_ID}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice/cri-containerd-{ID}.scope", INNER.replace('-', "_")),
                INNER,
                ID,
            ),
            // Static pod: the config hash is the UID.
            (
                format!("0::/kubepods/besteffort/pod0123456789abcdef0123456789abcdef/{ID}"),
                "0123456789abcdef0123456789abcdef",
                ID,
            ),
        ]
    }

    #[test]
    fn every_layout_yields_pod_uid_and_container_id() {
        for (text, uid, id) in layouts() {
            assert_eq!(pod_uid(&text).as_deref(), Some(uid), "{text}");
            assert_eq!(container_id(&text).as_deref(), Some(id), "{text}");
        }
    }

    #[test]
    fn pod_cgroup_itself_has_uid_but_no_container() {
        // The pause-less pod cgroup (e.g. a process the kubelet put there directly).
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        );
        assert_eq!(pod_uid(&text).as_deref(), Some(UID));
        assert_eq!(container_id(&text), None);
    }

    #[test]
    fn non_pods_have_no_uid() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope".to_owned(),
            format!("0::/system.slice/docker-{ID}.scope"),
            // Looks like a pod cgroup, but no kubepods ancestor.
            format!("0::/system.slice/pod{UID}/{ID}"),
            format!("0::/machine.slice/libpod-pod{UID_}.slice"),
            // A kubepods ancestor but a malformed UID.
            "0::/kubepods/burstable/pod1234/abc".to_owned(),
            "0::/kubepods/burstable/podzzzzzzzz-2222-3333-4444-555555555555/abc".to_owned(),
            "0::/kubepods.slice/kubepods-burstable.slice".to_owned(),
            "0::/kubepods".to_owned(),
            "garbage".to_owned(),
            String::new(),
        ] {
            assert_eq!(pod_uid(&text), None, "{text}");
        }
    }
}
