//! Pod volumes: emptyDir (a directory, or tmpfs for `medium: Memory`), hostPath, configMap
//! and secret (files written from the API objects; secrets on tmpfs, never on disk).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, Volume, VolumeMount};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use skiff_client::Client;

use crate::runtime::Mount;

/// Why a volume could not be prepared: the pod's containers wait with `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeError {
    pub reason: &'static str,
    pub message: String,
}

fn config_error(message: String) -> VolumeError {
    VolumeError {
        reason: "CreateContainerConfigError",
        message,
    }
}

/// A pod's prepared volumes: name -> host path.
#[derive(Debug, Default)]
pub struct PodVolumes {
    paths: HashMap<String, PathBuf>,
}

fn tmpfs(path: &Path, size: Option<u64>) -> Result<(), VolumeError> {
    std::fs::create_dir_all(path).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    if is_mountpoint(path) {
        return Ok(());
    }
    let opts = match size {
        Some(s) => format!("mode=0777,size={s}"),
        None => "mode=0777".to_string(),
    };
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| config_error(format!("tmpfs on {}: {e}", path.display())))
}

fn is_mountpoint(path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(p)))
        .unwrap_or(false)
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<(), VolumeError> {
    let mode = default_mode.unwrap_or(0o644) as u32;
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                let v = data.get(&i.key).ok_or_else(|| {
                    config_error(format!("couldn't find key {} in {what}", i.key))
                })?;
                Ok((i.path.clone(), v, i.mode.map_or(mode, |m| m as u32)))
            })
            .collect::<Result<_, VolumeError>>()?,
        None => data.iter().map(|(k, v)| (k.clone(), v, mode)).collect(),
    };
    for (rel, body, mode) in files {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(config_error(format!("{what}: invalid path {rel:?}")));
        }
        let p = dir.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| config_error(e.to_string()))?;
        }
        std::fs::write(&p, body).map_err(|e| config_error(format!("{}: {e}", p.display())))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| config_error(e.to_string()))?;
    }
    Ok(())
}

impl PodVolumes {
    /// Prepares every volume of `pod` under `dir`.
    pub async fn prepare(
        pod: &Pod,
        dir: &Path,
        client: &Client,
    ) -> Result<PodVolumes, VolumeError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = PodVolumes::default();
        let spec = pod.spec.as_ref();
        for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
            let path = prepare_one(v, ns, dir, client).await?;
            out.paths.insert(v.name.clone(), path);
        }
        Ok(out)
    }

    /// The bind mount of one volumeMount.
    pub fn mount_for(&self, vm: &VolumeMount) -> Result<Mount, VolumeError> {
        let base = self.paths.get(&vm.name).ok_or_else(|| {
            config_error(format!("volume {:?} is not defined in the pod", vm.name))
        })?;
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
                    return Err(config_error(format!("subPath {sub:?} must be relative")));
                }
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| config_error(e.to_string()))?;
                }
                p
            }
            None => base.clone(),
        };
        let file = source.is_file();
        Ok(Mount {
            source,
            target: vm.mount_path.clone(),
            readonly: vm.read_only.unwrap_or(false),
            file,
        })
    }

    /// Unmounts the tmpfs volumes and removes the pod's volume directories.
    pub fn teardown(dir: &Path) -> std::io::Result<()> {
        let vols = dir.join("volumes");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let prefix = vols.to_string_lossy().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = umount2(p, MntFlags::MNT_DETACH);
            }
        }
        match std::fs::remove_dir_all(&vols) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn prepare_one(
    v: &Volume,
    ns: &str,
    dir: &Path,
    client: &Client,
) -> Result<PathBuf, VolumeError> {
    let vols = dir.join("volumes");
    let mk = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| config_error(format!("{}: {e}", p.display())))
    };
    if let Some(ed) = &v.empty_dir {
        let p = vols.join("empty-dir").join(&v.name);
        if ed.medium.as_deref() == Some("Memory") {
            let size = ed
                .size_limit
                .as_ref()
                .and_then(|q| skiff_api::validation::parse_quantity(&q.0))
                .map(|n| n as u64);
            tmpfs(&p, size)?;
        } else {
            mk(&p)?;
        }
        // Any user of the pod may write it, as the kubelet's emptyDir is 0777.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| config_error(e.to_string()))?;
        return Ok(p);
    }
    if let Some(hp) = &v.host_path {
        let p = PathBuf::from(&hp.path);
        let kind = hp.type_.as_deref().unwrap_or("");
        let bad = |what: &str| {
            config_error(format!(
                "hostPath type check failed: {} is not a {what}",
                hp.path
            ))
        };
        match kind {
            "DirectoryOrCreate" => mk(&p)?,
            "Directory" if !p.is_dir() => return Err(bad("directory")),
            "FileOrCreate" if !p.exists() => {
                if let Some(parent) = p.parent() {
                    mk(parent)?;
                }
                std::fs::write(&p, b"").map_err(|e| config_error(e.to_string()))?;
            }
            "File" if !p.is_file() => return Err(bad("file")),
            "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                return Err(bad(kind));
            }
            _ => {}
        }
        return Ok(p);
    }
    if let Some(cm) = &v.config_map {
        let p = vols.join("configmap").join(&v.name);
        mk(&p)?;
        let api = client.api::<ConfigMap>(ns);
        match api.get_opt(&cm.name).await {
            Ok(Some(obj)) => {
                let mut data: BTreeMap<String, Vec<u8>> = obj
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in obj.binary_data.unwrap_or_default() {
                    data.insert(k, v.0);
                }
                let what = format!("configmap {:?}", cm.name);
                write_items(&p, &data, cm.items.as_ref(), cm.default_mode, &what)?;
            }
            Ok(None) if cm.optional == Some(true) => {}
            Ok(None) => return Err(config_error(format!("configmap \"{}\" not found", cm.name))),
            Err(e) => return Err(config_error(e.to_string())),
        }
        return Ok(p);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let p = vols.join("secret").join(&v.name);
        tmpfs(&p, None)?;
        let api = client.api::<Secret>(ns);
        match api.get_opt(&name).await {
            Ok(Some(obj)) => {
                let mut data: BTreeMap<String, Vec<u8>> = obj
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in obj.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                let what = format!("secret {name:?}");
                write_items(&p, &data, s.items.as_ref(), s.default_mode, &what)?;
            }
            Ok(None) if s.optional == Some(true) => {}
            Ok(None) => return Err(config_error(format!("secret \"{name}\" not found"))),
            Err(e) => return Err(config_error(e.to_string())),
        }
        return Ok(p);
    }
    Err(config_error(format!(
        "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported",
        v.name
    )))
}
