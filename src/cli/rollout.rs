//! `skiff scale` and `skiff rollout status|history|undo|restart`, with kubectl's wording.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use skiff_client::Client;

use super::{kind_ref, resolve, server_error};

/// `kind name` or `kind/name`.
fn target(args: &[String]) -> anyhow::Result<(&'static skiff_api::resource::ResourceInfo, String)> {
    let (kind, name) = match args {
        [one] if one.contains('/') => one
            .split_once('/')
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .unwrap_or_default(),
        [kind, name] => (kind.clone(), name.clone()),
        _ => bail!("expected a resource and a name: TYPE NAME or TYPE/NAME (e.g. deployment/web)"),
    };
    if name.is_empty() {
        bail!("expected a resource and a name: TYPE NAME or TYPE/NAME (e.g. deployment/web)");
    }
    Ok((resolve(&kind)?, name))
}

fn deployment_target(args: &[String]) -> anyhow::Result<String> {
    let (info, name) = target(args)?;
    if info.kind != "Deployment" {
        bail!("no rollout support for {} (only deployments)", info.plural);
    }
    Ok(name)
}

/// `skiff scale TYPE NAME --replicas N`.
pub async fn scale(
    client: &Client,
    args: &[String],
    ns: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    if replicas < 0 {
        bail!("--replicas: must be 0 or more, got {replicas}");
    }
    let (info, name) = target(args)?;
    if !matches!(info.kind, "Deployment" | "ReplicaSet") {
        bail!(
            "cannot scale {}: only deployments and replicasets have replicas",
            info.plural
        );
    }
    let patch = json!({"spec": {"replicas": replicas}});
    client
        .patch(
            info.plural,
            ns,
            &name,
            bytes::Bytes::from(patch.to_string()),
            "",
        )
        .await
        .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
    println!("{}/{name} scaled", kind_ref(info));
    Ok(())
}

/// What `rollout status` waits for: None when done, else kubectl's waiting line.
fn progress(d: &Deployment) -> Option<String> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    if st.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return Some("Waiting for deployment spec update to be observed...".to_string());
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    if updated < want {
        return Some(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {want} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return Some(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return Some(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    None
}

pub async fn status(
    client: &Client,
    args: &[String],
    ns: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let name = deployment_target(args)?;
    let api = client.api::<Deployment>(ns);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last = String::new();
    loop {
        let d = api
            .get(&name)
            .await
            .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
        match progress(&d) {
            None => {
                println!("deployment \"{name}\" successfully rolled out");
                return Ok(());
            }
            Some(line) => {
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
        }
        if deadline.is_some_and(|t| Instant::now() > t) {
            bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn history(client: &Client, args: &[String], ns: &str) -> anyhow::Result<()> {
    let name = deployment_target(args)?;
    let (_, sets) = skiff_controllers::deployment::history(client, ns, &name)
        .await
        .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
    println!("deployment.apps/{name}");
    let mut rows = vec![vec!["REVISION".to_string(), "CHANGE-CAUSE".into()]];
    for (rev, rs) in sets {
        let cause = rs
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/change-cause"))
            .cloned()
            .unwrap_or_else(|| "<none>".into());
        rows.push(vec![rev.to_string(), cause]);
    }
    print!("{}", super::table::render(&rows));
    Ok(())
}

pub async fn undo(
    client: &Client,
    args: &[String],
    ns: &str,
    to_revision: i64,
) -> anyhow::Result<()> {
    let name = deployment_target(args)?;
    skiff_controllers::deployment::rollback(client, ns, &name, to_revision)
        .await
        .map_err(|e| anyhow::anyhow!(server_error(&e)))
        .with_context(|| format!("rolling back deployment {name}"))?;
    println!("deployment.apps/{name} rolled back");
    Ok(())
}

pub async fn restart(client: &Client, args: &[String], ns: &str) -> anyhow::Result<()> {
    let name = deployment_target(args)?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}});
    client
        .api::<Deployment>(ns)
        .patch(&name, &patch)
        .await
        .map_err(|e| anyhow::anyhow!(server_error(&e)))?;
    println!("deployment.apps/{name} restarted");
    Ok(())
}
