//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): a lookup table of `M`
//! entries (`M` prime) in which every backend owns about `M / N` entries. The kernel hashes a
//! flow's 5-tuple to an entry, so:
//!
//! - every node that has the same backend set builds the same table and sends a flow to the same
//!   backend: the table depends only on the backends' addresses and ports, hashed with fixed
//!   seeds, never on node-local ids, on the input order, or on a per-process random state;
//! - removing one of `N` backends rewrites that backend's entries and only a few others, so about
//!   `1 / N` of the flows move (a modulo over a plain backend list would move most of them).
//!
//! The hash is part of the contract between nodes (and agent versions during a rolling upgrade):
//! `tests::golden_table` pins it, so it cannot change by accident.
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

/// Default table size: prime, large enough that 100 backends still get within about 1% of their
/// fair share, small enough for 64 external groups in the default slot map.
pub const DEFAULT_SIZE: u32 = 16381;
/// Largest allowed table size: the largest prime below 2^16.
pub const MAX_SIZE: u32 = 65521;

/// Whether `m` can be a Maglev table size: a prime in `2..=MAX_SIZE`. Prime, because then every
/// `skip` in `1..m` is coprime to `m` and each backend's permutation visits every entry.
pub fn is_valid_size(m: u32) -> bool {
    (2..=MAX_SIZE).contains(&m) && (2..).take_while(|d| d * d <= m).all(|d| !m.is_multiple_of(d))
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{given} is out of range: the Maglev table size must be a prime from 2 to {MAX_SIZE}")]
    OutOfRange { given: u64 },
    #[error(
        "{given} is not prime: the Maglev table size must be a prime (nearest: {below} and {above}; \
         the default is {DEFAULT_SIZE})"
    )]
    NotPrime { given: u32, below: u32, above: u32 },
}

/// Parses and validates a table size (the `--maglev-table-size` value parser).
pub fn parse_size(s: &str) -> Result<u32, SizeError> {
    let given: u64 = s.trim().parse().map_err(|_| SizeError::NotANumber(s.to_owned()))?;
    let m = u32::try_from(given).ok().filter(|m| (2..=MAX_SIZE).contains(m));
    let m = m.ok_or(SizeError::OutOfRange { given })?;
    if is_valid_size(m) {
        return Ok(m);
    }
    // In range and not prime: 4 ≤ m < MAX_SIZE, so there is a prime on either side.
    let below = (2..m).rev().find(|&p| is_valid_size(p)).unwrap_or(2);
    let above = (m..=MAX_SIZE).find(|&p| is_valid_size(p)).unwrap_or(MAX_SIZE);
    Err(SizeError::NotPrime { given: m, below, above })
}

/// The Maglev lookup table of `backends` with `size` entries: entry `i` is an index into
/// `backends`. Empty when `backends` is. Equal addresses count once (the first index is used).
///
/// Backends take turns in address order, each claiming the next free entry of its own
/// permutation `(offset + j * skip) % size` (the paper's `Populate`), until the table is full.
/// So each backend gets `⌊size/N⌋` or `⌈size/N⌉` entries, and with `N > size` some get none.
///
/// # Panics
/// When `!is_valid_size(size)`: a permutation of a non-prime size may not visit every entry, and
/// filling would never end. `--maglev-table-size` is validated when parsed.
pub fn table(backends: &[SocketAddr], size: u32) -> Vec<usize> {
    assert!(is_valid_size(size), "Maglev table size {size} is not a prime in 2..={MAX_SIZE}");
    // Address order, not input order: the tie-breaking (who claims a contested entry first)
    // must be the same on every node.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| (backends[i], i));
    order.dedup_by_key(|i| backends[*i]);
    if order.is_empty() {
        return Vec::new();
    }
    let m = u64::from(size);
    // Per backend: its current position in its permutation, and its skip.
    let mut walkers: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let key = key_bytes(backends[i]);
            (hash(SEED_OFFSET, &key) % m, hash(SEED_SKIP, &key) % (m - 1) + 1)
        })
        .collect();
    let mut entries = vec![usize::MAX; size as usize];
    let mut filled = 0;
    loop {
        for (walker, &backend) in walkers.iter_mut().zip(&order) {
            let (pos, skip) = walker;
            // Terminates: `skip` is coprime to the prime `m`, so the walk reaches every entry.
            while entries[*pos as usize] != usize::MAX {
                *pos = (*pos + *skip) % m;
            }
            entries[*pos as usize] = backend;
            *pos = (*pos + *skip) % m;
            filled += 1;
            if filled == entries.len() {
                return entries;
            }
        }
    }
}

/// The bytes a backend is hashed on: family, address, port (network order). The protocol is the
/// same for every backend of a group, so it adds nothing.
fn key_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut key = Vec::with_capacity(19);
    match addr.ip() {
        IpAddr::V4(ip) => {
            key.push(4);
            key.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            key.push(6);
            key.extend_from_slice(&ip.octets());
        }
    }
    key.extend_from_slice(&addr.port().to_be_bytes());
    key
}

/// Seeds of the two independent hashes the paper asks for (`offset` and `skip`). Fixed: every
/// node and every agent version must compute the same table.
const SEED_OFFSET: u64 = 0xcbf2_9ce4_8422_2325; // the FNV-1a 64 offset basis
const SEED_SKIP: u64 = 0x9e37_79b9_7f4a_7c15; // 2^64 / golden ratio

/// FNV-1a 64 from `seed`, then MurmurHash3's 64-bit finalizer. FNV alone barely moves the high
/// bits for a change in the last bytes (the port), and `% m` needs all bits mixed. Hand-written
/// rather than std's hashers, whose output is not promised to stay the same across releases.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests;
