//! Manifest decoding: multi-document YAML or JSON, as `kubectl apply -f` reads it. Errors name
//! the source, the document and the line, and for typed errors the field path.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resource::{self, ResourceInfo};

/// One object of a manifest.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based position of the YAML document in its source.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub info: &'static ResourceInfo,
    pub value: Value,
}

impl Document {
    pub fn name(&self) -> String {
        crate::object::object_name(&self.value)
    }
}

/// A manifest that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {index} (line {line}): {message}")]
pub struct DecodeError {
    pub source_name: String,
    pub index: usize,
    pub line: usize,
    pub message: String,
}

/// Splits YAML text into documents at `---` markers, keeping each one's first line.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker || line == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            if marker && let Some(rest) = line.strip_prefix("---") {
                // `--- {inline: doc}` keeps its content on the marker line.
                if !rest.trim().is_empty() && !rest.trim_start().starts_with('#') {
                    current.push_str(rest);
                    current.push('\n');
                    start = i + 1;
                }
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// A YAML error's message without its location suffix, and its 1-based line within the chunk.
fn yaml_error(err: &serde_yaml_ng::Error) -> (String, Option<usize>) {
    let text = err.to_string();
    let message = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    (message, err.location().map(|l| l.line()))
}

fn type_check<K: DeserializeOwned>(chunk: &str) -> Result<(), (String, Option<usize>)> {
    let de = serde_yaml_ng::Deserializer::from_str(chunk);
    match serde_path_to_error::deserialize::<_, K>(de) {
        Ok(_) => Ok(()),
        Err(e) => {
            let path = e.path().to_string();
            let (message, line) = yaml_error(e.inner());
            if message.starts_with(&path) {
                Err((message, line))
            } else {
                Err((format!("{path}: {message}"), line))
            }
        }
    }
}

/// Decodes every object of a manifest. `source_name` (a file name or "STDIN") prefixes errors.
pub fn decode_manifests(text: &str, source_name: &str) -> Result<Vec<Document>, DecodeError> {
    let mut out = Vec::new();
    let mut index = 0;
    for (start, chunk) in split_documents(text) {
        if is_blank(&chunk) {
            continue;
        }
        index += 1;
        let err = |line: usize, message: String| DecodeError {
            source_name: source_name.to_string(),
            index,
            line,
            message,
        };
        let value: Value = serde_yaml_ng::from_str(&chunk).map_err(|e| {
            let (message, line) = yaml_error(&e);
            // An error found at the end of input belongs to the document's last line.
            let last = chunk.lines().count().max(1);
            err(start + line.unwrap_or(1).clamp(1, last) - 1, message)
        })?;
        if value.is_null() {
            continue;
        }
        let items = if value.get("kind").and_then(Value::as_str) == Some("List") {
            match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => return Err(err(start, "a List needs an items array".into())),
            }
        } else {
            vec![value]
        };
        for value in items {
            if !value.is_object() {
                return Err(err(start, "expected an object (a YAML mapping)".into()));
            }
            let api_version = value.get("apiVersion").and_then(Value::as_str);
            let kind = value.get("kind").and_then(Value::as_str);
            let (api_version, kind) = match (api_version, kind) {
                (Some(a), Some(k)) => (a, k),
                (a, k) => {
                    let mut missing = Vec::new();
                    if a.is_none() {
                        missing.push("apiVersion not set");
                    }
                    if k.is_none() {
                        missing.push("kind not set");
                    }
                    return Err(err(
                        start,
                        format!("error validating data: [{}]", missing.join(", ")),
                    ));
                }
            };
            let info = resource::by_kind(api_version, kind).ok_or_else(|| {
                err(
                    start,
                    format!("no matches for kind \"{kind}\" in version \"{api_version}\""),
                )
            })?;
            out.push(Document {
                index,
                line: start,
                info,
                value,
            });
        }
        if out.last().is_some_and(|d| d.index == index)
            && let Some(kind) = out.last().map(|d| d.info.kind)
            && chunk_is_single_object(&chunk)
        {
            let checked: Result<(), (String, Option<usize>)> =
                crate::dispatch_kind!(kind, type_check(&chunk), Ok(()));
            if let Err((message, line)) = checked {
                return Err(err(start + line.unwrap_or(1) - 1, message));
            }
        }
    }
    Ok(out)
}

fn chunk_is_single_object(chunk: &str) -> bool {
    !chunk.lines().any(|l| l.trim() == "kind: List")
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    const MANIFEST: &str = "\
# a comment before the first document
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  a: b
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
---
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
";

    #[test]
    fn multi_document_manifests_decode() {
        let docs = decode_manifests(MANIFEST, "app.yaml").expect("valid");
        let summary: Vec<String> = docs
            .iter()
            .map(|d| format!("{} {} {} line {}", d.index, d.info.kind, d.name(), d.line))
            .collect();
        expect![[r#"
            [
                "1 ConfigMap cfg line 3",
                "2 Deployment web line 10",
                "3 Service web line 18",
            ]
        "#]]
        .assert_debug_eq(&summary);
    }

    #[test]
    fn json_decodes_too() {
        let docs = decode_manifests(
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#,
            "ns.json",
        )
        .expect("valid");
        assert_eq!(docs[0].info.kind, "Namespace");
    }

    #[test]
    fn errors_name_document_line_and_field() {
        let bad_syntax = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: [x\n";
        let err = decode_manifests(bad_syntax, "a.yaml").expect_err("syntax");
        assert_eq!((err.index, err.line), (2, 5), "{err}");

        let bad_kind = "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n";
        expect![[r#"a.yaml: document 1 (line 1): no matches for kind "Widget" in version "v1""#]]
            .assert_eq(
                &decode_manifests(bad_kind, "a.yaml")
                    .expect_err("kind")
                    .to_string(),
            );

        let missing = "metadata: {name: w}\n";
        expect![
            "a.yaml: document 1 (line 1): error validating data: [apiVersion not set, kind not set]"
        ]
        .assert_eq(
            &decode_manifests(missing, "a.yaml")
                .expect_err("missing")
                .to_string(),
        );

        let bad_type = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: three\n";
        let err = decode_manifests(bad_type, "d.yaml").expect_err("type");
        assert_eq!(err.line, 7, "{err}");
        assert!(
            err.message.starts_with("spec.replicas: invalid type"),
            "{err}"
        );
    }
}
