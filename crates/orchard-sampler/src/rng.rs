//! llama.cpp's random stream: its dist sampler draws `std::uniform_real_distribution<double>(0, 1)`
//! from a `std::mt19937` seeded with the request's seed, once per sampled token. Drawing the same
//! numbers (mt19937 from `rand_mt`, the conversion to double as libstdc++ does it) makes a seeded
//! request pick the tokens llama-server picks from the same logits.

use std::hash::{BuildHasher, Hasher};

#[derive(Clone, Debug)]
pub(crate) struct Rng {
    mt: rand_mt::Mt,
}

impl Rng {
    /// llama.cpp's seeds are `uint32_t`; larger ones keep their low 32 bits, as a C++ conversion
    /// to `uint32_t` would.
    pub(crate) fn from_seed(seed: u64) -> Rng {
        Rng {
            mt: rand_mt::Mt::new(seed as u32),
        }
    }

    /// libstdc++'s `generate_canonical<double, 53>` on a 32-bit engine: two draws,
    /// `(a + b * 2^32) / 2^64` in double arithmetic, and 1 mapped to the largest double below it.
    pub(crate) fn next_f64(&mut self) -> f64 {
        const R: f64 = 4_294_967_296.0; // 2^32
        let a = f64::from(self.mt.next_u32());
        let b = f64::from(self.mt.next_u32());
        let u = (a + b * R) / (R * R);
        if u >= 1.0 {
            1.0 - f64::EPSILON / 2.0
        } else {
            u
        }
    }
}

/// A seed nobody chose, in llama.cpp's 32-bit range: std's per-process random hasher keys mixed
/// with the clock, so two servers started at the same instant still differ. Never
/// `DEFAULT_SEED` itself (that value means "pick one").
pub(crate) fn entropy_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    let s = h.finish() as u32;
    u64::from(if u64::from(s) == crate::DEFAULT_SEED {
        s - 1
    } else {
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_seeds_differ() {
        let mut a = Rng::from_seed(42);
        let mut b = Rng::from_seed(42);
        let mut c = Rng::from_seed(43);
        let xa: Vec<f64> = (0..8).map(|_| a.next_f64()).collect();
        let xb: Vec<f64> = (0..8).map(|_| b.next_f64()).collect();
        let xc: Vec<f64> = (0..8).map(|_| c.next_f64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    /// The numbers libstdc++ (GCC 12, Debian 12) gives for
    /// `std::uniform_real_distribution<double> dist(0.0f, 1.0f); std::mt19937 rng(seed);`,
    /// printed with `%a` by a four-line C++ program.
    #[test]
    fn stream_equals_libstdcxx_uniform_real_distribution_on_mt19937() {
        let mut r = Rng::from_seed(42);
        let want = [
            "0x1.97d47b66bfc3cp-1",
            "0x1.77aca8779b102p-3",
            "0x1.8f33a88f76c7fp-1",
            "0x1.3196582932836p-1",
            "0x1.c88861e49fc36p-2",
            "0x1.997f4d627ef42p-4",
        ];
        for w in want {
            assert_eq!(hex(r.next_f64()), w);
        }
        assert_eq!(
            hex(Rng::from_seed(0xFFFF_FFFE).next_f64()),
            "0x1.a12c688854a6ep-4"
        );
        // The C++ standard's check of mt19937 itself: the 10000th output of the default seed.
        let mut mt = rand_mt::Mt::new(5489);
        let last = (0..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    /// `%a` formatting of a normal double.
    fn hex(x: f64) -> String {
        let bits = x.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let frac = bits & ((1u64 << 52) - 1);
        let digits = format!("{frac:013x}");
        let digits = digits.trim_end_matches('0');
        format!("0x1.{digits}p{exp}")
    }

    #[test]
    fn uniform_in_unit_interval_with_sane_mean() {
        let mut r = Rng::from_seed(0);
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        let mean = sum / n as f64;
        // Standard error of the mean is ~0.0009; 0.005 is > 5 sigma.
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    }
}
