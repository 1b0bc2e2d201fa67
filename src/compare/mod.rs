//! `doorman compare`: one workload run against the same local replicas with round robin,
//! then with consistent hashing (with and without bounded loads), and a report of what
//! statelessness buys — throughput and latency, load spread under uniform and skewed keys,
//! keys remapped when the replica set changes, and a replica killed mid-run.
//!
//! Everything runs in this process on loopback: the replicas (`replica.rs`, fixed capacity,
//! killable), doorman itself (the real `server::run` with a built snapshot, reached through
//! its plain listener), and the closed-loop clients (`load.rs`). `report.rs` writes the
//! Markdown table and the SVG charts.

mod load;
mod replica;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::{
    AuthMode, Balance, Config, HashKey, HashSpec, IdempotencyMode, IdempotencySettings,
    RevocationSettings, RouteSpec, ServerSettings, ServerSpec, StoreSettings, UpstreamSpec,
    defaults,
};
use crate::server::{self, Listeners};
use crate::snapshot::{SharedSnapshot, Snapshot};

use load::{Population, Run, Sample};
use replica::Fleet;

/// What `doorman compare` runs.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// A proxy.toml whose first upstream group's tuning (virtual nodes, balance factor,
    /// retries, health, timeouts) is used; its servers are replaced by the local replicas.
    pub config: Option<PathBuf>,
    /// Requests per load run.
    pub requests: usize,
    /// Distinct keys (sessions) in the population.
    pub keys: usize,
    pub replicas: usize,
    /// Closed-loop clients, each on its own keep-alive connection.
    pub concurrency: usize,
    /// Requests a replica serves at once, and how long each takes.
    pub replica_workers: usize,
    pub service_time: Duration,
    pub seed: u64,
    /// Where report.md and the SVG charts go.
    pub out: PathBuf,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            config: None,
            requests: 20_000,
            keys: 1_000,
            replicas: 4,
            concurrency: 32,
            replica_workers: 2,
            service_time: Duration::from_millis(2),
            seed: 42,
            out: PathBuf::from("target/compare"),
        }
    }
}

/// Zipf exponent of the skewed population.
const ZIPF_S: f64 = 1.0;
/// Share of a failover run's requests sent before the replica is killed.
const KILL_AT: f64 = 0.3;
/// No single run may take longer than this, whatever its request count.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// How the group balances in one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    RoundRobin,
    ConsistentHash,
    /// Consistent hashing with bounded loads at this factor.
    Bounded(f64),
}

impl Mode {
    pub(crate) fn label(self) -> String {
        match self {
            Mode::RoundRobin => "round robin".into(),
            Mode::ConsistentHash => "consistent hash".into(),
            Mode::Bounded(f) => format!("consistent hash, bounded {f}"),
        }
    }
}

/// Throughput, latency and spread of one load run.
#[derive(Debug, Clone)]
pub(crate) struct LoadResult {
    pub population: String,
    pub mode: Mode,
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Successful requests answered by each replica.
    pub per_replica: Vec<u64>,
    /// Requests whose key landed on another replica than the key's first one.
    pub affinity_violations: usize,
}

impl LoadResult {
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn max_over_mean(&self) -> f64 {
        let (mean, _) = mean_sd(&self.per_replica);
        let max = self.per_replica.iter().copied().max().unwrap_or(0) as f64;
        if mean > 0.0 { max / mean } else { 0.0 }
    }

    /// Coefficient of variation of the per-replica counts (0 = perfectly even).
    pub(crate) fn cv(&self) -> f64 {
        let (mean, sd) = mean_sd(&self.per_replica);
        if mean > 0.0 { sd / mean } else { 0.0 }
    }
}

/// Keys moved by one change of the replica set.
#[derive(Debug, Clone)]
pub(crate) struct RemapResult {
    pub change: String,
    pub mode: Mode,
    pub keys: usize,
    pub moved: usize,
    /// The fraction a perfect consistent hash would move.
    pub theory: f64,
    /// Moves that did not have to happen: for an added replica, keys that went to an old
    /// one; for a removed replica, keys that were not on it.
    pub needless: usize,
}

/// A replica killed in the middle of a run.
#[derive(Debug, Clone)]
pub(crate) struct FailoverResult {
    pub mode: Mode,
    pub requests: usize,
    pub errors: usize,
    pub killed_at_ms: f64,
    /// Until doorman stopped offering the dead replica any request (passive ejection).
    pub ejected_after_ms: Option<f64>,
    /// From the kill to the start of the last request that failed.
    pub last_error_after_ms: Option<f64>,
    pub p99_before_ms: f64,
    pub p99_after_ms: f64,
    pub affinity_violations: usize,
    /// Violations by keys whose first replica survived: with consistent hashing these
    /// should not exist.
    pub survivor_violations: usize,
    /// Successful requests per replica in each `bucket_ms` slice of the run.
    pub bucket_ms: f64,
    pub timeline: Vec<Vec<u32>>,
}

/// Everything one `compare` run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: CompareOptions,
    pub balance_factor: f64,
    pub(crate) loads: Vec<LoadResult>,
    pub(crate) remaps: Vec<RemapResult>,
    pub(crate) failovers: Vec<FailoverResult>,
}

/// Run every comparison and write `report.md`, `load-spread.svg` and `failover.svg` to
/// `opts.out`. Returns the report.
pub async fn run(opts: CompareOptions) -> Result<Report, String> {
    if opts.replicas < 2 {
        return Err("compare needs at least 2 replicas".into());
    }
    if opts.requests == 0 || opts.keys == 0 || opts.concurrency == 0 {
        return Err("--requests, --keys and --concurrency must be above 0".into());
    }
    let template = template(&opts)?;
    let factor = match &template.balance {
        Balance::ConsistentHash(h) => h.balance_factor.unwrap_or(1.25),
        Balance::RoundRobin => 1.25,
    };
    let modes = [
        Mode::RoundRobin,
        Mode::ConsistentHash,
        Mode::Bounded(factor),
    ];

    let mut loads = Vec::new();
    for population in [Population::Uniform, Population::Zipf(ZIPF_S)] {
        let keys: Arc<[u32]> =
            load::key_sequence(population, opts.keys, opts.requests, opts.seed).into();
        for mode in modes {
            let fleet =
                Fleet::start(opts.replicas, opts.replica_workers, opts.service_time).await?;
            let proxy = Proxy::start(&template, mode, &fleet.addrs()).await?;
            let run = Run::new();
            let samples = run
                .drive(proxy.addr, keys.clone(), opts.concurrency, RUN_DEADLINE)
                .await;
            let elapsed = run.begin.elapsed();
            proxy.stop().await;
            loads.push(load_result(
                population.label(),
                mode,
                &samples,
                opts.replicas,
                elapsed,
            ));
            eprintln!("compare: {} / {} done", population.label(), mode.label());
        }
    }

    let remaps = remaps(&opts, &template).await?;
    eprintln!("compare: remapping done");

    let mut failovers = Vec::new();
    for mode in [Mode::RoundRobin, Mode::ConsistentHash] {
        failovers.push(failover(&opts, &template, mode).await?);
        eprintln!("compare: failover / {} done", mode.label());
    }

    let report = Report {
        options: opts.clone(),
        balance_factor: factor,
        loads,
        remaps,
        failovers,
    };
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let write = |name: &str, text: String| {
        let path = opts.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("report.md", report::markdown(&report))?;
    write("load-spread.svg", report::load_chart(&report)?)?;
    write("failover.svg", report::failover_chart(&report)?)?;
    Ok(report)
}

/// The upstream group settings every run starts from.
fn template(opts: &CompareOptions) -> Result<UpstreamSpec, String> {
    if let Some(path) = &opts.config {
        let config = crate::config::load(path).map_err(|e| e.to_string())?;
        return config.upstreams.into_iter().next().ok_or_else(|| {
            format!(
                "{}: no upstream group to take settings from",
                path.display()
            )
        });
    }
    Ok(UpstreamSpec {
        name: "compare".into(),
        balance: Balance::RoundRobin,
        health: Default::default(),
        retries: 2,
        retry_budget: 0.2,
        connect_timeout: defaults::CONNECT_TIMEOUT,
        response_timeout: Duration::from_secs(10),
        keepalive: defaults::KEEPALIVE,
        keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
        servers: Vec::new(),
    })
}

/// doorman serving one group in this process.
struct Proxy {
    addr: SocketAddr,
    snapshot: SharedSnapshot,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    async fn start(
        template: &UpstreamSpec,
        mode: Mode,
        servers: &[SocketAddr],
    ) -> Result<Proxy, String> {
        let virtual_nodes = match &template.balance {
            Balance::ConsistentHash(h) => h.virtual_nodes,
            Balance::RoundRobin => 160,
        };
        let hashed = |balance_factor| {
            Balance::ConsistentHash(HashSpec {
                key: HashKey::Header(http::HeaderName::from_static(load::KEY_HEADER)),
                virtual_nodes,
                balance_factor,
            })
        };
        let mut group = template.clone();
        group.name = "compare".into();
        group.balance = match mode {
            Mode::RoundRobin => Balance::RoundRobin,
            Mode::ConsistentHash => hashed(None),
            Mode::Bounded(f) => hashed(Some(f)),
        };
        group.servers = servers
            .iter()
            .map(|a| ServerSpec {
                address: *a,
                weight: 1,
            })
            .collect();

        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut settings = ServerSettings::with_listen(loopback);
        settings.plain_listen = Some(loopback);
        settings.admin_listen = loopback;
        settings.shutdown_grace = Duration::from_secs(2);
        let (_, cert) = crate::demo::certificate()
            .map_err(|e| format!("cannot generate a certificate: {e}"))?;
        let config = Config {
            server: settings,
            tls: vec![cert],
            cipher_suites: Vec::new(),
            upstreams: vec![group],
            routes: vec![RouteSpec {
                host: None,
                path_prefix: "/".into(),
                upstream: "compare".into(),
                auth: AuthMode::Off,
                idempotency: IdempotencyMode::Off,
                allow_methods: Vec::new(),
            }],
            store: StoreSettings::default(),
            auth: None,
            revocation: RevocationSettings::default(),
            idempotency: IdempotencySettings::default(),
            log: crate::config::LogSettings {
                access: crate::config::AccessTarget::Off,
                ..Default::default()
            },
        };
        let listeners = Listeners::bind(&config.server)
            .await
            .map_err(|e| e.to_string())?;
        let addr = listeners
            .addrs()
            .map_err(|e| e.to_string())?
            .plain
            .ok_or("no plain listener")?;
        let snapshot = Snapshot::build(&config)?.into_shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(server::run(listeners, snapshot.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Proxy {
            addr,
            snapshot,
            stop,
            done,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

fn mean_sd(v: &[u64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<u64>() as f64 / n;
    let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The `q` quantile (0..=1) of successful requests' latency, in ms (nearest rank).
fn quantile_ms(samples: &[&Sample], q: f64) -> f64 {
    let mut lat: Vec<u64> = samples.iter().map(|s| s.latency_us).collect();
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_unstable();
    let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
    lat[rank - 1] as f64 / 1000.0
}

/// Per request in start order: did its key land on another replica than its first one?
fn affinity(samples: &[Sample]) -> (Vec<bool>, std::collections::HashMap<u32, u16>) {
    let mut home = std::collections::HashMap::new();
    let moved = samples
        .iter()
        .map(|s| match (s.ok(), s.replica) {
            (true, Some(r)) => *home.entry(s.key).or_insert(r) != r,
            _ => false,
        })
        .collect();
    (moved, home)
}

fn load_result(
    population: String,
    mode: Mode,
    samples: &[Sample],
    replicas: usize,
    elapsed: Duration,
) -> LoadResult {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok()).collect();
    let mut per_replica = vec![0u64; replicas];
    for s in &ok {
        if let Some(r) = s.replica.and_then(|r| per_replica.get_mut(r as usize)) {
            *r += 1;
        }
    }
    LoadResult {
        population,
        mode,
        requests: samples.len(),
        errors: samples.len() - ok.len(),
        elapsed,
        p50_ms: quantile_ms(&ok, 0.50),
        p99_ms: quantile_ms(&ok, 0.99),
        per_replica,
        affinity_violations: affinity(samples).0.iter().filter(|m| **m).count(),
    }
}

/// Each key sent once through a proxy over `servers`: the replica that answered it.
async fn probe(
    template: &UpstreamSpec,
    mode: Mode,
    servers: &[SocketAddr],
    keys: usize,
    concurrency: usize,
) -> Result<Vec<Option<u16>>, String> {
    let proxy = Proxy::start(template, mode, servers).await?;
    let all: Arc<[u32]> = (0..keys as u32).collect();
    let samples = Run::new()
        .drive(proxy.addr, all, concurrency, RUN_DEADLINE)
        .await;
    proxy.stop().await;
    let mut map = vec![None; keys];
    for s in samples.iter().filter(|s| s.ok()) {
        map[s.key as usize] = s.replica;
    }
    if map.iter().any(Option::is_none) {
        return Err("a probe request failed; the remap figures would be wrong".into());
    }
    Ok(map)
}

/// Keys moved when one replica is added to N, and when one of the N is removed. Replica
/// indexes are positions in one fleet of N+1, so the same index is the same address.
async fn remaps(
    opts: &CompareOptions,
    template: &UpstreamSpec,
) -> Result<Vec<RemapResult>, String> {
    let n = opts.replicas;
    let fleet = Fleet::start(n + 1, opts.replica_workers, opts.service_time).await?;
    let all = fleet.addrs();
    let base = &all[..n];
    // Remove the second replica (index 1): any would do, the first is the usual special case.
    let removed = 1usize;
    let fewer: Vec<SocketAddr> = base
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, a)| *a)
        .collect();

    let mut out = Vec::new();
    for mode in [Mode::ConsistentHash, Mode::RoundRobin] {
        let before = probe(template, mode, base, opts.keys, opts.concurrency).await?;
        let added = probe(template, mode, &all, opts.keys, opts.concurrency).await?;
        let shrunk = probe(template, mode, &fewer, opts.keys, opts.concurrency).await?;
        let pairs = before.iter().zip(&added);
        out.push(RemapResult {
            change: format!("add a replica ({n} → {})", n + 1),
            mode,
            keys: opts.keys,
            moved: pairs.clone().filter(|(b, a)| b != a).count(),
            theory: 1.0 / (n + 1) as f64,
            needless: pairs
                .filter(|(b, a)| b != a && **a != Some(n as u16))
                .count(),
        });
        // Replicas name themselves by their place in the fleet, so indexes need no mapping.
        let pairs = before.iter().zip(&shrunk);
        out.push(RemapResult {
            change: format!("remove a replica ({n} → {})", n - 1),
            mode,
            keys: opts.keys,
            moved: pairs.clone().filter(|(b, a)| b != a).count(),
            theory: 1.0 / n as f64,
            needless: pairs
                .filter(|(b, a)| b != a && **b != Some(removed as u16))
                .count(),
        });
    }
    Ok(out)
}

/// A uniform run in which replica 1 is killed after `KILL_AT` of the requests.
async fn failover(
    opts: &CompareOptions,
    template: &UpstreamSpec,
    mode: Mode,
) -> Result<FailoverResult, String> {
    const VICTIM: usize = 0;
    let fleet = Fleet::start(opts.replicas, opts.replica_workers, opts.service_time).await?;
    let proxy = Proxy::start(template, mode, &fleet.addrs()).await?;
    let keys: Arc<[u32]> = load::key_sequence(
        Population::Uniform,
        opts.keys,
        opts.requests,
        opts.seed ^ 0xfa11,
    )
    .into();
    let run = Arc::new(Run::new());
    let driver = {
        let (run, keys, addr, c) = (run.clone(), keys.clone(), proxy.addr, opts.concurrency);
        tokio::spawn(async move { run.drive(addr, keys, c, RUN_DEADLINE).await })
    };
    let kill_after = ((opts.requests as f64 * KILL_AT) as usize).max(1);
    while run.started.load(Ordering::Relaxed) < kill_after && !driver.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fleet.kill(VICTIM);
    let killed = Instant::now();
    let killed_at = killed.duration_since(run.begin);
    let mut ejected_after = None;
    while !driver.is_finished() {
        let usable = proxy.snapshot.load().groups[0].servers[VICTIM].usable();
        if !usable && ejected_after.is_none() {
            ejected_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let samples = driver.await.map_err(|e| e.to_string())?;
    let elapsed = run.begin.elapsed();
    proxy.stop().await;

    let kill_us = killed_at.as_micros() as u64;
    let (moved, home) = affinity(&samples);
    let survivor_violations = samples
        .iter()
        .zip(&moved)
        .filter(|(s, m)| **m && home.get(&s.key) != Some(&(VICTIM as u16)))
        .count();
    let last_error = samples
        .iter()
        .filter(|s| !s.ok() && s.start_us + s.latency_us >= kill_us)
        .map(|s| s.start_us.saturating_sub(kill_us))
        .max();
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.ok() && s.start_us < kill_us)
        .collect();
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.ok() && s.start_us >= kill_us)
        .collect();
    let bucket_ms = (elapsed.as_secs_f64() * 1000.0 / 50.0).max(10.0);
    let buckets = (elapsed.as_secs_f64() * 1000.0 / bucket_ms).ceil() as usize + 1;
    let mut timeline = vec![vec![0u32; buckets]; opts.replicas];
    for s in samples.iter().filter(|s| s.ok()) {
        let b = ((s.start_us + s.latency_us) as f64 / 1000.0 / bucket_ms) as usize;
        let slot = s
            .replica
            .and_then(|r| timeline.get_mut(r as usize))
            .and_then(|t| t.get_mut(b));
        if let Some(c) = slot {
            *c += 1;
        }
    }
    Ok(FailoverResult {
        mode,
        requests: samples.len(),
        errors: samples.iter().filter(|s| !s.ok()).count(),
        killed_at_ms: killed_at.as_secs_f64() * 1000.0,
        ejected_after_ms: ejected_after.map(|d| d.as_secs_f64() * 1000.0),
        last_error_after_ms: last_error.map(|us| us as f64 / 1000.0),
        p99_before_ms: quantile_ms(&before, 0.99),
        p99_after_ms: quantile_ms(&after, 0.99),
        affinity_violations: moved.iter().filter(|m| **m).count(),
        survivor_violations,
        bucket_ms,
        timeline,
    })
}

#[cfg(test)]
mod tests;
