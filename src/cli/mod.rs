//! kubectl-style verbs against the API server: apply, create, get, describe, delete.
//! Output and error wording follow kubectl's, so users' scripts and habits carry over.

pub mod describe;
pub mod rollout;
pub mod table;
pub mod terminal;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::bail;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::codec::{Document, decode_manifests};
use skiff_api::resource::{self, ResourceInfo};
use skiff_api::{ApiError, Reason};
use skiff_client::{Client, DeleteParams, ListParams, RawEvent};

/// Annotation holding the manifest last applied (kubectl's name, so tools agree).
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A failure already reported to the user: exit non-zero without printing more.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Reported {}

/// `Error from server (NotFound): pods "x" not found`
pub fn server_error(e: &ApiError) -> String {
    match e.reason {
        Reason::ServiceUnavailable if e.message.starts_with("The connection") => e.message.clone(),
        reason => format!("Error from server ({reason:?}): {}", e.message),
    }
}

/// kubectl's `kind.group` spelling in messages: `deployment.apps`, `service`.
pub fn kind_ref(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.kind.to_ascii_lowercase()
    } else {
        format!("{}.{}", info.kind.to_ascii_lowercase(), info.group)
    }
}

fn meta<'a>(v: &'a Value, field: &str) -> &'a str {
    v.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Reads every manifest named by `-f` (files, directories of .yaml/.yml/.json, or `-`).
pub fn read_manifests(paths: &[String]) -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    for p in paths {
        if p == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            docs.extend(decode_manifests(&text, "STDIN")?);
            continue;
        }
        let path = Path::new(p);
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("error reading {p}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("the path \"{}\" cannot be read: {e}", f.display()))?;
            docs.extend(decode_manifests(&text, &f.display().to_string())?);
        }
    }
    if docs.is_empty() {
        bail!("no objects passed to apply");
    }
    Ok(docs)
}

/// Validates every document locally before anything is sent, so a bad manifest applies
/// nothing.
fn check_all(docs: &[Document]) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for d in docs {
        if let Err(e) = skiff_api::object::admit(d.info, d.value.clone()) {
            errors.push(format!(
                "error: document {} (line {}): {}",
                d.index, d.line, e.message
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!(
            "error: {} of {} objects are invalid; nothing was applied",
            errors.len(),
            docs.len()
        );
        Err(Reported.into())
    }
}

/// Refuses the whole manifest if an object's namespace neither exists nor is created by
/// the manifest itself.
async fn check_namespaces(
    client: &Client,
    docs: &[Document],
    default_ns: &str,
) -> anyhow::Result<()> {
    let created: Vec<String> = docs
        .iter()
        .filter(|d| d.info.kind == "Namespace")
        .map(Document::name)
        .collect();
    let mut known = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for d in docs.iter().filter(|d| d.info.namespaced) {
        let ns = namespace_for(d, default_ns);
        if created.contains(&ns) {
            continue;
        }
        if !known.contains_key(&ns) {
            let exists = match client.get("namespaces", "", &ns).await {
                Ok(_) => true,
                Err(e) if e.reason == Reason::NotFound => false,
                Err(e) => bail!(server_error(&e)),
            };
            known.insert(ns.clone(), exists);
        }
        if !known[&ns] {
            errors.push(format!(
                "error: document {} (line {}): namespaces \"{ns}\" not found",
                d.index, d.line
            ));
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("{e}");
    }
    eprintln!("error: nothing was applied");
    Err(Reported.into())
}

fn namespace_for(d: &Document, default_ns: &str) -> String {
    if !d.info.namespaced {
        return String::new();
    }
    let ns = meta(&d.value, "namespace");
    if ns.is_empty() {
        default_ns.to_string()
    } else {
        ns.to_string()
    }
}

/// The merge patch that moves `live` to `desired`: every field of `desired`, plus a null for
/// each field that `last` (the previous manifest) had and `desired` no longer has. Fields
/// nobody put in a manifest (set by controllers or `skiff scale`) stay as they are.
pub fn apply_patch(last: Option<&Value>, desired: &Value) -> Value {
    match (last, desired) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in new {
                out.insert(k.clone(), apply_patch(old.get(k), v));
            }
            for k in old.keys() {
                if !new.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        (_, v) => v.clone(),
    }
}

pub async fn apply(
    client: &Client,
    files: &[String],
    default_ns: &str,
    create_only: bool,
) -> anyhow::Result<()> {
    let docs = read_manifests(files)?;
    check_all(&docs)?;
    check_namespaces(client, &docs, default_ns).await?;
    let mut failed = 0;
    for d in &docs {
        let ns = namespace_for(d, default_ns);
        let name = d.name();
        let what = format!("{}/{}", kind_ref(d.info), name);
        let mut desired = d.value.clone();
        if d.info.namespaced {
            desired["metadata"]["namespace"] = json!(ns);
        }
        let result = if create_only {
            client
                .create(
                    d.info.plural,
                    &ns,
                    Bytes::from(serde_json::to_vec(&desired)?),
                )
                .await
                .map(|_| "created")
        } else {
            apply_one(client, d.info, &ns, &name, desired).await
        };
        match result {
            Ok(verb) => println!("{what} {verb}"),
            Err(e) => {
                failed += 1;
                eprintln!("{}", server_error(&e));
            }
        }
    }
    if failed > 0 {
        Err(Reported.into())
    } else {
        Ok(())
    }
}

async fn apply_one(
    client: &Client,
    info: &'static ResourceInfo,
    ns: &str,
    name: &str,
    desired: Value,
) -> Result<&'static str, ApiError> {
    let manifest =
        serde_json::to_string(&desired).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut with_annotation = desired.clone();
    with_annotation["metadata"]["annotations"][LAST_APPLIED] = json!(manifest);
    match client.get(info.plural, ns, name).await {
        Err(e) if e.reason == Reason::NotFound => {
            let body = serde_json::to_vec(&with_annotation)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            client.create(info.plural, ns, Bytes::from(body)).await?;
            Ok("created")
        }
        Err(e) => Err(e),
        Ok(live) => {
            let live: Value =
                serde_json::from_slice(&live).map_err(|e| ApiError::internal(e.to_string()))?;
            let last: Option<Value> = live
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(LAST_APPLIED))
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str(s).ok());
            let mut last_with_annotation = last.clone();
            if let Some(l) = last_with_annotation.as_mut() {
                l["metadata"]["annotations"][LAST_APPLIED] = json!("");
            }
            let patch = apply_patch(last_with_annotation.as_ref(), &with_annotation);
            let before = meta(&live, "resourceVersion").to_string();
            let body =
                serde_json::to_vec(&patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let after = client
                .patch(info.plural, ns, name, Bytes::from(body), "")
                .await?;
            let after: Value =
                serde_json::from_slice(&after).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(if meta(&after, "resourceVersion") == before {
                "unchanged"
            } else {
                "configured"
            })
        }
    }
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => Output::Table,
            "wide" => Output::Wide,
            "yaml" => Output::Yaml,
            "json" => Output::Json,
            "name" => Output::Name,
            other => {
                return Err(format!(
                    "unable to match a printer suitable for the output format {other:?}, allowed formats are: json,name,wide,yaml"
                ));
            }
        })
    }
}

pub(crate) fn resolve(kind: &str) -> anyhow::Result<&'static ResourceInfo> {
    resource::by_name(kind)
        .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type \"{kind}\""))
}

/// Splits `get` arguments into (resource, names): `pods a b`, `pod/a`, `pods,svc`.
fn targets(args: &[String]) -> anyhow::Result<Vec<(&'static ResourceInfo, Vec<String>)>> {
    let Some(first) = args.first() else {
        bail!(
            "You must specify the type of resource to get. Use \"skiff api-resources\" for a complete list of supported resources."
        );
    };
    if first.contains('/') {
        let mut out: Vec<(&'static ResourceInfo, Vec<String>)> = Vec::new();
        for a in args {
            let (kind, name) = a
                .split_once('/')
                .ok_or_else(|| anyhow::anyhow!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'skiff get resource/<resource_name>' instead of 'skiff get resource resource/<resource_name>'"))?;
            let info = resolve(kind)?;
            match out.iter_mut().find(|(i, _)| i.plural == info.plural) {
                Some((_, names)) => names.push(name.to_string()),
                None => out.push((info, vec![name.to_string()])),
            }
        }
        return Ok(out);
    }
    let kinds: Vec<&'static ResourceInfo> =
        first.split(',').map(resolve).collect::<Result<_, _>>()?;
    if kinds.len() > 1 && args.len() > 1 {
        bail!("a resource cannot be retrieved by name across all types");
    }
    Ok(kinds.into_iter().map(|k| (k, args[1..].to_vec())).collect())
}

pub struct GetArgs<'a> {
    pub args: &'a [String],
    pub namespace: &'a str,
    pub all_namespaces: bool,
    pub labels: &'a str,
    pub fields: &'a str,
    pub output: Output,
    pub watch: bool,
}

fn list_document(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

fn print_objects(output: Output, objects: &[Value], single: bool) -> anyhow::Result<()> {
    match output {
        Output::Yaml => {
            let doc = if single {
                objects[0].clone()
            } else {
                list_document(objects.to_vec())
            };
            print!("{}", serde_yaml_ng::to_string(&doc)?);
        }
        Output::Json => {
            let doc = if single {
                objects[0].clone()
            } else {
                list_document(objects.to_vec())
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        _ => {}
    }
    Ok(())
}

pub async fn get(client: &Client, a: GetArgs<'_>) -> anyhow::Result<()> {
    let targets = targets(a.args)?;
    let multi_kind = targets.len() > 1;
    let mut failed = false;
    let mut collected: Vec<Value> = Vec::new();
    let mut single = false;
    let mut printed_any = false;
    let mut widths = Vec::new();
    for (info, names) in &targets {
        let ns = if a.all_namespaces || !info.namespaced {
            ""
        } else {
            a.namespace
        };
        let mut objects: Vec<Value> = Vec::new();
        let mut list_rv = String::new();
        if names.is_empty() {
            let params = ListParams::default().labels(a.labels).fields(a.fields);
            let list = client
                .list(info.plural, ns, &params)
                .await
                .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
            list_rv = list.resource_version;
            for item in &list.items {
                objects.push(serde_json::from_slice(item)?);
            }
        } else {
            single = names.len() == 1 && !multi_kind;
            for n in names {
                match client.get(info.plural, a.namespace, n).await {
                    Ok(o) => objects.push(serde_json::from_slice(&o)?),
                    Err(e) => {
                        failed = true;
                        eprintln!("{}", server_error(&e));
                    }
                }
            }
        }
        match a.output {
            Output::Yaml | Output::Json => collected.extend(objects),
            Output::Name => {
                for o in &objects {
                    println!("{}/{}", kind_ref(info), meta(o, "name"));
                }
            }
            Output::Table | Output::Wide => {
                if objects.is_empty() {
                    if names.is_empty() && !multi_kind {
                        if ns.is_empty() {
                            eprintln!("No resources found");
                        } else {
                            eprintln!("No resources found in {ns} namespace.");
                        }
                    }
                } else {
                    if printed_any {
                        println!();
                    }
                    printed_any = true;
                    let style = TableStyle {
                        wide: a.output == Output::Wide,
                        with_namespace: a.all_namespaces && info.namespaced,
                        prefix_kind: multi_kind,
                        with_header: true,
                    };
                    let (text, w) = table_text(info, &objects, style, &[]);
                    widths = w;
                    print!("{text}");
                }
            }
        }
        if a.watch {
            return watch(
                client,
                info,
                ns,
                a.labels,
                a.fields,
                &list_rv,
                a.output,
                a.all_namespaces,
                widths,
            )
            .await;
        }
    }
    if matches!(a.output, Output::Yaml | Output::Json) && (!collected.is_empty() || !single) {
        print_objects(a.output, &collected, single && collected.len() == 1)?;
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// How `get` lays out a table.
#[derive(Debug, Clone, Copy)]
pub struct TableStyle {
    pub wide: bool,
    pub with_namespace: bool,
    pub prefix_kind: bool,
    pub with_header: bool,
}

/// A table of objects of one kind, with columns at least `min_widths` wide; returns the
/// text and the widths used (so later rows can line up).
pub fn table_text(
    info: &ResourceInfo,
    objects: &[Value],
    style: TableStyle,
    min_widths: &[usize],
) -> (String, Vec<usize>) {
    let TableStyle {
        wide,
        with_namespace,
        prefix_kind,
        with_header,
    } = style;
    let mut rows = Vec::new();
    if with_header {
        let mut h: Vec<String> = table::headers(info, wide)
            .into_iter()
            .map(String::from)
            .collect();
        if with_namespace {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for o in objects {
        let mut r = table::row(info, o, wide);
        if prefix_kind && info.plural != "events" {
            r[0] = format!("{}/{}", kind_ref(info), r[0]);
        }
        if with_namespace {
            r.insert(0, meta(o, "namespace").to_string());
        }
        rows.push(r);
    }
    table::render_aligned(&rows, min_widths)
}

#[allow(clippy::too_many_arguments)]
async fn watch(
    client: &Client,
    info: &'static ResourceInfo,
    ns: &str,
    labels: &str,
    fields: &str,
    from: &str,
    output: Output,
    all_namespaces: bool,
    mut widths: Vec<usize>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let params = ListParams::default().labels(labels).fields(fields);
    let mut stream = client
        .watch(info.plural, ns, &params, from, false)
        .await
        .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
    while let Some(ev) = stream.next().await {
        let obj = match ev.map_err(|e| anyhow::anyhow!(server_error(&e)))? {
            RawEvent::Added(o) | RawEvent::Modified(o) | RawEvent::Deleted(o) => o,
            RawEvent::Bookmark(..) => continue,
        };
        let v: Value = serde_json::from_slice(&obj)?;
        match output {
            Output::Name => println!("{}/{}", kind_ref(info), meta(&v, "name")),
            Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
            Output::Yaml => print!("---\n{}", serde_yaml_ng::to_string(&v)?),
            _ => {
                let style = TableStyle {
                    wide: output == Output::Wide,
                    with_namespace: all_namespaces && info.namespaced,
                    prefix_kind: false,
                    with_header: false,
                };
                let (text, w) = table_text(info, &[v], style, &widths);
                widths = w;
                print!("{text}");
            }
        }
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

pub async fn describe(client: &Client, args: &[String], namespace: &str) -> anyhow::Result<()> {
    let targets = targets(args)?;
    let mut failed = false;
    let mut first = true;
    for (info, names) in targets {
        let objects: Vec<Value> = if names.is_empty() {
            let list = client
                .list(
                    info.plural,
                    if info.namespaced { namespace } else { "" },
                    &ListParams::default(),
                )
                .await
                .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
            list.items
                .iter()
                .filter_map(|b| serde_json::from_slice(b).ok())
                .collect()
        } else {
            let mut out = Vec::new();
            for n in names {
                match client.get(info.plural, namespace, &n).await {
                    Ok(b) => out.push(serde_json::from_slice(&b)?),
                    Err(e) => {
                        failed = true;
                        eprintln!("{}", server_error(&e));
                    }
                }
            }
            out
        };
        for o in objects {
            if !first {
                println!();
            }
            first = false;
            print!("{}", describe::describe(client, info, &o).await);
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

pub struct DeleteArgs<'a> {
    pub args: &'a [String],
    pub files: &'a [String],
    pub namespace: &'a str,
    pub all: bool,
    pub labels: &'a str,
    pub grace_period: Option<i64>,
    pub ignore_not_found: bool,
}

pub async fn delete(client: &Client, a: DeleteArgs<'_>) -> anyhow::Result<()> {
    let mut work: Vec<(&'static ResourceInfo, String, String)> = Vec::new();
    if !a.files.is_empty() {
        for d in read_manifests(a.files)? {
            let ns = namespace_for(&d, a.namespace);
            work.push((d.info, ns, d.name()));
        }
    } else {
        if a.args.is_empty() {
            bail!("You must provide one or more resources by argument or filename.");
        }
        for (info, names) in targets(a.args)? {
            let ns = if info.namespaced {
                a.namespace.to_string()
            } else {
                String::new()
            };
            if names.is_empty() {
                if !a.all && a.labels.is_empty() {
                    bail!("resource(s) were provided, but no name was specified");
                }
                let list = client
                    .list(info.plural, &ns, &ListParams::default().labels(a.labels))
                    .await
                    .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
                for item in &list.items {
                    let v: Value = serde_json::from_slice(item)?;
                    work.push((info, ns.clone(), meta(&v, "name").to_string()));
                }
                if list.items.is_empty() {
                    eprintln!("No resources found");
                }
            } else {
                for n in names {
                    work.push((info, ns.clone(), n));
                }
            }
        }
    }
    let params = DeleteParams {
        grace_period_seconds: a.grace_period,
        ..Default::default()
    };
    let mut failed = false;
    for (info, ns, name) in work {
        match client.delete(info.plural, &ns, &name, &params).await {
            Ok(_) => println!("{} \"{name}\" deleted", kind_ref(info)),
            Err(e) if e.reason == Reason::NotFound && a.ignore_not_found => {}
            Err(e) => {
                failed = true;
                eprintln!("{}", server_error(&e));
            }
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    client
        .create("namespaces", "", Bytes::from(serde_json::to_vec(&body)?))
        .await
        .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
    println!("namespace/{name} created");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_patch_removes_only_what_the_manifest_dropped() {
        let last = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1, "y": 2}});
        let desired = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 3}});
        let patch = apply_patch(Some(&last), &desired);
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {"a": "1", "b": null}}, "spec": {"x": 3, "y": null}})
        );
        assert_eq!(apply_patch(None, &desired), desired);
    }
}
