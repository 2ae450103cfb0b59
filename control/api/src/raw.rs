//! An object's JSON as the API server holds it.
//!
//! Skiff stores objects without `metadata.resourceVersion` (it is the store's mod revision)
//! and splices it in when it serves them. A [`RawObject`] is either complete JSON (what
//! arrives over gRPC) or the stored bytes, shared with the server, plus the revision and
//! where it goes: what an in-process client (the scheduler and controllers inside
//! `skiff server`) gets, so its caches hold no copy of what the server already holds.

use bytes::Bytes;
use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

/// `raw` with `"resourceVersion":"<revision>"` inserted at `at`, an index just inside the
/// top-level `metadata` object.
pub fn splice_resource_version(raw: &[u8], at: usize, revision: i64) -> Vec<u8> {
    let at = at.min(raw.len());
    let field = resource_version_field(raw, at, revision);
    let mut out = Vec::with_capacity(raw.len() + field.len());
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&raw[at..]);
    out
}

/// The text [`splice_resource_version`] inserts at `at`: the field, and a comma unless the
/// metadata object has nothing after it.
pub fn resource_version_field(raw: &[u8], at: usize, revision: i64) -> String {
    let rest = raw.get(at..).unwrap_or_default();
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    format!(
        "\"resourceVersion\":\"{revision}\"{}",
        if empty { "" } else { "," }
    )
}

/// One object's JSON: complete, or stored bytes still lacking their resourceVersion.
#[derive(Debug, Clone)]
pub struct RawObject {
    json: Bytes,
    /// Where `metadata.resourceVersion` goes into `json`, and its value.
    splice: Option<(u32, i64)>,
}

impl RawObject {
    /// Complete JSON.
    pub fn complete(json: Bytes) -> Self {
        RawObject { json, splice: None }
    }

    /// Stored JSON whose `metadata.resourceVersion` is `revision`, to be inserted at `at`.
    pub fn spliced(json: Bytes, at: u32, revision: i64) -> Self {
        RawObject {
            json,
            splice: Some((at, revision)),
        }
    }

    /// The complete JSON (a copy when the version has to be spliced in).
    pub fn json(&self) -> Bytes {
        match self.splice {
            Some((at, rev)) => Bytes::from(splice_resource_version(&self.json, at as usize, rev)),
            None => self.json.clone(),
        }
    }

    /// The bytes held, without the version when it is spliced on demand.
    pub fn stored(&self) -> &Bytes {
        &self.json
    }

    /// A copy that shares no buffer with anything else: complete JSON received in a larger
    /// message (a watch batch) would otherwise keep that whole message alive.
    pub fn detached(&self) -> Self {
        match self.splice {
            Some(_) => self.clone(),
            None => RawObject::complete(Bytes::copy_from_slice(&self.json)),
        }
    }

    /// The typed object, with its resourceVersion.
    pub fn decode<K>(&self) -> Result<K, serde_json::Error>
    where
        K: DeserializeOwned + Metadata<Ty = ObjectMeta>,
    {
        let mut obj: K = serde_json::from_slice(&self.json)?;
        if let Some((_, rev)) = self.splice {
            obj.metadata_mut().resource_version = Some(rev.to_string());
        }
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn spliced_and_complete_agree() {
        let stored = Bytes::from_static(br#"{"metadata":{"name":"a"},"data":{"k":"v"}}"#);
        let at = br#"{"metadata":{"#.len();
        let raw = RawObject::spliced(stored.clone(), at as u32, 42);
        let json = raw.json();
        let value: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert_eq!(value["metadata"]["resourceVersion"], "42");
        assert_eq!(value["metadata"]["name"], "a");
        let typed: ConfigMap = raw.decode().expect("decodes");
        assert_eq!(typed.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(typed.metadata.name.as_deref(), Some("a"));
        let complete: ConfigMap = RawObject::complete(json).decode().expect("decodes");
        assert_eq!(complete, typed);
        // The shared bytes are the stored ones, not a copy.
        assert_eq!(raw.stored().as_ptr(), stored.as_ptr());
    }

    #[test]
    fn empty_metadata_gets_no_trailing_comma() {
        let out = splice_resource_version(br#"{"metadata":{}}"#, 13, 7);
        assert_eq!(out, br#"{"metadata":{"resourceVersion":"7"}}"#);
    }
}
