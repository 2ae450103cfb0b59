//! `skiff describe`: kubectl's human-readable description of one object, with its Events.

use std::fmt::Write;

use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use skiff_client::{Client, ListParams};

use super::table::{age_of, pod_status};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn map_lines(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => "<none>".into(),
    }
}

/// Describe output: `Key:  value` lines aligned per indentation level, as kubectl's
/// tabwriter aligns them; multi-line values continue at the value column.
enum Line {
    Kv(usize, String, String),
    Text(String),
}

struct Out {
    lines: Vec<Line>,
}

impl Out {
    fn new() -> Self {
        Out { lines: Vec::new() }
    }

    fn kv(&mut self, indent: usize, key: &str, value: impl std::fmt::Display) {
        self.lines
            .push(Line::Kv(indent, format!("{key}:"), value.to_string()));
    }

    fn line(&mut self, text: impl std::fmt::Display) {
        for l in text.to_string().split('\n') {
            self.lines.push(Line::Text(l.to_string()));
        }
    }

    fn render(&self) -> String {
        let mut widths = std::collections::HashMap::new();
        for l in &self.lines {
            if let Line::Kv(indent, key, _) = l {
                let w = widths.entry(*indent).or_insert(0usize);
                *w = (*w).max(key.len() + 2);
            }
        }
        let mut text = String::new();
        for l in &self.lines {
            match l {
                Line::Kv(indent, key, value) => {
                    let width = widths[indent];
                    let mut parts = value.split('\n');
                    let first = parts.next().unwrap_or_default();
                    let _ = writeln!(text, "{}{key:<width$}{first}", " ".repeat(*indent));
                    for more in parts {
                        let _ = writeln!(text, "{}{more}", " ".repeat(indent + width));
                    }
                }
                Line::Text(t) => {
                    let _ = writeln!(text, "{t}");
                }
            }
        }
        text
    }
}

fn header(o: &mut Out, info: &ResourceInfo, obj: &Value) {
    o.kv(0, "Name", s(obj, "/metadata/name"));
    if info.namespaced {
        o.kv(0, "Namespace", s(obj, "/metadata/namespace"));
    }
    o.kv(0, "Labels", map_lines(obj.pointer("/metadata/labels")));
    let mut ann = obj.pointer("/metadata/annotations").cloned();
    if let Some(m) = ann.as_mut().and_then(Value::as_object_mut) {
        m.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o.kv(0, "Annotations", map_lines(ann.as_ref()));
}

fn containers(o: &mut Out, spec: &Value, statuses: Option<&Value>) {
    let list = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    o.line("Containers:");
    for c in &list {
        let name = s(c, "/name");
        o.line(format!("  {name}:"));
        o.kv(4, "Image", s(c, "/image"));
        let ports: Vec<String> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.get("containerPort")
                        .and_then(Value::as_i64)
                        .unwrap_or_default(),
                    s(p, "/protocol")
                )
            })
            .collect();
        o.kv(
            4,
            "Port",
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(", ")
            },
        );
        if let Some(cmd) = c.get("command").and_then(Value::as_array) {
            let parts: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
            o.kv(4, "Command", parts.join(" "));
        }
        if let Some(args) = c.get("args").and_then(Value::as_array) {
            let parts: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
            o.kv(4, "Args", parts.join(" "));
        }
        if let Some(st) = statuses
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| s(x, "/name") == name))
        {
            let state = st
                .get("state")
                .and_then(Value::as_object)
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_default();
            let mut chars = state.chars();
            let state = chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default();
            o.kv(4, "State", state);
            if let Some(r) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
                o.kv(6, "Reason", r);
            }
            o.kv(
                4,
                "Ready",
                st.get("ready")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
                    .replace("true", "True")
                    .replace("false", "False"),
            );
            o.kv(
                4,
                "Restart Count",
                st.get("restartCount")
                    .and_then(Value::as_i64)
                    .unwrap_or_default(),
            );
        }
        let env: Vec<String> = c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}:  {}",
                    s(e, "/name"),
                    e.get("value")
                        .and_then(Value::as_str)
                        .unwrap_or("<set from a source>")
                )
            })
            .collect();
        o.kv(
            4,
            "Environment",
            if env.is_empty() {
                "<none>".into()
            } else {
                env.join("\n      ")
            },
        );
    }
}

fn events(o: &mut Out, events: &[Value]) {
    if events.is_empty() {
        o.kv(0, "Events", "<none>");
        return;
    }
    o.line("Events:");
    let mut rows = vec![vec![
        "Type".to_string(),
        "Reason".into(),
        "Age".into(),
        "From".into(),
        "Message".into(),
    ]];
    rows.push(rows[0].iter().map(|h| "-".repeat(h.len())).collect());
    for e in events {
        let when = [
            s(e, "/lastTimestamp"),
            s(e, "/eventTime"),
            s(e, "/metadata/creationTimestamp"),
        ]
        .into_iter()
        .find(|t| !t.is_empty())
        .unwrap_or_default();
        rows.push(vec![
            s(e, "/type").into(),
            s(e, "/reason").into(),
            age_of(when),
            s(e, "/source/component").into(),
            s(e, "/message").into(),
        ]);
    }
    for line in super::table::render(&rows).lines() {
        o.line(format!("  {line}"));
    }
}

/// Describes one object.
pub async fn describe(client: &Client, info: &ResourceInfo, obj: &Value) -> String {
    let mut o = Out::new();
    header(&mut o, info, obj);
    match info.kind {
        "Pod" => {
            let node = s(obj, "/spec/nodeName");
            let host = s(obj, "/status/hostIP");
            o.kv(
                0,
                "Node",
                if node.is_empty() {
                    "<none>".into()
                } else if host.is_empty() {
                    node.to_string()
                } else {
                    format!("{node}/{host}")
                },
            );
            o.kv(0, "Status", pod_status(obj));
            let ip = s(obj, "/status/podIP");
            o.kv(0, "IP", if ip.is_empty() { "" } else { ip });
            if let Some(spec) = obj.get("spec") {
                containers(&mut o, spec, obj.pointer("/status/containerStatuses"));
            }
            let conds: Vec<String> = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| format!("  {:<26}{}", s(c, "/type"), s(c, "/status")))
                .collect();
            if !conds.is_empty() {
                o.line("Conditions:");
                o.line(format!("  {:<26}{}", "Type", "Status"));
                for c in conds {
                    o.line(c);
                }
            }
            o.kv(0, "QoS Class", s(obj, "/status/qosClass"));
        }
        "Deployment" => {
            o.kv(
                0,
                "CreationTimestamp",
                s(obj, "/metadata/creationTimestamp"),
            );
            o.kv(
                0,
                "Selector",
                map_lines(obj.pointer("/spec/selector/matchLabels")).replace('\n', ","),
            );
            let n = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or_default();
            o.kv(
                0,
                "Replicas",
                format!(
                    "{} desired | {} updated | {} total | {} available | {} unavailable",
                    n("/spec/replicas"),
                    n("/status/updatedReplicas"),
                    n("/status/replicas"),
                    n("/status/availableReplicas"),
                    n("/status/unavailableReplicas")
                ),
            );
            o.kv(0, "StrategyType", s(obj, "/spec/strategy/type"));
            o.kv(0, "MinReadySeconds", n("/spec/minReadySeconds"));
            if s(obj, "/spec/strategy/type") == "RollingUpdate" {
                let text = |p: &str| {
                    obj.pointer(p)
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .unwrap_or_default()
                };
                o.kv(
                    0,
                    "RollingUpdateStrategy",
                    format!(
                        "{} max unavailable, {} max surge",
                        text("/spec/strategy/rollingUpdate/maxUnavailable"),
                        text("/spec/strategy/rollingUpdate/maxSurge")
                    ),
                );
            }
            o.line("Pod Template:");
            o.kv(
                2,
                "Labels",
                map_lines(obj.pointer("/spec/template/metadata/labels")),
            );
            if let Some(spec) = obj.pointer("/spec/template/spec") {
                let mut inner = Out::new();
                containers(&mut inner, spec, None);
                for l in inner.render().lines() {
                    o.line(format!("  {l}"));
                }
            }
        }
        "Service" => {
            o.kv(
                0,
                "Selector",
                map_lines(obj.pointer("/spec/selector")).replace('\n', ","),
            );
            o.kv(0, "Type", s(obj, "/spec/type"));
            o.kv(0, "IP Family Policy", s(obj, "/spec/ipFamilyPolicy"));
            o.kv(0, "IP", s(obj, "/spec/clusterIP"));
            for p in obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = s(p, "/name");
                let name = if name.is_empty() { "<unset>" } else { name };
                let proto = s(p, "/protocol");
                o.kv(
                    0,
                    "Port",
                    format!(
                        "{name}  {}/{proto}",
                        p.get("port").and_then(Value::as_i64).unwrap_or_default()
                    ),
                );
                let target = p
                    .get("targetPort")
                    .map(|t| {
                        t.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| t.to_string())
                    })
                    .unwrap_or_default();
                o.kv(0, "TargetPort", format!("{target}/{proto}"));
                if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                    o.kv(0, "NodePort", format!("{name}  {np}/{proto}"));
                }
            }
            o.kv(0, "Session Affinity", s(obj, "/spec/sessionAffinity"));
        }
        "ConfigMap" | "Secret" => {
            if info.kind == "Secret" {
                o.kv(0, "Type", s(obj, "/type"));
            }
            o.line("");
            o.line("Data\n====");
            for (k, v) in obj
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if info.kind == "Secret" {
                    let len = v.as_str().map_or(0, |b| b.len() * 3 / 4);
                    o.line(format!("{k}:  {len} bytes"));
                } else {
                    o.line(format!("{k}:\n----\n{}\n", v.as_str().unwrap_or_default()));
                }
            }
        }
        _ => {
            for section in ["spec", "status"] {
                if let Some(v) = obj.get(section) {
                    o.line(format!(
                        "{}:",
                        section[..1].to_ascii_uppercase() + &section[1..]
                    ));
                    for l in serde_yaml_ng::to_string(v).unwrap_or_default().lines() {
                        o.line(format!("  {l}"));
                    }
                }
            }
        }
    }
    let ns = s(obj, "/metadata/namespace");
    let selector = format!(
        "involvedObject.name={},involvedObject.kind={}",
        s(obj, "/metadata/name"),
        info.kind
    );
    let found: Vec<Value> = client
        .list("events", ns, &ListParams::default().fields(&selector))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter_map(|b| serde_json::from_slice(b).ok())
                .collect()
        })
        .unwrap_or_default();
    events(&mut o, &found);
    o.render()
}
