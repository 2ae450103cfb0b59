//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M in
//! which every backend owns M/N entries, built so that adding or removing one backend moves
//! only about 1/N of the entries.
//!
//! The table depends only on the backends' addresses and ports (sorted, hashed with fixed
//! seeds), never on node-local ids or input order, so every node computes the same table and
//! picks the same backend for a flow: a flow that moves to another node (ECMP change, lost
//! conntrack entry) keeps its backend.

use std::net::Ipv4Addr;

/// Default table size: prime, > 100 x the backends a service usually has (Cilium's default).
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// A backend as Maglev sees it: its identity on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevBackend {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// Whether `m` can be a table size: a prime, so that every skip visits every entry.
pub fn valid_table_size(m: u32) -> bool {
    m >= 3
        && (2..)
            .take_while(|d: &u32| d * d <= m)
            .all(|d| !m.is_multiple_of(d))
}

/// The table for `backends`: entry i holds the index (into `backends` as given) of the
/// backend that owns it. Empty when there are no backends.
///
/// # Panics
/// When `m` is not a valid table size (a programming error: sizes are checked at config).
pub fn table(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    assert!(valid_table_size(m), "maglev table size {m} is not prime");
    if backends.is_empty() {
        return Vec::new();
    }
    // Fill in a canonical order so the table does not depend on the caller's order.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i]);
    order.dedup_by_key(|i| backends[*i]);
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let key = identity(&backends[i]);
            let offset = mix(key, 0x5bd1_e995) % u64::from(m);
            let skip = mix(key, 0x9e37_79b9_7f4a_7c15) % u64::from(m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (n, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[n] * skip) % u64::from(m);
            while table[c as usize] != u32::MAX {
                next[n] += 1;
                c = (offset + next[n] * skip) % u64::from(m);
            }
            table[c as usize] = order[n] as u32;
            next[n] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// A backend's identity as bytes hashed: address then port, both in network order.
fn identity(b: &MaglevBackend) -> u64 {
    // `mix` below then spreads it per use.
    crate::hash::fnv1a(b.addr.octets().into_iter().chain(b.port.to_be_bytes()))
}

/// splitmix64's finalizer of `x ^ seed`: two seeds give the two independent hashes.
fn mix(x: u64, seed: u64) -> u64 {
    let mut z = x ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                addr: Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1),
                port: 8080,
            })
            .collect()
    }

    #[test]
    fn table_sizes_are_primes() {
        assert!(valid_table_size(DEFAULT_TABLE_SIZE));
        assert!(valid_table_size(251));
        assert!(valid_table_size(65537));
        assert!(!valid_table_size(16384));
        assert!(!valid_table_size(1));
    }

    #[test]
    fn every_backend_gets_an_equal_share() {
        let b = backends(10);
        let t = table(&b, DEFAULT_TABLE_SIZE);
        let mut counts = [0u32; 10];
        for &e in &t {
            counts[e as usize] += 1;
        }
        let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{counts:?}");
    }

    #[test]
    fn the_table_does_not_depend_on_input_order() {
        let b = backends(7);
        let mut reversed = b.clone();
        reversed.reverse();
        let t1: Vec<MaglevBackend> = table(&b, 251).iter().map(|&i| b[i as usize]).collect();
        let t2: Vec<MaglevBackend> = table(&reversed, 251)
            .iter()
            .map(|&i| reversed[i as usize])
            .collect();
        assert_eq!(t1, t2);
    }

    #[test]
    fn no_backends_no_table() {
        assert!(table(&[], 251).is_empty());
    }

    proptest! {
        /// Removing one backend of n moves little more than the 1/n of entries it owned.
        #[test]
        fn removing_a_backend_moves_few_entries(n in 3usize..40, victim in 0usize..40) {
            let victim = victim % n;
            let all = backends(n);
            let mut fewer = all.clone();
            fewer.remove(victim);
            let m = DEFAULT_TABLE_SIZE;
            let before: Vec<MaglevBackend> = table(&all, m).iter().map(|&i| all[i as usize]).collect();
            let after: Vec<MaglevBackend> = table(&fewer, m).iter().map(|&i| fewer[i as usize]).collect();
            let owned = before.iter().filter(|b| **b == all[victim]).count();
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            // The paper reports a few percent of extra churn on top of the victim's share.
            prop_assert!(moved as f64 <= owned as f64 + 0.05 * f64::from(m), "moved {moved}, owned {owned}");
            prop_assert!(after.iter().all(|b| *b != all[victim]));
        }
    }
}
