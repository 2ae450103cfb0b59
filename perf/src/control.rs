//! Control-plane benchmarks: durable writes, watch fan-out and API latency, each measured on
//! Skiff (the `skiff server` binary, embedded store, through the gRPC API) and on etcd
//! (Debian's etcd-server, through etcd-client), in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use skiff_client::{Client, ListParams, RawEvent};
use skiff_store::etcd_server::EtcdServer;

use crate::report::Measurement;
use crate::{Mode, SkiffServer, cpu_time, median, settled_rss_bytes};

/// The API server alone, as etcd runs alone: the scheduler and the controllers it hosts by
/// default would share its cores and memory with what is measured.
const API_ONLY: &[&str] = &["--no-scheduler", "--no-controllers"];

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

async fn etcd_client(server: &EtcdServer) -> anyhow::Result<etcd_client::Client> {
    Ok(etcd_client::Client::connect([server.endpoint.as_str()], None).await?)
}

async fn skiff_clients(address: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Client::connect(address)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }
    Ok(out)
}

fn configmap(name: &str, payload: &str) -> Bytes {
    Bytes::from(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": payload}}).to_string())
}

/// One ConfigMap's JSON, encoded once and split around its name: a write only puts its
/// name in, as etcd's writer only formats its key around a payload encoded once.
struct ConfigMapTemplate {
    head: Bytes,
    tail: Bytes,
}

impl ConfigMapTemplate {
    const MARK: &'static str = "name-goes-here";

    fn new(payload: &str) -> anyhow::Result<ConfigMapTemplate> {
        let whole = configmap(Self::MARK, payload);
        let at = whole
            .windows(Self::MARK.len())
            .position(|w| w == Self::MARK.as_bytes())
            .ok_or_else(|| anyhow::anyhow!("the template lost its name"))?;
        Ok(ConfigMapTemplate {
            head: whole.slice(..at),
            tail: whole.slice(at + Self::MARK.len()..),
        })
    }

    /// The ConfigMap named `name` (a DNS-1123 name: nothing in it needs escaping).
    fn named(&self, name: &str) -> Bytes {
        let mut body = Vec::with_capacity(self.head.len() + name.len() + self.tail.len());
        body.extend_from_slice(&self.head);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&self.tail);
        Bytes::from(body)
    }
}

// ---- durable writes ---------------------------------------------------------------------

/// Runs `clients` closed-loop writers for `run`; `op(t, i)` is writer t's i-th write.
/// Returns completed writes per second.
async fn write_rate<F, Fut>(clients: usize, run: Duration, op: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (op, count) = (op.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while start.elapsed() < run {
                op(t, i).await?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn skiff_write_rate(
    address: &str,
    clients: usize,
    run: Duration,
    tag: &str,
) -> anyhow::Result<f64> {
    let conns = Arc::new(skiff_clients(address, clients.min(8)).await?);
    let template = ConfigMapTemplate::new(&"x".repeat(1024))?;
    let tag = tag.to_string();
    write_rate(clients, run, move |t, i| {
        let c = conns[t % conns.len()].clone();
        let body = template.named(&format!("{tag}-{t}-{i}"));
        async move {
            c.create("configmaps", "default", body)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await
}

async fn etcd_write_rate(
    etcd: &etcd_client::Client,
    clients: usize,
    run: Duration,
    tag: &str,
) -> anyhow::Result<f64> {
    let payload = String::from_utf8(configmap("x", &"x".repeat(1024)).to_vec())?;
    let kv = etcd.kv_client();
    let tag = tag.to_string();
    write_rate(clients, run, move |t, i| {
        let mut kv = kv.clone();
        // kube-apiserver's create: a transaction that writes only if the key is new.
        let key = format!("/registry/configmaps/default/{tag}-{t}-{i}");
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), payload.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        async move {
            kv.txn(txn).await?;
            Ok(())
        }
    })
    .await
}

/// Durable writes/s of 1 KiB objects at `clients` concurrent clients.
pub async fn durable_writes(mode: Mode, clients: usize) -> anyhow::Result<Measurement> {
    let (repeats, run) = match mode {
        Mode::Quick => (1, Duration::from_millis(500)),
        Mode::Full => (3, Duration::from_secs(5)),
    };
    let skiff = SkiffServer::start(API_ONLY)?;
    let etcd_server = EtcdServer::start().context("starting etcd")?;
    let etcd = etcd_client(&etcd_server).await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for r in 0..repeats {
        ours.push(
            skiff_write_rate(&skiff.address, clients, run, &format!("c{clients}r{r}")).await?,
        );
        theirs.push(etcd_write_rate(&etcd, clients, run, &format!("c{clients}r{r}")).await?);
    }
    Ok(Measurement::higher_better(
        &format!(
            "Durable writes/s, 1 KiB objects, {clients} client{}",
            if clients == 1 { "" } else { "s" }
        ),
        median(ours),
        median(theirs),
        "writes/s",
        "etcd 3.4 (txn create, etcd-client)",
        if clients >= 64 { ">= 2x etcd" } else { "" },
    ))
}

// ---- API latency ------------------------------------------------------------------------

/// Open-loop load at `rate` writes/s (half creates, half updates); latency counted from the
/// scheduled send time, so a stall is not hidden by the load slowing down.
async fn paced<F, Fut>(rate: u64, run: Duration, op: F) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    let total = (run.as_nanos() / interval.as_nanos()) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + interval * i as u32;
        tokio::time::sleep_until(at).await;
        let (op, hist) = (op.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            op(i).await?;
            let us = (tokio::time::Instant::now() - at).as_micros() as u64;
            hist.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .record(us.max(1))?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok(h)
}

/// p99 latency of creates and updates at 1,000 writes/s.
pub async fn api_latency(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let (repeats, run) = match mode {
        Mode::Quick => (1, Duration::from_millis(500)),
        Mode::Full => (3, Duration::from_secs(5)),
    };
    let skiff = SkiffServer::start(API_ONLY)?;
    let etcd_server = EtcdServer::start().context("starting etcd")?;
    let etcd = etcd_client(&etcd_server).await?;
    let payload = "x".repeat(1024);
    let (mut ours50, mut ours99, mut theirs50, mut theirs99) = (vec![], vec![], vec![], vec![]);
    const EXISTING: u64 = 100;
    {
        let c = Client::connect(&skiff.address)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut kv = etcd.kv_client();
        let body = String::from_utf8(configmap("x", &payload).to_vec())?;
        for i in 0..EXISTING {
            c.create(
                "configmaps",
                "default",
                configmap(&format!("pre-{i}"), &payload),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            kv.put(
                format!("/registry/configmaps/default/pre-{i}"),
                body.as_str(),
                None,
            )
            .await?;
        }
    }
    for r in 0..repeats {
        let conns = Arc::new(skiff_clients(&skiff.address, 4).await?);
        let p = payload.clone();
        let h = paced(1000, run, move |i| {
            let c = conns[(i % 4) as usize].clone();
            let p = p.clone();
            async move {
                if i % 2 == 0 {
                    let name = format!("lat{r}-{i}");
                    c.create("configmaps", "default", configmap(&name, &p))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                } else {
                    let name = format!("pre-{}", i % EXISTING);
                    let patch = json!({"data": {"v": format!("{p}{i}")}});
                    c.patch(
                        "configmaps",
                        "default",
                        &name,
                        Bytes::from(patch.to_string()),
                        "",
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                Ok(())
            }
        })
        .await?;
        ours50.push(h.value_at_quantile(0.5) as f64 / 1000.0);
        ours99.push(h.value_at_quantile(0.99) as f64 / 1000.0);

        let kv = etcd.kv_client();
        let p = String::from_utf8(configmap("x", &payload).to_vec())?;
        let h = paced(1000, run, move |i| {
            let mut kv = kv.clone();
            let p = p.clone();
            async move {
                let key = if i % 2 == 0 {
                    format!("/registry/configmaps/default/lat{r}-{i}")
                } else {
                    format!("/registry/configmaps/default/pre-{}", i % EXISTING)
                };
                let txn = if i % 2 == 0 {
                    Txn::new()
                        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.as_str(), p.as_str(), None)])
                        .or_else([TxnOp::get(key.as_str(), None)])
                } else {
                    // kube-apiserver's update: compare the mod revision it read.
                    let cur = kv.get(key.as_str(), None).await?;
                    let rev = cur
                        .kvs()
                        .first()
                        .map(|k| k.mod_revision())
                        .unwrap_or_default();
                    Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.as_str(), format!("{p}{i}"), None)])
                        .or_else([TxnOp::get(key.as_str(), None)])
                };
                kv.txn(txn).await?;
                Ok(())
            }
        })
        .await?;
        theirs50.push(h.value_at_quantile(0.5) as f64 / 1000.0);
        theirs99.push(h.value_at_quantile(0.99) as f64 / 1000.0);
    }
    Ok(vec![
        Measurement::lower_better(
            "API write latency p50 at 1,000 writes/s",
            median(ours50),
            median(theirs50),
            "ms",
            "etcd 3.4 (txn, etcd-client)",
            "",
        ),
        Measurement::lower_better(
            "API write latency p99 at 1,000 writes/s",
            median(ours99),
            median(theirs99),
            "ms",
            "etcd 3.4 (txn, etcd-client)",
            "<= 10 ms",
        ),
    ])
}

// ---- watch fan-out ----------------------------------------------------------------------

struct FanoutResult {
    events_per_sec: f64,
    p99_ms: f64,
    idle_bytes_per_watcher: f64,
    /// Server CPU time (all threads) per delivered event while the updates were delivered.
    server_cpu_ns_per_event: f64,
    delivered: u64,
    expected: u64,
}

fn pod(name: &str, sent: u64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"},
            "annotations": {"bench.skiff.io/sent": sent.to_string()}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "ports": [{"containerPort": 80}]}]}
    })
}

fn sent_of(obj: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(obj).ok()?;
    v.pointer("/metadata/annotations/bench.skiff.io~1sent")?
        .as_str()?
        .parse()
        .ok()
}

struct Fanout {
    watchers: usize,
    updates: usize,
    pods: usize,
    writers: usize,
    timeout: Duration,
}

impl Fanout {
    fn of(mode: Mode) -> Self {
        let mut f = match mode {
            Mode::Quick => Fanout {
                watchers: 50,
                updates: 1_000,
                pods: 20,
                writers: 8,
                timeout: Duration::from_secs(60),
            },
            Mode::Full => Fanout {
                watchers: 1_000,
                updates: 20_000,
                pods: 200,
                writers: 32,
                timeout: Duration::from_secs(180),
            },
        };
        // For profiling runs only: SKIFF_BENCH_FANOUT=watchers,updates
        if let Ok(v) = std::env::var("SKIFF_BENCH_FANOUT")
            && let Some((w, u)) = v.split_once(',')
            && let (Ok(w), Ok(u)) = (w.parse(), u.parse())
        {
            f.watchers = w;
            f.updates = u;
        }
        f
    }
}

/// Shared counters of the watchers of one run.
struct Tally {
    delivered: AtomicU64,
    done: AtomicUsize,
    last_event: std::sync::Mutex<Instant>,
    hist: std::sync::Mutex<Histogram<u64>>,
}

impl Tally {
    fn new() -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Tally {
            delivered: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            last_event: std::sync::Mutex::new(Instant::now()),
            hist: std::sync::Mutex::new(Histogram::new(3)?),
        }))
    }

    /// Counts one watcher's event; samples latency on a few watchers.
    fn event(&self, sampled: bool, obj: &[u8], seen: &mut usize, expected: usize) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        *seen += 1;
        if sampled && let Some(sent) = sent_of(obj) {
            let us = now_nanos().saturating_sub(sent) / 1000;
            if let Ok(mut h) = self.hist.lock() {
                let _ = h.record(us.max(1));
            }
        }
        if *seen == expected {
            if let Ok(mut t) = self.last_event.lock() {
                *t = Instant::now();
            }
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits for the writers and then for every watcher (or the timeout), and sums up.
    async fn finish(
        &self,
        f: &Fanout,
        writers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
        start: Instant,
        idle_growth: u64,
        server: (u32, Duration),
    ) -> anyhow::Result<FanoutResult> {
        for w in writers {
            w.await??;
        }
        let finished = self.wait(f.watchers, f.timeout).await;
        let server_cpu = cpu_time(server.0).saturating_sub(server.1);
        let end = if finished {
            *self
                .last_event
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
        } else {
            Instant::now()
        };
        let delivered = self.delivered.load(Ordering::Relaxed);
        let p99 = self
            .hist
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .value_at_quantile(0.99) as f64
            / 1000.0;
        Ok(FanoutResult {
            events_per_sec: delivered as f64 / (end - start).as_secs_f64(),
            p99_ms: p99,
            idle_bytes_per_watcher: idle_growth as f64 / f.watchers as f64,
            server_cpu_ns_per_event: server_cpu.as_nanos() as f64 / delivered.max(1) as f64,
            delivered,
            expected: (f.watchers * (f.updates / f.writers) * f.writers) as u64,
        })
    }

    async fn wait(&self, watchers: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.done.load(Ordering::Relaxed) < watchers {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

async fn skiff_fanout(f: &Fanout) -> anyhow::Result<FanoutResult> {
    let server = SkiffServer::start(&[API_ONLY, &["--watch-cache-size", "65536"]].concat())?;
    let writer = Client::connect(&server.address)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for p in 0..f.pods {
        writer
            .create(
                "pods",
                "default",
                Bytes::from(pod(&format!("pod-{p}"), 0).to_string()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let from = writer
        .version()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .2
        .to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = settled_rss_bytes(server.pid()).await;
    let conns = skiff_clients(&server.address, f.watchers.div_ceil(100)).await?;
    let tally = Tally::new()?;
    let opened = Arc::new(AtomicUsize::new(0));
    let sample_every = (f.watchers / 10).max(1);
    for w in 0..f.watchers {
        let c = conns[w % conns.len()].clone();
        let (tally, opened, from) = (tally.clone(), opened.clone(), from.clone());
        let expected = f.updates / f.writers * f.writers;
        tokio::spawn(async move {
            let Ok(mut stream) = c
                .watch("pods", "default", &ListParams::default(), &from, false)
                .await
            else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut seen = 0;
            while let Some(Ok(ev)) = stream.next().await {
                if let RawEvent::Modified(o) = ev {
                    tally.event(w % sample_every == 0, &o, &mut seen, expected);
                }
            }
        });
    }
    while opened.load(Ordering::Relaxed) < f.watchers {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = settled_rss_bytes(server.pid()).await;

    let cpu0 = cpu_time(server.pid());
    let start = Instant::now();
    let per_writer = f.updates / f.writers;
    let mut writers = Vec::new();
    for t in 0..f.writers {
        let c = conns[t % conns.len()].clone();
        let pods = f.pods;
        writers.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let name = format!("pod-{}", (t + i * 32) % pods);
                let patch = json!({"metadata": {"annotations": {"bench.skiff.io/sent": now_nanos().to_string()}}});
                c.patch("pods", "default", &name, Bytes::from(patch.to_string()), "").await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        }));
    }
    tally
        .finish(
            f,
            writers,
            start,
            rss1.saturating_sub(rss0),
            (server.pid(), cpu0),
        )
        .await
}

async fn etcd_fanout(f: &Fanout) -> anyhow::Result<FanoutResult> {
    let server = EtcdServer::start().context("starting etcd")?;
    let client = etcd_client(&server).await?;
    let mut kv = client.kv_client();
    for p in 0..f.pods {
        kv.put(
            format!("/registry/pods/default/pod-{p}"),
            pod(&format!("pod-{p}"), 0).to_string(),
            None,
        )
        .await?;
    }
    let from = kv
        .get("/", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default()
        + 1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = settled_rss_bytes(server.pid()).await;
    let tally = Tally::new()?;
    let opened = Arc::new(AtomicUsize::new(0));
    let sample_every = (f.watchers / 10).max(1);
    // One connection per 100 watchers, as for Skiff.
    let mut conns = Vec::new();
    for _ in 0..f.watchers.div_ceil(100) {
        conns.push(etcd_client(&server).await?);
    }
    for w in 0..f.watchers {
        let mut wc = conns[w % conns.len()].watch_client();
        let (tally, opened) = (tally.clone(), opened.clone());
        let expected = f.updates / f.writers * f.writers;
        tokio::spawn(async move {
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            let Ok(mut stream) = wc.watch("/registry/pods/default/", Some(opts)).await else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut seen = 0;
            while let Ok(Some(resp)) = stream.message().await {
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        tally.event(w % sample_every == 0, kv.value(), &mut seen, expected);
                    }
                }
            }
        });
    }
    while opened.load(Ordering::Relaxed) < f.watchers {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = settled_rss_bytes(server.pid()).await;

    let cpu0 = cpu_time(server.pid());
    let start = Instant::now();
    let per_writer = f.updates / f.writers;
    let mut writers = Vec::new();
    for t in 0..f.writers {
        let mut kv = conns[t % conns.len()].kv_client();
        let pods = f.pods;
        writers.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let name = format!("pod-{}", (t + i * 32) % pods);
                let body = pod(&name, now_nanos()).to_string();
                kv.put(format!("/registry/pods/default/{name}"), body, None)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    tally
        .finish(
            f,
            writers,
            start,
            rss1.saturating_sub(rss0),
            (server.pid(), cpu0),
        )
        .await
}

/// Watch fan-out: events delivered per second, p99 delivery latency, memory per idle watcher.
pub async fn watch_fanout(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let f = Fanout::of(mode);
    let repeats = if mode == Mode::Quick { 1 } else { 3 };
    let (mut rate, mut p99, mut mem) = ((vec![], vec![]), (vec![], vec![]), (vec![], vec![]));
    let mut cpu = (vec![], vec![]);
    let mut notes = Vec::new();
    for _ in 0..repeats {
        let s = skiff_fanout(&f).await?;
        if std::env::var("SKIFF_BENCH_NO_PEER").is_ok() {
            // Profiling runs only: report Skiff's figures and stop.
            eprintln!(
                "skiff: {:.0} events/s, p99 {:.2} ms, {:.0} B/idle watcher, {:.0} ns server CPU/event, {}/{} delivered",
                s.events_per_sec,
                s.p99_ms,
                s.idle_bytes_per_watcher,
                s.server_cpu_ns_per_event,
                s.delivered,
                s.expected
            );
            anyhow::bail!("SKIFF_BENCH_NO_PEER set: no comparison made");
        }
        let e = etcd_fanout(&f).await?;
        for (who, r) in [("skiff", &s), ("etcd", &e)] {
            if r.delivered < r.expected {
                notes.push(format!(
                    "{who}: {} of {} events within {:?}",
                    r.delivered, r.expected, f.timeout
                ));
            }
        }
        rate.0.push(s.events_per_sec);
        rate.1.push(e.events_per_sec);
        p99.0.push(s.p99_ms);
        p99.1.push(e.p99_ms);
        mem.0.push(s.idle_bytes_per_watcher);
        mem.1.push(e.idle_bytes_per_watcher);
        cpu.0.push(s.server_cpu_ns_per_event);
        cpu.1.push(e.server_cpu_ns_per_event);
    }
    let label = format!("{} watchers, {} pod updates", f.watchers, f.updates);
    let peer = "etcd 3.4 watches (etcd-client)";
    let mut out = vec![
        Measurement::higher_better(
            &format!("Watch fan-out events/s ({label})"),
            median(rate.0),
            median(rate.1),
            "events/s",
            peer,
            ">= 500,000/s and >= 10x etcd",
        ),
        Measurement::lower_better(
            &format!("Watch delivery latency p99 ({label})"),
            median(p99.0),
            median(p99.1),
            "ms",
            peer,
            "",
        ),
        Measurement::lower_better(
            &format!("Server CPU per delivered event ({label})"),
            median(cpu.0),
            median(cpu.1),
            "ns",
            peer,
            "",
        ),
        Measurement::lower_better(
            &format!("Server memory per idle watcher ({} watchers)", f.watchers),
            median(mem.0),
            median(mem.1),
            "bytes",
            peer,
            "<= 4 KiB",
        ),
    ];
    if !notes.is_empty() {
        out[0].note = notes.join("; ");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_templated_configmap_is_the_encoded_one() {
        let payload = "x".repeat(1024);
        let template = ConfigMapTemplate::new(&payload).expect("template");
        for name in ["a", "c64r0-12-345", "name-goes-here"] {
            assert_eq!(template.named(name), configmap(name, &payload));
        }
    }
}
