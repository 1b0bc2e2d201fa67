//! `CLUSTER SHARDS` as Redis 7 sends it (RESP3 maps, RESP2 flat arrays), and answers that
//! must not be taken for a topology.

use redis::Value;

use super::*;

fn s(x: &str) -> Value {
    Value::BulkString(x.as_bytes().to_vec())
}

/// A node as RESP3 sends it.
fn node(endpoint: &str, ip: &str, port: i64, tls_port: Option<i64>, role: &str) -> Value {
    let mut m = vec![
        (s("id"), s("e0c8a3a0")),
        (s("port"), Value::Int(port)),
        (s("ip"), s(ip)),
        (s("endpoint"), s(endpoint)),
        (s("role"), s(role)),
        (s("replication-offset"), Value::Int(42)),
        (s("health"), s("online")),
    ];
    if let Some(t) = tls_port {
        m.push((s("tls-port"), Value::Int(t)));
    }
    Value::Map(m)
}

fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
    Value::Map(vec![
        (
            s("slots"),
            Value::Array(slots.iter().map(|&i| Value::Int(i)).collect()),
        ),
        (s("nodes"), Value::Array(nodes)),
    ])
}

fn three_shards() -> Value {
    Value::Array(vec![
        shard(
            &[10923, 16383],
            vec![
                node("127.0.0.1", "127.0.0.1", 7002, Some(8002), "master"),
                node("127.0.0.1", "127.0.0.1", 7005, Some(8005), "replica"),
            ],
        ),
        shard(
            &[0, 5460],
            vec![
                node("127.0.0.1", "127.0.0.1", 7003, None, "replica"),
                node("127.0.0.1", "127.0.0.1", 7000, Some(8000), "master"),
            ],
        ),
        shard(
            &[5461, 10000, 10001, 10922],
            vec![node("127.0.0.1", "127.0.0.1", 7001, Some(8001), "master")],
        ),
    ])
}

#[test]
fn masters_sorted_with_their_slots() {
    let t = parse_shards(three_shards(), false).unwrap();
    let got: Vec<(&str, &[(u16, u16)])> = t
        .masters
        .iter()
        .map(|m| (m.addr.as_str(), m.slots.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("127.0.0.1:7000", &[(0, 5460)][..]),
            ("127.0.0.1:7001", &[(5461, 10000), (10001, 10922)][..]),
            ("127.0.0.1:7002", &[(10923, 16383)][..]),
        ]
    );
    assert_eq!(t.masters[0].host, "127.0.0.1");
    assert_eq!(t.masters[0].port, 7000);
    assert_eq!(t.replicas, vec!["127.0.0.1:7003", "127.0.0.1:7005"]);
}

#[test]
fn tls_clusters_are_reached_on_their_tls_port() {
    let t = parse_shards(three_shards(), true).unwrap();
    let addrs: Vec<&str> = t.masters.iter().map(|m| m.addr.as_str()).collect();
    assert_eq!(
        addrs,
        ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]
    );
    // The replica without a tls-port is left out of the list, not an error.
    assert_eq!(t.replicas, vec!["127.0.0.1:8005"]);
    // A node without a tls-port cannot be reached over TLS: not a usable topology.
    let e = parse_shards(
        Value::Array(vec![shard(
            &[0, 16383],
            vec![node("h", "127.0.0.1", 7000, None, "master")],
        )]),
        true,
    )
    .unwrap_err();
    assert_eq!(e, "CLUSTER SHARDS: a node without a port");
}

#[test]
fn resp2_flat_arrays_read_the_same() {
    let flat = |v: Value| match v {
        Value::Map(pairs) => Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => other,
    };
    let Value::Array(shards) = three_shards() else {
        unreachable!()
    };
    let shards = shards
        .into_iter()
        .map(|sh| {
            let Value::Map(pairs) = sh else {
                unreachable!()
            };
            Value::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| {
                        let v = match v {
                            Value::Array(nodes) if k == s("nodes") => {
                                Value::Array(nodes.into_iter().map(flat).collect())
                            }
                            other => other,
                        };
                        [k, v]
                    })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        parse_shards(Value::Array(shards), false).unwrap(),
        parse_shards(three_shards(), false).unwrap()
    );
}

#[test]
fn endpoint_first_then_ip_and_ipv6_is_bracketed() {
    let t = parse_shards(
        Value::Array(vec![
            shard(
                &[0, 100],
                vec![node("?", "127.0.0.5", 7000, None, "master")],
            ),
            shard(&[101, 200], vec![node("", "::1", 7001, None, "master")]),
            shard(
                &[201, 300],
                vec![node("redis-a.internal", "10.0.0.1", 7002, None, "master")],
            ),
        ]),
        false,
    )
    .unwrap();
    let addrs: Vec<&str> = t.masters.iter().map(|m| m.addr.as_str()).collect();
    assert_eq!(
        addrs,
        ["127.0.0.5:7000", "[::1]:7001", "redis-a.internal:7002"]
    );
    assert_eq!(t.masters[1].host, "::1");
}

/// A shard without slots (an empty master just added, a failed master whose replica took
/// its slots) holds no reachable key: not tracked, and not a topology change.
#[test]
fn shards_without_slots_are_not_tracked() {
    let t = parse_shards(
        Value::Array(vec![
            shard(
                &[0, 16383],
                vec![node("h", "127.0.0.1", 7000, None, "master")],
            ),
            shard(&[], vec![node("h", "127.0.0.1", 7009, None, "master")]),
            shard(&[], vec![node("h", "127.0.0.1", 7010, None, "replica")]),
        ]),
        false,
    )
    .unwrap();
    let addrs: Vec<&str> = t.masters.iter().map(|m| m.addr.as_str()).collect();
    assert_eq!(addrs, ["h:7000"]);
}

/// Answers that must never become a topology the view is trusted under.
#[test]
fn malformed_answers_are_refused() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("not a list", s("OK"), "CLUSTER SHARDS: not a list: "),
        (
            "no slots member",
            Value::Array(vec![Value::Map(vec![(s("nodes"), Value::Array(vec![]))])]),
            "CLUSTER SHARDS: a shard without slots",
        ),
        (
            "odd slot list",
            Value::Array(vec![shard(
                &[0],
                vec![node("h", "127.0.0.1", 7000, None, "master")],
            )]),
            "CLUSTER SHARDS: a slot range that is not two numbers",
        ),
        (
            "slot beyond u16",
            Value::Array(vec![shard(
                &[0, 70000],
                vec![node("h", "127.0.0.1", 7000, None, "master")],
            )]),
            "CLUSTER SHARDS: a slot out of range",
        ),
        (
            "slot 16384",
            Value::Array(vec![shard(
                &[0, 16384],
                vec![node("h", "127.0.0.1", 7000, None, "master")],
            )]),
            "CLUSTER SHARDS: a slot out of range",
        ),
        (
            "a range backwards",
            Value::Array(vec![shard(
                &[100, 99],
                vec![node("h", "127.0.0.1", 7000, None, "master")],
            )]),
            "CLUSTER SHARDS: a slot out of range",
        ),
        (
            "negative slot",
            Value::Array(vec![shard(
                &[-1, 5],
                vec![node("h", "127.0.0.1", 7000, None, "master")],
            )]),
            "CLUSTER SHARDS: a slot out of range",
        ),
        (
            "no nodes member",
            Value::Array(vec![Value::Map(vec![(s("slots"), Value::Array(vec![]))])]),
            "CLUSTER SHARDS: a shard without nodes",
        ),
        (
            "port beyond u16",
            Value::Array(vec![shard(
                &[0, 1],
                vec![node("h", "127.0.0.1", 65536, None, "master")],
            )]),
            "CLUSTER SHARDS: a node without a port",
        ),
        (
            "two masters in a shard",
            Value::Array(vec![shard(
                &[0, 1],
                vec![
                    node("h", "127.0.0.1", 7000, None, "master"),
                    node("h", "127.0.0.1", 7001, None, "master"),
                ],
            )]),
            "CLUSTER SHARDS: a shard with two masters",
        ),
        (
            "slots served without a master",
            Value::Array(vec![shard(
                &[0, 16383],
                vec![node("h", "127.0.0.1", 7003, None, "replica")],
            )]),
            "CLUSTER SHARDS: a shard serves slots without a master",
        ),
        (
            "a node without any address",
            Value::Array(vec![shard(
                &[0, 1],
                vec![Value::Map(vec![
                    (s("port"), Value::Int(7000)),
                    (s("role"), s("master")),
                ])],
            )]),
            "CLUSTER SHARDS: a node without an address",
        ),
    ];
    for (what, v, want) in cases {
        let e = parse_shards(v, false).expect_err(what);
        assert!(e.starts_with(want), "{what}: {e}");
    }
}

/// The fuzz target's seeds are real answers: they parse to the topology they describe.
#[test]
fn the_fuzz_seeds_are_topologies() {
    let seed = |name: &str| {
        let path = format!(
            "{}/fuzz/corpus/cluster_shards/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        redis::parse_redis_value(&std::fs::read(path).unwrap()).unwrap()
    };
    let t = parse_shards(seed("resp2-three-shards"), false).unwrap();
    let got: Vec<(&str, &[(u16, u16)])> = t
        .masters
        .iter()
        .map(|m| (m.addr.as_str(), m.slots.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("127.0.0.1:7000", &[(0, 5460)][..]),
            ("127.0.0.1:7001", &[(5461, 10000), (10001, 10922)][..]),
            ("127.0.0.1:7002", &[(10923, 16383)][..]),
        ]
    );
    assert_eq!(t.replicas, vec!["127.0.0.1:7003"]);
    let t = parse_shards(seed("resp3-map-one-shard"), false).unwrap();
    assert_eq!(t.masters[0].addr, "[::1]:7000");
    assert!(parse_shards(seed("error"), false).is_err());
}
