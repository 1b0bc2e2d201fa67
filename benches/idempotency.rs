//! Added latency of idempotency keys: a keep-alive POST through doorman without a key, with
//! a fresh key (first request: lease + forward + store), and with a used key (replay: the
//! replica is not called), on the embedded store and on Redis (a private redis-server).
//! Round trips per request are pinned by a test (tests/idempotency.rs): 2 first, 1 replay.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use doorman::server::{self, Listeners};
use doorman::snapshot::Snapshot;
use http::Request;
use http_body_util::{BodyExt, Full};

mod common;

use common::{Sender, client, redis_server, replica};

async fn post(send: &mut Sender, path: &str, key: Option<&str>) {
    let mut b = Request::post(path)
        .header("host", "bench")
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    send.ready().await.unwrap();
    let resp = send
        .send_request(
            b.body(Full::new(Bytes::from_static(b"{\"amount\":10}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    black_box(resp.into_body().collect().await.unwrap());
}

fn config(upstream: SocketAddr, certs: &Path, store: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
plain_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[[tls.certificates]]
cert = "{c}/b.crt"
key = "{c}/b.key"
{store}
[idempotency]
ttl = "1h"
[upstreams.api]
servers = [{{ address = "{upstream}" }}]
[[routes]]
path_prefix = "/keyed"
upstream = "api"
idempotency = "required"
[[routes]]
path_prefix = "/"
upstream = "api"
"#,
        c = certs.display()
    )
}

fn keyed_post(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let certs = common::cert_dir();
    let redis = redis_server();
    let redis_store = format!(
        "[store]\nredis_url = \"redis://127.0.0.1:{}/0\"\ntimeout = \"200ms\"",
        redis.port
    );

    for (name, store) in [("embedded", String::new()), ("redis", redis_store)] {
        let plain = rt.block_on(async {
            let upstream = replica().await;
            let cfg =
                doorman::config::parse(&config(upstream, certs.path(), &store), Path::new("bench"))
                    .unwrap();
            let listeners = Listeners::bind(&cfg.server).await.unwrap();
            let plain = listeners.addrs().unwrap().plain.unwrap();
            let snapshot = Snapshot::build(&cfg).unwrap().into_shared();
            tokio::spawn(server::run(listeners, snapshot, std::future::pending()));
            plain
        });
        let mut g = c.benchmark_group(format!("keyed_post_{name}"));
        // Each client connects just before its benchmark (keep-alive waits are bounded).
        let mut s = rt.block_on(client(plain));
        g.bench_function("no_key", |b| {
            b.iter(|| rt.block_on(post(&mut s, "/plain", None)))
        });
        let mut s = rt.block_on(client(plain));
        let mut n = 0u64;
        g.bench_function("first_request", |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(post(&mut s, "/keyed", Some(&format!("k-{name}-{n}"))))
            })
        });
        let mut s = rt.block_on(client(plain));
        rt.block_on(post(&mut s, "/keyed", Some("replayed")));
        g.bench_function("replay", |b| {
            b.iter(|| rt.block_on(post(&mut s, "/keyed", Some("replayed"))))
        });
        g.finish();
    }
}

criterion_group!(benches, keyed_post);
criterion_main!(benches);
