//! kubectl's table output: the same columns per kind, aligned as kubectl's tabwriter aligns
//! them (three spaces between columns), and its AGE format.

use serde_json::Value;
use skiff_api::resource::ResourceInfo;

/// kubectl's `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        format!("{}y{}d", d / 365, d % 365)
    } else {
        format!("{}y", d / 365)
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or_default()
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

/// Age of an object from its creationTimestamp.
pub fn age(obj: &Value) -> String {
    age_of(s(obj, "/metadata/creationTimestamp"))
}

pub fn age_of(timestamp: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(timestamp) {
        Ok(t) => human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

fn selector_text(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn label_selector_text(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = s(e, "/key");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match s(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn containers_and_images(spec: Option<&Value>) -> (String, String) {
    let cs = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// kubectl's pod STATUS column.
pub fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (n, c) in pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if i(c, "/state/terminated/exitCode") == 0 && c.pointer("/state/terminated").is_some() {
            continue;
        }
        initializing = true;
        let waiting = s(c, "/state/waiting/reason");
        let term = s(c, "/state/terminated/reason");
        reason = if !term.is_empty() {
            format!("Init:{term}")
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{n}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .rev()
        {
            let waiting = s(c, "/state/waiting/reason");
            let term = s(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if !term.is_empty() {
                reason = term.to_string();
            } else if c.pointer("/state/terminated").is_some() {
                let sig = i(c, "/state/terminated/signal");
                reason = if sig != 0 {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", i(c, "/state/terminated/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", i(p, "/port")),
                None => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn external_ip(svc: &Value) -> String {
    match s(svc, "/spec/type") {
        "LoadBalancer" => {
            let ips: Vec<&str> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").and_then(Value::as_str))
                .collect();
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        _ => {
            let ips: Vec<&str> = svc
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if ips.is_empty() {
                "<none>".into()
            } else {
                ips.join(",")
            }
        }
    }
}

fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| match s(c, "/status") {
            "True" => "Ready",
            "False" => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_string()
    }
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .collect();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(node: &Value, kind: &str) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| s(a, "/type") == kind)
        .map(|a| s(a, "/address").to_string())
        .unwrap_or_else(|| "<none>".into())
}

/// Column headers of `info`'s table.
pub fn headers(info: &ResourceInfo, wide: bool) -> Vec<&'static str> {
    let mut h: Vec<&'static str> = match info.plural {
        "pods" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "services" => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        "deployments" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "replicasets" => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "namespaces" => vec!["NAME", "STATUS", "AGE"],
        "nodes" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "configmaps" => vec!["NAME", "DATA", "AGE"],
        "secrets" => vec!["NAME", "TYPE", "DATA", "AGE"],
        "endpointslices" => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "leases" => vec!["NAME", "HOLDER", "AGE"],
        "events" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match info.plural {
            "pods" => h.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]),
            "services" => h.push("SELECTOR"),
            "deployments" | "replicasets" => h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]),
            "nodes" => h.extend([
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ]),
            _ => {}
        }
    }
    h
}

/// One table row for `obj`.
pub fn row(info: &ResourceInfo, obj: &Value, wide: bool) -> Vec<String> {
    let name = s(obj, "/metadata/name").to_string();
    let age = age(obj);
    let mut r = match info.plural {
        "pods" => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
            vec![
                name,
                format!("{ready}/{total}"),
                pod_status(obj),
                restarts.to_string(),
                age,
            ]
        }
        "services" => vec![
            name,
            s(obj, "/spec/type").to_string(),
            or_none(s(obj, "/spec/clusterIP")),
            external_ip(obj),
            service_ports(obj),
            age,
        ],
        "deployments" => vec![
            name,
            format!(
                "{}/{}",
                i(obj, "/status/readyReplicas"),
                i(obj, "/spec/replicas")
            ),
            i(obj, "/status/updatedReplicas").to_string(),
            i(obj, "/status/availableReplicas").to_string(),
            age,
        ],
        "replicasets" => vec![
            name,
            i(obj, "/spec/replicas").to_string(),
            i(obj, "/status/replicas").to_string(),
            i(obj, "/status/readyReplicas").to_string(),
            age,
        ],
        "namespaces" => vec![name, s(obj, "/status/phase").to_string(), age],
        "nodes" => vec![
            name,
            node_status(obj),
            node_roles(obj),
            age,
            s(obj, "/status/nodeInfo/kubeletVersion").to_string(),
        ],
        "configmaps" => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, n.to_string(), age]
        }
        "secrets" => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, s(obj, "/type").to_string(), n.to_string(), age]
        }
        "endpointslices" => {
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| i(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let shown = if addrs.is_empty() {
                "<unset>".to_string()
            } else if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            let ports = if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            };
            vec![name, s(obj, "/addressType").to_string(), ports, shown, age]
        }
        "leases" => vec![name, or_none(s(obj, "/spec/holderIdentity")), age],
        "events" => {
            let last = [
                s(obj, "/lastTimestamp"),
                s(obj, "/eventTime"),
                s(obj, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            vec![
                age_of(last),
                s(obj, "/type").to_string(),
                s(obj, "/reason").to_string(),
                format!(
                    "{}/{}",
                    s(obj, "/involvedObject/kind").to_ascii_lowercase(),
                    s(obj, "/involvedObject/name")
                ),
                s(obj, "/message").to_string(),
            ]
        }
        _ => vec![name, age],
    };
    if wide {
        match info.plural {
            "pods" => {
                let nominated = or_none(s(obj, "/status/nominatedNodeName"));
                r.extend([
                    or_none(s(obj, "/status/podIP")),
                    or_none(s(obj, "/spec/nodeName")),
                    nominated,
                    "<none>".into(),
                ]);
            }
            "services" => r.push(selector_text(obj.pointer("/spec/selector"))),
            "deployments" | "replicasets" => {
                let (c, im) = containers_and_images(obj.pointer("/spec/template/spec"));
                r.extend([
                    c,
                    im,
                    obj.pointer("/spec/selector")
                        .map(label_selector_text)
                        .unwrap_or_else(|| "<none>".into()),
                ]);
            }
            "nodes" => r.extend([
                node_address(obj, "InternalIP"),
                node_address(obj, "ExternalIP"),
                or_none(s(obj, "/status/nodeInfo/osImage")),
                or_none(s(obj, "/status/nodeInfo/kernelVersion")),
                or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion")),
            ]),
            _ => {}
        }
    }
    r
}

/// Renders rows as kubectl's tabwriter does: columns padded to their widest cell plus
/// three spaces; the last column unpadded.
pub fn render(rows: &[Vec<String>]) -> String {
    render_aligned(rows, &[]).0
}

/// Like [`render`], with columns at least `min_widths` wide (so rows printed later, as
/// `get -w` does, line up under an earlier table); returns the widths used.
pub fn render_aligned(rows: &[Vec<String>], min_widths: &[usize]) -> (String, Vec<usize>) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            let widest = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0);
            widest.max(min_widths.get(c).copied().unwrap_or(0))
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    (out, widths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_kubectl() {
        for (secs, text) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (400 * 86400, "400d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), text, "{secs}");
        }
    }
}
