//! What is watched: `--include-*` / `--exclude-*` by namespace, pod labels, workload,
//! container, executable and port.
//!
//! A connection is watched when, for every criterion whose include list is set, it matches
//! one entry, and it matches no exclude entry. The Kubernetes criteria (namespace, labels,
//! workload, container) see a process's pod: a process that is not in a pod matches no
//! Kubernetes entry (so an include list of namespaces leaves host processes out); a process in
//! a pod the cluster view does not know yet is watched until it does ([`Verdict::Undecided`]),
//! never excluded on a guess.
//!
//! A process excluded by what it *is* (everything but the port) is excluded in the kernel from
//! its next connection on (`EXCLUDED`: no byte of it is copied again); the connection that
//! revealed it is muted. A port is a property of one connection: such a connection is muted
//! at its first event, so at most its first read or write is copied.
//!
//! Defaults: the agent itself (always, in the kernel), the `kube-system` namespace, and the
//! monitoring stack's own scrapers ([`DEFAULT_EXCLUDED_EXECUTABLES`]); `--exclude-namespaces=`
//! and `--exclude-executables=` (empty) watch them too.

use crate::metadata::ProcessInfo;

/// Executables excluded unless `--exclude-executables` says otherwise: the scrapers and
/// collectors of a monitoring stack, whose own requests are not the workload's.
pub const DEFAULT_EXCLUDED_EXECUTABLES: &str =
    "prometheus,otelcol,otelcol-contrib,alloy,grafana-agent,vmagent,vmalert";

/// What to do with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Watch,
    /// Not watched, because of its process: every connection of the process is excluded.
    ExcludeProcess,
    /// Not watched, because of this connection (its port).
    ExcludeConnection,
    /// Watched for now: the process's pod is not known yet, and a Kubernetes criterion is set.
    Undecided,
}

/// One include and one exclude list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lists<T> {
    pub include: Vec<T>,
    pub exclude: Vec<T>,
}

impl<T> Lists<T> {
    fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// `Some(false)` when excluded or not included, by `matches`.
    fn admits(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.include.is_empty() || self.include.iter().any(&matches))
            && !self.exclude.iter().any(matches)
    }
}

/// A port or an inclusive range of ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ports(pub u16, pub u16);

/// One term of a label selector (equality-based, as `kubectl -l`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A workload: its name, with its kind (`Deployment`, `StatefulSet`, …) if given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub kind: Option<String>,
    pub name: String,
}

/// Every criterion.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    pub namespaces: Lists<String>,
    /// Label selectors: a pod is included when it matches every term of the include
    /// selector, excluded when it matches every term of the exclude selector.
    pub labels: Lists<Vec<LabelTerm>>,
    pub workloads: Lists<Workload>,
    pub containers: Lists<String>,
    /// Glob patterns (`*`) over the executable's name, or its path when the pattern has a `/`.
    pub executables: Lists<String>,
    pub ports: Lists<Ports>,
}

impl Selection {
    /// Whether nothing is selected away (every connection is watched).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.labels.is_empty()
            && self.workloads.is_empty()
            && self.containers.is_empty()
            && self.executables.is_empty()
            && self.ports.is_empty()
    }

    fn kubernetes_criteria(&self) -> bool {
        !(self.namespaces.is_empty()
            && self.labels.is_empty()
            && self.workloads.is_empty()
            && self.containers.is_empty())
    }

    /// The verdict on a connection of `process` to or from `server_port`.
    pub fn judge(&self, process: &ProcessInfo, server_port: Option<u16>) -> Verdict {
        let exe = |pattern: &String| {
            if pattern.contains('/') {
                glob(pattern, &process.exe_path)
            } else {
                glob(pattern, process.executable_name()) || glob(pattern, &process.comm)
            }
        };
        if !self.executables.admits(exe) {
            return Verdict::ExcludeProcess;
        }
        if self.kubernetes_criteria() {
            match &process.k8s {
                Some(pod) => {
                    let admitted = self.namespaces.admits(|n| *n == pod.namespace)
                        && self.containers.admits(|c| *c == pod.container_name)
                        && self.workloads.admits(|w| {
                            w.name == pod.owner_name
                                && w.kind
                                    .as_ref()
                                    .is_none_or(|k| k.eq_ignore_ascii_case(&pod.owner_kind))
                        })
                        && self.labels.admits(|selector| {
                            selector.iter().all(|term| term.matches(&pod.labels))
                        });
                    if !admitted {
                        return Verdict::ExcludeProcess;
                    }
                }
                // In a pod not known yet: judged again at its next connection.
                None if process.pod_uid.is_some() || process.container_id.is_some() => {
                    return self.judge_port(server_port, Verdict::Undecided)
                }
                None => {
                    // Not in a pod: only the exclude lists' absence lets it through an
                    // include list.
                    let included = self.namespaces.include.is_empty()
                        && self.containers.include.is_empty()
                        && self.workloads.include.is_empty()
                        && self.labels.include.is_empty();
                    if !included {
                        return Verdict::ExcludeProcess;
                    }
                }
            }
        }
        self.judge_port(server_port, Verdict::Watch)
    }

    fn judge_port(&self, port: Option<u16>, otherwise: Verdict) -> Verdict {
        if self.ports.is_empty() {
            return otherwise;
        }
        let admitted = match port {
            Some(p) => self.ports.admits(|r| (r.0..=r.1).contains(&p)),
            None => self.ports.include.is_empty(),
        };
        if admitted {
            otherwise
        } else {
            Verdict::ExcludeConnection
        }
    }
}

impl LabelTerm {
    fn matches(&self, labels: &[(String, String)]) -> bool {
        let get = |key: &str| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        match self {
            LabelTerm::Equals(k, v) => get(k) == Some(v),
            LabelTerm::NotEquals(k, v) => get(k) != Some(v),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::Absent(k) => get(k).is_none(),
        }
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A label selector: every term must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<LabelTerm>);

/// Parses a label selector: `key=value`, `key==value`, `key!=value`, `key`, `!key`, joined
/// by commas; the error names the term.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    terms(text).map(Selector)
}

fn terms(text: &str) -> Result<Vec<LabelTerm>, String> {
    let mut terms = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let parsed = if let Some((k, v)) = term.split_once("!=") {
            LabelTerm::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelTerm::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some(k) = term.strip_prefix('!') {
            LabelTerm::Absent(k.trim().to_owned())
        } else {
            LabelTerm::Exists(term.to_owned())
        };
        let key = match &parsed {
            LabelTerm::Equals(k, _)
            | LabelTerm::NotEquals(k, _)
            | LabelTerm::Exists(k)
            | LabelTerm::Absent(k) => k,
        };
        if key.is_empty() || key.contains(['=', '!', ' ']) {
            return Err(format!(
                "{term:?} is not a label selector term (key=value, key!=value, key, !key)"
            ));
        }
        terms.push(parsed);
    }
    Ok(terms)
}

/// Parses `8080`, `8000-8100`.
pub fn parse_ports(text: &str) -> Result<Ports, String> {
    let bad = || format!("{text:?} is not a port or a port range (8080, 8000-8100)");
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok(Ports(a, b))
}

/// Parses `name` or `Kind/name`.
pub fn parse_workload(text: &str) -> Workload {
    match text.split_once('/') {
        Some((kind, name)) => Workload {
            kind: Some(kind.trim().to_owned()),
            name: name.trim().to_owned(),
        },
        None => Workload {
            kind: None,
            name: text.trim().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metadata::K8sIdentity;

    fn process(exe: &str, path: &str, pod: Option<K8sIdentity>) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            comm: exe.to_owned(),
            exe_name: exe.to_owned(),
            exe_path: path.to_owned(),
            env_service_name: None,
            container_id: pod.as_ref().map(|_| "c1".to_owned()),
            service_name: exe.to_owned(),
            pod_uid: pod.as_ref().map(|p| p.pod_uid.clone()),
            k8s: pod.map(Arc::new),
            seq: 0,
        }
    }

    fn pod(
        namespace: &str,
        kind: &str,
        owner: &str,
        container: &str,
        labels: &[(&str, &str)],
    ) -> K8sIdentity {
        K8sIdentity {
            namespace: namespace.to_owned(),
            pod_name: format!("{owner}-0"),
            pod_uid: "u1".to_owned(),
            container_name: container.to_owned(),
            owner_kind: kind.to_owned(),
            owner_name: owner.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..K8sIdentity::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn globs() {
        for (pattern, text, want) in [
            ("python*", "python3.11", true),
            ("python*", "ipython", false),
            ("*gunicorn*", "/usr/bin/gunicorn3", true),
            ("nginx", "nginx", true),
            ("nginx", "nginx2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("*", "", true),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob(pattern, text), want, "{pattern} {text}");
        }
    }

    #[test]
    fn executables_and_ports() {
        let s = Selection {
            executables: Lists {
                include: vec![],
                exclude: strings(&["python*", "/opt/*/bin/java"]),
            },
            ports: Lists {
                include: vec![],
                exclude: vec![Ports(9000, 9100)],
            },
            ..Selection::default()
        };
        let p = |exe: &str, path: &str| process(exe, path, None);
        assert_eq!(
            s.judge(&p("python3.11", "/usr/bin/python3.11"), Some(80)),
            Verdict::ExcludeProcess
        );
        assert_eq!(
            s.judge(&p("java", "/opt/jdk/bin/java"), Some(80)),
            Verdict::ExcludeProcess
        );
        assert_eq!(
            s.judge(&p("java", "/usr/bin/java"), Some(80)),
            Verdict::Watch
        );
        assert_eq!(
            s.judge(&p("nginx", "/usr/sbin/nginx"), Some(9050)),
            Verdict::ExcludeConnection
        );
        assert_eq!(
            s.judge(&p("nginx", "/usr/sbin/nginx"), Some(8080)),
            Verdict::Watch
        );
        let only = Selection {
            ports: Lists {
                include: vec![Ports(8080, 8080)],
                exclude: vec![],
            },
            ..Selection::default()
        };
        assert_eq!(only.judge(&p("nginx", ""), Some(8080)), Verdict::Watch);
        assert_eq!(
            only.judge(&p("nginx", ""), Some(80)),
            Verdict::ExcludeConnection
        );
        assert_eq!(
            only.judge(&p("nginx", ""), None),
            Verdict::ExcludeConnection
        );
    }

    #[test]
    fn kubernetes_criteria_see_the_pod_and_wait_for_it() {
        let s = Selection {
            namespaces: Lists {
                include: strings(&["shop", "pay"]),
                exclude: vec![],
            },
            workloads: Lists {
                include: vec![],
                exclude: vec![parse_workload("StatefulSet/db")],
            },
            labels: Lists {
                include: vec![],
                exclude: vec![parse_selector("tier=batch,!keep").unwrap().0],
            },
            containers: Lists {
                include: vec![],
                exclude: strings(&["istio-proxy"]),
            },
            ..Selection::default()
        };
        let judge = |id: K8sIdentity| s.judge(&process("app", "", Some(id)), Some(80));
        assert_eq!(
            judge(pod("shop", "Deployment", "web", "app", &[])),
            Verdict::Watch
        );
        assert_eq!(
            judge(pod("dev", "Deployment", "web", "app", &[])),
            Verdict::ExcludeProcess
        );
        assert_eq!(
            judge(pod("shop", "StatefulSet", "db", "app", &[])),
            Verdict::ExcludeProcess
        );
        assert_eq!(
            judge(pod("shop", "Deployment", "db", "app", &[])),
            Verdict::Watch
        );
        assert_eq!(
            judge(pod("shop", "Deployment", "web", "istio-proxy", &[])),
            Verdict::ExcludeProcess
        );
        assert_eq!(
            judge(pod("shop", "Job", "nightly", "app", &[("tier", "batch")])),
            Verdict::ExcludeProcess
        );
        assert_eq!(
            judge(pod(
                "shop",
                "Job",
                "nightly",
                "app",
                &[("tier", "batch"), ("keep", "")]
            )),
            Verdict::Watch
        );
        // A pod not known yet: watched until it is; a host process: not in the namespaces.
        let mut unknown = process("app", "", None);
        unknown.pod_uid = Some("u2".into());
        assert_eq!(s.judge(&unknown, Some(80)), Verdict::Undecided);
        assert_eq!(
            s.judge(&process("curl", "", None), Some(80)),
            Verdict::ExcludeProcess
        );
        // Exclude lists alone leave host processes watched.
        let excl = Selection {
            namespaces: Lists {
                include: vec![],
                exclude: strings(&["kube-system"]),
            },
            ..Selection::default()
        };
        assert_eq!(
            excl.judge(&process("curl", "", None), Some(80)),
            Verdict::Watch
        );
        assert_eq!(
            excl.judge(
                &process(
                    "dns",
                    "",
                    Some(pod("kube-system", "Deployment", "coredns", "c", &[]))
                ),
                Some(53)
            ),
            Verdict::ExcludeProcess
        );
    }

    #[test]
    fn parsing_names_the_bad_term() {
        assert_eq!(
            parse_selector("app=web, tier!=batch,canary,!legacy")
                .unwrap()
                .0,
            vec![
                LabelTerm::Equals("app".into(), "web".into()),
                LabelTerm::NotEquals("tier".into(), "batch".into()),
                LabelTerm::Exists("canary".into()),
                LabelTerm::Absent("legacy".into()),
            ]
        );
        assert!(parse_selector("=x").unwrap_err().contains("\"=x\""));
        assert_eq!(parse_ports("8000-8100"), Ok(Ports(8000, 8100)));
        assert_eq!(parse_ports("443"), Ok(Ports(443, 443)));
        assert!(parse_ports("9-1").unwrap_err().contains("9-1"));
        assert!(parse_ports("http").is_err());
        assert_eq!(
            parse_workload("Deployment/web"),
            Workload {
                kind: Some("Deployment".into()),
                name: "web".into()
            }
        );
    }
}
