//! Where the CLI finds the API server: `--server`, then `SKIFF_SERVER`, then the config file
//! that `skiff server` and `skiff up` write (`$SKIFF_CONFIG`, default `~/.skiff/config`),
//! then 127.0.0.1:6443.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    pub server: String,
}

/// The config file path.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".skiff").join("config")
}

pub fn load() -> Option<ClientConfig> {
    let text = std::fs::read_to_string(path()).ok()?;
    serde_yaml_ng::from_str(&text).ok()
}

pub fn save(config: &ClientConfig) -> anyhow::Result<()> {
    let p = path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_yaml_ng::to_string(config)?;
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// The server address to use.
pub fn server(flag: Option<&str>) -> String {
    if let Some(s) = flag.filter(|s| !s.is_empty()) {
        return s.to_string();
    }
    if let Ok(s) = std::env::var("SKIFF_SERVER")
        && !s.is_empty()
    {
        return s;
    }
    load()
        .map(|c| c.server)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| skiff_client::DEFAULT_SERVER.to_string())
}
