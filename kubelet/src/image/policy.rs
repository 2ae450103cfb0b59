//! `imagePullPolicy` as the kubelet applies it, and the reasons a pod reports when it
//! cannot get its image.

use super::import::{Image, ImageStore, normalize};
use super::pull::PullError;

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy as written, or Kubernetes' default when it is not: `Always` for a
    /// `:latest` (or untagged) image, `IfNotPresent` otherwise.
    pub fn resolve(written: Option<&str>, image: &str) -> Self {
        match written {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ if normalize(image).ends_with(":latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Why a container's image is not there, as the pod's status says it.
#[derive(Debug, thiserror::Error)]
pub enum ImageUnavailable {
    /// `ErrImagePull` (the kubelet turns repeated ones into `ImagePullBackOff`).
    #[error("ErrImagePull: {0}")]
    Pull(#[source] PullError),
    /// `ErrImageNeverPull`: policy Never and the image is not on the node.
    #[error("ErrImageNeverPull: container image \"{0}\" is not present with pull policy of Never")]
    NeverPull(String),
}

impl ImageUnavailable {
    /// The `reason` of the container's waiting state.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageUnavailable::Pull(_) => "ErrImagePull",
            ImageUnavailable::NeverPull(_) => "ErrImageNeverPull",
        }
    }
}

impl ImageStore {
    /// The image a container needs, pulled or not as `policy` says.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> Result<Image, ImageUnavailable> {
        let present = self
            .get(image)
            .map_err(|e| ImageUnavailable::Pull(PullError::Store(e)))?;
        match (policy, present) {
            (PullPolicy::Never, Some(img)) | (PullPolicy::IfNotPresent, Some(img)) => Ok(img),
            (PullPolicy::Never, None) => Err(ImageUnavailable::NeverPull(image.to_string())),
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, None) => self
                .pull(image)
                .await
                .map(|(img, _)| img)
                .map_err(ImageUnavailable::Pull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PullPolicy;

    #[test]
    fn the_default_policy_follows_the_tag_as_kubernetes_does() {
        assert_eq!(PullPolicy::resolve(None, "busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::resolve(None, "busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::resolve(None, "busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::resolve(Some("Never"), "busybox:latest"),
            PullPolicy::Never
        );
        assert_eq!(
            PullPolicy::resolve(Some("Always"), "busybox:1.36"),
            PullPolicy::Always
        );
    }
}
