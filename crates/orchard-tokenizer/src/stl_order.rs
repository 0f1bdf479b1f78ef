//! Iteration order of llama.cpp's `std::unordered_map<std::string, llama_token> token_to_id`
//! under libstdc++ (GCC's standard library, what Linux builds of llama.cpp use).
//!
//! llama.cpp finds some special tokens (EOT, FIM) by walking that map and taking the first token
//! whose text is in a list. When a vocabulary holds two candidates, e.g. SmolLM2's
//! `<|endoftext|>` and `<|im_end|>`, which one wins depends on the hash table's internal order,
//! so we replay libstdc++'s `std::hash<std::string>`, prime rehash policy and node linking. This
//! is only done when such a tie exists.

/// libstdc++'s `__prime_list` up to 2^32 (bucket counts never get near the end of it here).
static PRIMES: &[u64] = &[
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    103, 109, 113, 127, 137, 139, 149, 157, 167, 179, 193, 199, 211, 227, 241, 257, 277, 293, 313,
    337, 359, 383, 409, 439, 467, 503, 541, 577, 619, 661, 709, 761, 823, 887, 953, 1031, 1109,
    1193, 1289, 1381, 1493, 1613, 1741, 1879, 2029, 2179, 2357, 2549, 2753, 2971, 3209, 3469, 3739,
    4027, 4349, 4703, 5087, 5503, 5953, 6427, 6949, 7517, 8123, 8783, 9497, 10273, 11113, 12011,
    12983, 14033, 15173, 16411, 17749, 19183, 20753, 22447, 24281, 26267, 28411, 30727, 33223,
    35933, 38873, 42043, 45481, 49201, 53201, 57557, 62233, 67307, 72817, 78779, 85229, 92203,
    99733, 107897, 116731, 126271, 136607, 147793, 159871, 172933, 187091, 202409, 218971, 236897,
    256279, 277261, 299951, 324503, 351061, 379787, 410857, 444487, 480881, 520241, 562841, 608903,
    658753, 712697, 771049, 834181, 902483, 976369, 1056323, 1142821, 1236397, 1337629, 1447153,
    1565659, 1693859, 1832561, 1982627, 2144977, 2320627, 2510653, 2716249, 2938679, 3179303,
    3439651, 3721303, 4026031, 4355707, 4712381, 5098259, 5515729, 5967347, 6456007, 6984629,
    7556579, 8175383, 8844859, 9569143, 10352717, 11200489, 12117689, 13109983, 14183539, 15345007,
    16601593, 17961079, 19431899, 21023161, 22744717, 24607243, 26622317, 28802401, 31160981,
    33712729, 36473443, 39460231, 42691603, 46187573, 49969847, 54061849, 58488943, 63278561,
    68460391, 74066549, 80131819, 86693767, 93793069, 101473717, 109783337, 118773397, 128499677,
    139022417, 150406843, 162723577, 176048909, 190465427, 206062531, 222936881, 241193053,
    260944219, 282312799, 305431229, 330442829, 357502601, 386778277, 418451333, 452718089,
    489790921, 529899637, 573292817, 620239453, 671030513, 725980837, 785430967, 849749479,
    919334987, 994618837, 1076067617, 1164186217, 1259520799, 1362662261, 1474249943, 1594975441,
    1725587117, 1866894511, 2019773507, 2185171673, 2364114217, 2557710269, 2767159799, 2993761039,
    3238918481, 3504151727, 3791104843, 4101556399, 4294967291,
];

/// `std::_Hash_bytes(data, len, 0xc70f6907)`, libstdc++'s 64-bit Murmur-style string hash.
pub(crate) fn std_hash(data: &[u8]) -> u64 {
    const MUL: u64 = (0xc6a4_a793u64 << 32) + 0x5bd1_e995;
    let shift_mix = |v: u64| v ^ (v >> 47);
    let len = data.len();
    let mut hash = 0xc70f_6907u64 ^ (len as u64).wrapping_mul(MUL);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let d = shift_mix(u64::from_le_bytes(w).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut d = 0u64;
        for &b in rest.iter().rev() {
            d = (d << 8) + b as u64;
        }
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

/// `_Prime_rehash_policy` with the default max load factor of 1.
struct RehashPolicy {
    next_resize: u64,
}

impl RehashPolicy {
    fn next_bkt(&mut self, n: u64) -> u64 {
        const FAST: [u64; 14] = [2, 2, 2, 3, 5, 5, 7, 7, 11, 11, 11, 11, 13, 13];
        if n < FAST.len() as u64 {
            if n == 0 {
                return 1;
            }
            self.next_resize = FAST[n as usize];
            return FAST[n as usize];
        }
        let i = 6 + PRIMES[6..].partition_point(|&p| p < n);
        let p = PRIMES.get(i).copied().unwrap_or(u64::MAX);
        self.next_resize = p;
        p
    }

    /// `_M_need_rehash(n_bkt, n_elt, 1)`: the new bucket count when one more element needs one.
    fn need_rehash(&mut self, n_bkt: u64, n_elt: u64) -> Option<u64> {
        if n_elt < self.next_resize {
            return None;
        }
        let floor = if self.next_resize == 0 { 11 } else { 0 };
        let min_bkts = (n_elt + 1).max(floor);
        if min_bkts >= n_bkt {
            return Some(self.next_bkt((min_bkts + 1).max(n_bkt * 2)));
        }
        self.next_resize = n_bkt;
        None
    }
}

const NIL: u32 = u32::MAX;
/// A bucket entry pointing at the list head (`&_M_before_begin`).
const HEAD: u32 = u32::MAX - 1;

/// Inserts `keys` (distinct, in order) into a simulated libstdc++ unordered_map and returns,
/// for each key, its position when iterating the finished map.
pub(crate) fn iteration_positions<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u32> {
    let n = keys.len();
    let hashes: Vec<u64> = keys.map(std_hash).collect();
    let mut next = vec![NIL; n];
    let mut head = NIL;
    let mut buckets = vec![NIL; 1];
    let mut policy = RehashPolicy { next_resize: 0 };

    for node in 0..n as u32 {
        if let Some(n_bkt) = policy.need_rehash(buckets.len() as u64, node as u64) {
            // _M_rehash_aux for unique keys: relink every node, newest bucket first.
            let mut nb = vec![NIL; n_bkt as usize];
            let mut p = head;
            head = NIL;
            let mut bbegin_bkt = 0usize;
            while p != NIL {
                let following = next[p as usize];
                let b = (hashes[p as usize] % n_bkt) as usize;
                if nb[b] == NIL {
                    next[p as usize] = head;
                    head = p;
                    nb[b] = HEAD;
                    if next[p as usize] != NIL {
                        nb[bbegin_bkt] = p;
                    }
                    bbegin_bkt = b;
                } else {
                    let before = nb[b];
                    let after = if before == HEAD {
                        head
                    } else {
                        next[before as usize]
                    };
                    next[p as usize] = after;
                    if before == HEAD {
                        head = p;
                    } else {
                        next[before as usize] = p;
                    }
                }
                p = following;
            }
            buckets = nb;
        }
        // _M_insert_bucket_begin.
        let n_bkt = buckets.len() as u64;
        let b = (hashes[node as usize] % n_bkt) as usize;
        let before = buckets[b];
        if before != NIL {
            let after = if before == HEAD {
                head
            } else {
                next[before as usize]
            };
            next[node as usize] = after;
            if before == HEAD {
                head = node;
            } else {
                next[before as usize] = node;
            }
        } else {
            next[node as usize] = head;
            head = node;
            let following = next[node as usize];
            if following != NIL {
                let fb = (hashes[following as usize] % n_bkt) as usize;
                buckets[fb] = node;
            }
            buckets[b] = HEAD;
        }
    }

    let mut pos = vec![0u32; n];
    let mut p = head;
    let mut i = 0u32;
    while p != NIL {
        pos[p as usize] = i;
        i += 1;
        p = next[p as usize];
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_libstdcxx() {
        // Values printed by std::hash<std::string> with GCC 12's libstdc++.
        assert_eq!(std_hash(b""), 6142509188972423790);
        assert_eq!(std_hash(b"a"), 4993892634952068459);
        assert_eq!(std_hash(b"ab"), 5498234120169091963);
        assert_eq!(std_hash(b"abcdefgh"), 8664279048047335611);
        assert_eq!(std_hash(b"abcdefghi"), 13036955925923793583);
        assert_eq!(std_hash(b"<|im_end|>"), 2038672007907099973);
        assert_eq!(std_hash(b"hello world, this is long"), 2369277252547399713);
    }

    #[test]
    fn order_matches_libstdcxx() {
        // Iteration order printed by GCC 12 for keys "tok0", "tok7", ... inserted in order.
        let expected = [
            36, 33, 31, 30, 12, 1, 11, 21, 9, 7, 25, 6, 34, 28, 37, 29, 3, 10, 13, 4, 5, 0, 35, 24,
            27, 39, 15, 38, 14, 17, 16, 32, 8, 2, 18, 23, 19, 26, 20, 22,
        ];
        let keys: Vec<String> = (0..40).map(|i| format!("tok{}", i * 7)).collect();
        let pos = iteration_positions(keys.iter().map(|k| k.as_bytes()));
        let mut order = vec![0usize; keys.len()];
        for (key, &p) in pos.iter().enumerate() {
            order[p as usize] = key;
        }
        assert_eq!(order, expected);
    }
}
