//! Micro-benchmarks of doorman's per-request work, and one end-to-end comparison measured in
//! the same run: a keep-alive GET straight to a replica vs the same GET through doorman's
//! plain listener. Run with `scripts/bench.sh` (or `cargo bench --bench hot_path`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::{client, replica};
use doorman::balance::{Ring, RoundRobin, key_hash};
use doorman::message::target::{PathPolicy, normalise};
use doorman::pipeline::{idempotency_fingerprint, new_request_id, strip_hop_by_hop};
use doorman::server::{self, Listeners};
use doorman::snapshot::Snapshot;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};

fn balancer(c: &mut Criterion) {
    let rr3 = RoundRobin::new(&[1, 1, 1]);
    c.bench_function("round_robin_select_3", |b| {
        b.iter(|| black_box(rr3.select()))
    });
    // Consistent hashing: a 100-replica ring (160 points each), lookup only, and with the
    // key's hash.
    let servers: Vec<(SocketAddr, u32)> = (0..100)
        .map(|i| {
            (
                format!("10.0.{}.{}:8080", i / 200, i % 200 + 1)
                    .parse()
                    .unwrap(),
                1,
            )
        })
        .collect();
    let ring = Ring::new(&servers, 160);
    let mut k = 0u64;
    c.bench_function("ring_pick_100_replicas", |b| {
        b.iter(|| {
            k = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
            black_box(ring.pick(black_box(k), |_| true))
        })
    });
    c.bench_function("ring_hash_and_pick_100_replicas", |b| {
        b.iter(|| black_box(ring.pick(key_hash(black_box(b"session-7f3a9c21")), |_| true)))
    });
    let weights: Vec<u32> = (0..100).map(|i| 1 + i % 7).collect();
    let rr100 = RoundRobin::new(&weights);
    c.bench_function("round_robin_select_100_weighted", |b| {
        b.iter(|| black_box(rr100.select()))
    });
}

/// The normalise stage's path work: a plain path (the common case: checked in one scan,
/// borrowed) and one with every kind of rewrite (dot segments, an escape, a double slash).
fn target(c: &mut Criterion) {
    let policy = PathPolicy::default();
    c.bench_function("normalise_plain_path", |b| {
        b.iter(|| {
            black_box(normalise(
                black_box("/api/v1/orders/12345?expand=items"),
                policy,
            ))
        })
    });
    c.bench_function("normalise_rewritten_path", |b| {
        b.iter(|| {
            black_box(normalise(
                black_box("/api/./v1//%6Frders/12345/../12346?expand=items"),
                policy,
            ))
        })
    });
}

fn headers(c: &mut Criterion) {
    let mut typical = HeaderMap::new();
    for (n, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("authorization", "Bearer abc.def.ghi"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
    ] {
        typical.insert(n, HeaderValue::from_static(v));
    }
    c.bench_function("strip_hop_by_hop_typical", |b| {
        b.iter(|| {
            let mut h = typical.clone();
            strip_hop_by_hop(&mut h);
            black_box(h)
        })
    });
    c.bench_function("new_request_id", |b| b.iter(|| black_box(new_request_id())));
    // What a keyed POST hashes to recognise a reused key on a different request.
    let (parts, ()) = http::Request::post("/orders?src=web")
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    let body = vec![b'x'; 1024];
    c.bench_function("idempotency_fingerprint_1kib_body", |b| {
        b.iter(|| black_box(idempotency_fingerprint(black_box(&parts), black_box(&body))))
    });
}

fn config_text(upstream: SocketAddr, certs: &Path) -> String {
    let mut routes = String::new();
    for i in 0..9 {
        routes.push_str(&format!(
            "[[routes]]\npath_prefix = \"/svc{i}/\"\nupstream = \"api\"\n"
        ));
    }
    format!(
        r#"[server]
listen = "127.0.0.1:0"
plain_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[[tls.certificates]]
cert = "{c}/b.crt"
key = "{c}/b.key"
[upstreams.api]
servers = [{{ address = "{upstream}" }}]
{routes}
[[routes]]
path_prefix = "/"
upstream = "api"
"#,
        c = certs.display()
    )
}

async fn get(send: &mut common::Sender) {
    let req = Request::get("/")
        .header("host", "bench")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    black_box(resp.into_body().collect().await.unwrap());
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let certs = common::cert_dir();

    let (upstream, plain, snapshot) = rt.block_on(async {
        let upstream = replica().await;
        let config =
            doorman::config::parse(&config_text(upstream, certs.path()), Path::new("bench"))
                .unwrap();
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let plain = listeners.addrs().unwrap().plain.unwrap();
        let snapshot = Snapshot::build(&config).unwrap().into_shared();
        tokio::spawn(server::run(
            listeners,
            snapshot.clone(),
            std::future::pending(),
        ));
        (upstream, plain, snapshot)
    });

    let snap = snapshot.load_full();
    c.bench_function("route_lookup_10_routes_last", |b| {
        b.iter(|| black_box(snap.route(Some("bench"), black_box("/catch/all"))))
    });

    // Each client connects right before its own benchmark: doorman closes a keep-alive
    // connection that waits longer than header_timeout (10s) for its next request.
    let mut g = c.benchmark_group("keepalive_get");
    let mut direct = rt.block_on(client(upstream));
    g.bench_function("direct_to_replica", |b| {
        b.iter(|| rt.block_on(get(&mut direct)))
    });
    let mut proxied = rt.block_on(client(plain));
    g.bench_function("through_doorman_plain", |b| {
        b.iter(|| rt.block_on(get(&mut proxied)))
    });
    g.finish();
}

/// One access-log line formatted, in each format: the part of the access log's cost that is
/// the request thread's own (the copy into the shared buffer and the writer thread's writes
/// are measured end to end by `scripts/bench.sh peers`).
fn access_line(c: &mut Criterion) {
    use doorman::config::AccessFormat;
    use doorman::logging::line::Entry;
    let entry = Entry {
        time: std::time::SystemTime::now(),
        request_id: b"6f1c2a9e0b7d4c3e8a5f1d2c3b4a5968",
        client: "127.0.0.1:51234".parse().unwrap(),
        method: "GET",
        path: "/api/orders/42",
        route: Some("/api"),
        status: 200,
        upstream: Some("127.0.0.1:9001".parse().unwrap()),
        attempts: 1,
        duration_us: 812,
        head_us: 700,
        upstream_us: Some(650),
        bytes_in: None,
        bytes_out: 1234,
        complete: true,
        subject: Some("user-1234"),
        idempotency: None,
    };
    let mut out = Vec::with_capacity(512);
    for (name, format) in [
        ("access_line_text", AccessFormat::Text),
        ("access_line_json", AccessFormat::Json),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(&entry).write(format, &mut out);
                black_box(out.len())
            })
        });
    }
}

criterion_group!(benches, balancer, headers, target, access_line, end_to_end);
criterion_main!(benches);
