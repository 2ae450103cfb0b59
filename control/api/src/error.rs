//! API errors as Kubernetes reports them: a `meta/v1 Status` with a reason, an HTTP-like code
//! and, for invalid objects, one cause per field. They travel over gRPC as a status code plus
//! the Status JSON in the details, so every client prints the same words kubectl would.

use serde::{Deserialize, Serialize};

/// The `reason` of a Kubernetes Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    /// The requested resourceVersion is older than the retained history (HTTP 410).
    Expired,
    BadRequest,
    RequestEntityTooLarge,
    Forbidden,
    MethodNotAllowed,
    Timeout,
    TooManyRequests,
    ServiceUnavailable,
    InternalError,
}

impl Reason {
    /// The HTTP status code Kubernetes pairs with this reason.
    pub fn code(self) -> u16 {
        match self {
            Reason::NotFound => 404,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Invalid => 422,
            Reason::Expired => 410,
            Reason::BadRequest => 400,
            Reason::RequestEntityTooLarge => 413,
            Reason::Forbidden => 403,
            Reason::MethodNotAllowed => 405,
            Reason::Timeout => 504,
            Reason::TooManyRequests => 429,
            Reason::ServiceUnavailable => 503,
            Reason::InternalError => 500,
        }
    }

    fn grpc_code(self) -> tonic::Code {
        match self {
            Reason::NotFound => tonic::Code::NotFound,
            Reason::AlreadyExists => tonic::Code::AlreadyExists,
            Reason::Conflict => tonic::Code::Aborted,
            Reason::Invalid | Reason::BadRequest => tonic::Code::InvalidArgument,
            Reason::Expired => tonic::Code::OutOfRange,
            Reason::RequestEntityTooLarge | Reason::TooManyRequests => {
                tonic::Code::ResourceExhausted
            }
            Reason::Forbidden => tonic::Code::PermissionDenied,
            Reason::MethodNotAllowed => tonic::Code::Unimplemented,
            Reason::Timeout => tonic::Code::DeadlineExceeded,
            Reason::ServiceUnavailable => tonic::Code::Unavailable,
            Reason::InternalError => tonic::Code::Internal,
        }
    }
}

/// One invalid field of an Invalid error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// Kubernetes' cause type: FieldValueRequired, FieldValueInvalid, FieldValueDuplicate,
    /// FieldValueNotSupported, FieldValueTooLong, FieldValueForbidden, FieldValueTypeInvalid.
    pub reason: String,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
            field: field.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, why: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: \"{value}\": {why}"),
            field: field.into(),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Cause {
            reason: "FieldValueDuplicate".into(),
            message: format!("Duplicate value: \"{value}\""),
            field: field.into(),
        }
    }

    pub fn not_supported(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        supported: &[&str],
    ) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
            field: field.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {}", why.into()),
            field: field.into(),
        }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {max} bytes"),
            field: field.into(),
        }
    }

    /// kubectl's rendering: `spec.replicas: Invalid value: "-1": must be ...`.
    pub fn render(&self) -> String {
        if self.field.is_empty() || self.message.starts_with("unknown field") {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An error as the API server reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
    /// Kind and name the error is about (details.kind / details.name), when known.
    pub kind: String,
    pub name: String,
    pub causes: Vec<Cause>,
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            reason,
            message: message.into(),
            kind: String::new(),
            name: String::new(),
            causes: Vec::new(),
        }
    }

    /// `pods "web" not found`
    pub fn not_found(resource: &str, name: &str) -> Self {
        ApiError {
            name: name.into(),
            kind: resource.into(),
            ..Self::new(Reason::NotFound, format!("{resource} \"{name}\" not found"))
        }
    }

    /// `pods "web" already exists`
    pub fn already_exists(resource: &str, name: &str) -> Self {
        ApiError {
            name: name.into(),
            kind: resource.into(),
            ..Self::new(
                Reason::AlreadyExists,
                format!("{resource} \"{name}\" already exists"),
            )
        }
    }

    /// The optimistic-concurrency failure, worded as kube-apiserver words it.
    pub fn conflict(resource: &str, name: &str) -> Self {
        ApiError {
            name: name.into(),
            kind: resource.into(),
            ..Self::new(
                Reason::Conflict,
                format!(
                    "Operation cannot be fulfilled on {resource} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again"
                ),
            )
        }
    }

    /// `Deployment.apps "web" is invalid: [spec.replicas: Invalid value: ...]`
    pub fn invalid(qualified_kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let rendered: Vec<String> = causes.iter().map(Cause::render).collect();
        let list = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        ApiError {
            reason: Reason::Invalid,
            message: format!("{qualified_kind} \"{name}\" is invalid: {list}"),
            kind: qualified_kind.into(),
            name: name.into(),
            causes,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            Reason::InternalError,
            format!("Internal error occurred: {}", message.into()),
        )
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(Reason::Expired, message)
    }

    /// The Kubernetes `meta/v1 Status` object for this error.
    pub fn to_status_json(&self) -> serde_json::Value {
        let mut details = serde_json::Map::new();
        if !self.name.is_empty() {
            details.insert("name".into(), self.name.clone().into());
        }
        if !self.kind.is_empty() {
            details.insert("kind".into(), self.kind.clone().into());
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                serde_json::to_value(&self.causes).unwrap_or_default(),
            );
        }
        let mut status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.reason.code(),
        });
        if !details.is_empty() {
            status["details"] = serde_json::Value::Object(details);
        }
        status
    }

    /// Reads a `meta/v1 Status` object back.
    pub fn from_status_json(value: &serde_json::Value) -> Option<Self> {
        let reason: Reason = serde_json::from_value(value.get("reason")?.clone()).ok()?;
        let details = value.get("details");
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(|v| v.as_str()).unwrap_or_default().to_string()
        };
        Some(ApiError {
            reason,
            message: text(value.get("message")),
            kind: text(details.and_then(|d| d.get("kind"))),
            name: text(details.and_then(|d| d.get("name"))),
            causes: details
                .and_then(|d| d.get("causes"))
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default(),
        })
    }

    /// Reads an error out of a gRPC status, whether or not it carries a Status object.
    pub fn from_grpc(status: &tonic::Status) -> Self {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(status.details())
            && let Some(err) = Self::from_status_json(&value)
        {
            return err;
        }
        let reason = match status.code() {
            tonic::Code::NotFound => Reason::NotFound,
            tonic::Code::AlreadyExists => Reason::AlreadyExists,
            tonic::Code::Aborted => Reason::Conflict,
            tonic::Code::InvalidArgument => Reason::BadRequest,
            tonic::Code::OutOfRange => Reason::Expired,
            tonic::Code::ResourceExhausted => Reason::TooManyRequests,
            tonic::Code::PermissionDenied => Reason::Forbidden,
            tonic::Code::Unimplemented => Reason::MethodNotAllowed,
            tonic::Code::DeadlineExceeded => Reason::Timeout,
            tonic::Code::Unavailable => Reason::ServiceUnavailable,
            _ => Reason::InternalError,
        };
        ApiError::new(reason, status.message().to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let details = serde_json::to_vec(&err.to_status_json()).unwrap_or_default();
        tonic::Status::with_details(err.reason.grpc_code(), err.message, details.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_grpc() {
        let err = ApiError::invalid(
            "Deployment.apps",
            "web",
            vec![
                Cause::required("spec.selector"),
                Cause::invalid("spec.replicas", -1, "must be greater than or equal to 0"),
            ],
        );
        assert_eq!(
            err.message,
            "Deployment.apps \"web\" is invalid: [spec.selector: Required value, spec.replicas: \
             Invalid value: \"-1\": must be greater than or equal to 0]"
        );
        let status: tonic::Status = err.clone().into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(ApiError::from_grpc(&status), err);
    }
}
