//! `skiff image`: the node's images (import, list) and the busybox test/demo image.

use std::path::PathBuf;

use anyhow::Context;
use skiff_kubelet::image::build::{BUSYBOX, busybox_image};
use skiff_kubelet::image::{ImageStore, LayerState};

#[derive(Debug, clap::Args)]
pub struct ImageCmd {
    /// The node agent's image directory.
    #[arg(long, default_value = "/var/lib/skiff/node/images", global = true)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImageSub,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageSub {
    /// Import images from an OCI image layout (directory or tar) or a `docker save` archive.
    Import { path: PathBuf },
    /// Pull an image from an OCI registry (plain HTTP for registries on loopback).
    Pull { reference: String },
    /// List the node's images.
    Ls,
    /// Write the busybox image (from Debian's busybox-static) as an OCI layout.
    BuildBusybox {
        /// Directory to write the layout to.
        out: PathBuf,
        #[arg(long, default_value = "skiff/busybox:latest")]
        tag: String,
    },
}

pub async fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd.command {
        ImageSub::Pull { reference } => {
            let store = ImageStore::open(&cmd.data_dir)?;
            eprintln!("pulling {reference} ...");
            let (image, report) = store
                .pull_with_progress(&reference, |p| {
                    let short: String = p.digest.chars().skip(7).take(12).collect();
                    let what = match p.state {
                        LayerState::AlreadyPresent => "already present",
                        LayerState::Downloading => "downloading",
                        LayerState::Unpacked => "unpacked",
                    };
                    eprintln!(
                        "  layer {}/{} {short} ({:.1} MB): {what}",
                        p.index + 1,
                        p.total,
                        p.size as f64 / 1e6
                    );
                })
                .await?;
            println!(
                "pulled {} ({}): {} layer(s) downloaded ({} bytes), {} already present",
                image.reference,
                image.manifest,
                report.downloaded_layers,
                report.downloaded_bytes,
                report.cached_layers
            );
            Ok(())
        }
        ImageSub::Import { path } => {
            let store = ImageStore::open(&cmd.data_dir)?;
            let images = store
                .import(&path)
                .with_context(|| format!("importing {}", path.display()))?;
            if images.is_empty() {
                anyhow::bail!("{}: no tagged image in it", path.display());
            }
            for i in images {
                println!("imported {} ({})", i.reference, i.manifest);
            }
            Ok(())
        }
        ImageSub::Ls => {
            let store = ImageStore::open(&cmd.data_dir)?;
            let mut rows = vec![vec![
                "IMAGE".to_string(),
                "MANIFEST".into(),
                "LAYERS".into(),
            ]];
            for i in store.list()? {
                rows.push(vec![
                    i.reference,
                    i.manifest.chars().take(19).collect(),
                    i.layers.len().to_string(),
                ]);
            }
            print!("{}", crate::cli::table::render(&rows));
            Ok(())
        }
        ImageSub::BuildBusybox { out, tag } => {
            let digest =
                busybox_image(&out, &tag, std::path::Path::new(BUSYBOX)).with_context(|| {
                    format!("building from {BUSYBOX} (Debian package busybox-static)")
                })?;
            println!("wrote {tag} ({digest}) to {}", out.display());
            Ok(())
        }
    }
}
