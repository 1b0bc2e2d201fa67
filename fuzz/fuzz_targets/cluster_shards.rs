//! The cluster session's reader of `CLUSTER SHARDS` (`store::redis::cluster::parse_shards`):
//! bytes from a Redis node decide which masters doorman tracks and when its revocation view
//! is trusted. Never panics on any RESP value, and every topology it accepts holds its
//! promises: masters sorted by address and unique, each serving at least one slot range,
//! every range within 0..=16383 and not backwards; the same answer for the same bytes.
#![no_main]

use doorman::fuzzing::cluster_shards;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for tls in [false, true] {
        let Some(parsed) = cluster_shards(data, tls) else {
            return;
        };
        let Ok(masters) = parsed else { continue };
        for pair in masters.windows(2) {
            assert!(pair[0].0 < pair[1].0, "masters not sorted and unique");
        }
        for (addr, slots) in &masters {
            assert!(!slots.is_empty(), "{addr} tracked without slots");
            for &(lo, hi) in slots {
                assert!(lo <= hi && hi < 16384, "{addr}: range {lo}-{hi}");
            }
            assert!(addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()));
        }
        assert_eq!(cluster_shards(data, tls), Some(Ok(masters)), "not deterministic");
    }
});
