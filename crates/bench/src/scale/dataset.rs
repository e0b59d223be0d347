//! A Kubernetes-shaped data set, the same for every server: keys under
//! `/registry/<resource>/<namespace>/<name>`, value sizes drawn as an apiserver's objects are
//! (most 0.5–4 kB, about one in a hundred 10–100 kB, one in 20,000 a megabyte), a share of
//! the objects rewritten several times so there is history, and the events under leases.
//! Everything follows from the key number, so every server gets byte-identical requests.

/// Resources and their weights out of [`WEIGHT_TOTAL`].
const RESOURCES: [(&str, u64); 7] = [
    ("pods", 7),
    ("configmaps", 3),
    ("secrets", 3),
    ("events", 4),
    ("replicasets", 1),
    ("services", 1),
    ("endpointslices", 1),
];
const WEIGHT_TOTAL: u64 = 20;
const NAMESPACES: u64 = 200;
/// Every this many keys one is a megabyte (below etcd's 1.5 MiB request limit).
const MEGABYTE_EVERY: u64 = 20_000;
pub(crate) const MEGABYTE: usize = 1_000_000;
/// One object in this many is 10–100 kB.
const LARGE_ONE_IN: u64 = 100;
/// One object in this many (not events, not the megabyte ones) is rewritten
/// [`Dataset::rewrites`] times.
const REWRITTEN_ONE_IN: u64 = 5;
/// Leases the events are spread over (the apiserver reuses a lease per time bucket).
pub(crate) const EVENT_LEASES: usize = 100;
/// The TTL of those leases: longer than any run.
pub(crate) const EVENT_LEASE_TTL: i64 = 24 * 3600;
/// Random text the values are cut from.
const POOL_BYTES: usize = 4 << 20;

/// A 64-bit mix (splitmix64's finaliser): the deterministic randomness of the data set.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(crate) struct Dataset {
    pub(crate) keys: u64,
    pub(crate) rewrites: u64,
    /// The keys that are rewritten, in order.
    rewritten: Vec<u64>,
    pool: Vec<u8>,
}

impl Dataset {
    pub(crate) fn new(keys: u64, rewrites: u64) -> Dataset {
        let rewritten = (0..keys)
            .filter(|&i| {
                mix(i ^ 0x5eed).is_multiple_of(REWRITTEN_ONE_IN)
                    && resource(i) != "events"
                    && size(i) < MEGABYTE
            })
            .collect();
        // Printable text, as much of what an apiserver stores is (names, labels, specs).
        let pool = (0..POOL_BYTES as u64)
            .map(|i| b'a' + (mix(i) % 26) as u8)
            .collect();
        Dataset {
            keys,
            rewrites,
            rewritten,
            pool,
        }
    }

    /// Puts in the load: every key once, then the rewrites.
    pub(crate) fn puts(&self) -> u64 {
        self.keys + self.rewritten.len() as u64 * self.rewrites
    }

    /// Put number `n`: the key's number and which write of it this is (0 is the first).
    pub(crate) fn put(&self, n: u64) -> (u64, u64) {
        if n < self.keys {
            return (n, 0);
        }
        let r = n - self.keys;
        let per = self.rewritten.len().max(1) as u64;
        let i = self.rewritten.get((r % per) as usize).copied().unwrap_or(0);
        (i, 1 + r / per)
    }

    /// The value of write `round` of key `i`: `size(i)` bytes of the pool.
    pub(crate) fn value(&self, i: u64, round: u64) -> Vec<u8> {
        let len = size(i).min(self.pool.len());
        let room = (self.pool.len() - len) as u64;
        let at = (mix(i.wrapping_mul(31).wrapping_add(round)) % room.max(1)) as usize;
        self.pool[at..at + len].to_vec()
    }

    /// `len` bytes of the pool (values of one size for the footprint figures).
    pub(crate) fn value_of_size(&self, len: usize) -> Vec<u8> {
        self.pool[..len.min(self.pool.len())].to_vec()
    }

    /// Bytes of values the whole load writes.
    pub(crate) fn logical_bytes(&self) -> u64 {
        let first: u64 = (0..self.keys).map(|i| size(i) as u64).sum();
        let again: u64 = self.rewritten.iter().map(|&i| size(i) as u64).sum();
        first + again * self.rewrites
    }
}

pub(crate) fn resource(i: u64) -> &'static str {
    let mut w = mix(i ^ 0xa11) % WEIGHT_TOTAL;
    for (name, weight) in RESOURCES {
        if w < weight {
            return name;
        }
        w -= weight;
    }
    "pods"
}

pub(crate) fn key(i: u64) -> Vec<u8> {
    let res = resource(i);
    let ns = mix(i ^ 0x25) % NAMESPACES;
    format!("/registry/{res}/ns-{ns:03}/{res}-{i:08}").into_bytes()
}

pub(crate) fn size(i: u64) -> usize {
    if i % MEGABYTE_EVERY == MEGABYTE_EVERY - 1 {
        return MEGABYTE;
    }
    let h = mix(i ^ 0x512e);
    if h.is_multiple_of(LARGE_ONE_IN) {
        10_000 + ((h >> 16) % 90_000) as usize
    } else {
        512 + ((h >> 16) % 3_585) as usize
    }
}

/// Whether key `i` is an event, attached to one of the event leases.
pub(crate) fn is_event(i: u64) -> bool {
    resource(i) == "events"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_set_is_shaped_as_the_issue_asks() {
        let d = Dataset::new(100_000, 3);
        let sizes: Vec<usize> = (0..d.keys).map(size).collect();
        let small = sizes.iter().filter(|&&s| (512..=4096).contains(&s)).count();
        let large = sizes
            .iter()
            .filter(|&&s| (10_000..100_000).contains(&s))
            .count();
        let huge = sizes.iter().filter(|&&s| s == MEGABYTE).count();
        assert!(small > 98_000, "{small}");
        assert!((800..1200).contains(&large), "{large}");
        assert_eq!(huge, 5);
        let events = (0..d.keys).filter(|&i| is_event(i)).count();
        assert!((18_000..22_000).contains(&events), "{events}");
        // About a sixth of the non-event keys are rewritten three times.
        let extra = d.puts() - d.keys;
        assert!((40_000..56_000).contains(&extra), "{extra}");
        // Every put is a key of the set, rewrites after first writes.
        assert_eq!(d.put(5), (5, 0));
        let (i, round) = d.put(d.keys);
        assert!(i < d.keys && round == 1);
        assert_eq!(d.put(d.puts() - 1).1, 3);
        // Different rounds write different bytes of the same length.
        assert_eq!(d.value(i, 0).len(), d.value(i, 1).len());
        assert_ne!(d.value(i, 0), d.value(i, 1));
        assert!(key(7).starts_with(b"/registry/"));
        let logical = d.logical_bytes();
        assert!(logical > 250 << 20 && logical < 600 << 20, "{logical}");
    }
}
