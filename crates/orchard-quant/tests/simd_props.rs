//! Property tests of every SIMD kernel tier this CPU can run against its scalar twin: activation
//! quantizers must write identical bytes and dots (single-row and four-row) must return
//! identical bits, on random blocks at random lengths and misaligned addresses. Against ggml's
//! generic reference kernels, whose summation order differs, the dots must agree within a
//! tolerance relative to the sum of absolute products.

mod common;
#[path = "common/simd_data.rs"]
mod simd_data;

use common::Rng;
use orchard_core::DType;
use orchard_quant::{traits_for, vec_dot_f16_scalar_avx2, RowBlockKernel, Tier, VecDotFn};
use proptest::prelude::*;
use simd_data::{activations, random_blocks, DOT_TYPES};

fn simd_tiers() -> Vec<Tier> {
    [Tier::Avx2, Tier::Avx512, Tier::Neon]
        .into_iter()
        .filter(|t| t.is_available())
        .collect()
}

/// The scalar kernel a tier's dot must equal bit for bit: the scalar table's, except for the
/// F16 dot of the AVX2 tier, which mirrors ggml's AVX2 build. NEON only has to be close.
fn twin(tier: Tier, dtype: DType) -> Option<VecDotFn> {
    match (tier, dtype) {
        (Tier::Neon, _) => None,
        (Tier::Avx2, DType::F16) => Some(vec_dot_f16_scalar_avx2),
        _ => traits_for(Tier::Scalar, dtype).unwrap().vec_dot,
    }
}

/// `bytes` copied one byte past a fresh allocation's start, so kernels see unaligned rows.
fn misaligned(bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; bytes.len() + 1];
    v[1..].copy_from_slice(bytes);
    v
}

fn dequantize(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    (traits_for(Tier::Reference, dtype)
        .unwrap()
        .to_float
        .unwrap())(bytes, &mut y);
    y
}

/// The tiled Q6_K order written out plainly: per 16-quant sub-block the raw dot less 32 times the
/// activation's sum, scaled; the block total times the weight's d, then an FMA with the
/// activation's d.
fn q6_k_tiled_definition(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(210).zip(act.chunks_exact(292)).take(n / 256) {
        let mut q = [0i32; 256];
        for half in 0..2 {
            let (ql, qh) = (&x[half * 64..], &x[128 + half * 32..]);
            for l in 0..32 {
                let b = half * 128 + l;
                q[b] = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32;
                q[b + 32] = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32;
                q[b + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32;
                q[b + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32;
            }
        }
        let mut s1 = 0i32;
        for s in 0..16 {
            let raw: i32 = (0..16)
                .map(|i| q[16 * s + i] * i32::from(y[4 + 16 * s + i] as i8))
                .sum();
            let bsum = i32::from(i16::from_le_bytes([y[260 + 2 * s], y[261 + 2 * s]]));
            s1 = s1.wrapping_add(i32::from(x[192 + s] as i8) * (raw - 32 * bsum));
        }
        let dx = half::f16::from_le_bytes([x[208], x[209]]).to_f32();
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        acc = (s1 as f32 * dx).mul_add(dy, acc);
    }
    acc
}

/// A 16-row block kernel against the single-row order it reproduces (`one(n, row, act)`):
/// `n_rows` random `dtype` rows packed together, every lane bit for bit, with one activation
/// row (`act`) and, where the kernel has it, four (`acts`).
#[allow(clippy::too_many_arguments)]
fn check_row_block(
    k: &RowBlockKernel,
    dtype: DType,
    n: usize,
    n_rows: usize,
    act: &[u8],
    acts: &[Vec<u8>],
    one: impl Fn(usize, &[u8], &[u8]) -> f32,
    rng: &mut Rng,
    label: &str,
) -> Result<(), TestCaseError> {
    let rows: Vec<Vec<u8>> = (0..n_rows).map(|_| random_blocks(dtype, n, rng)).collect();
    let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
    let mut packed = vec![0u8; (k.packed_bytes)(n)];
    (k.pack)(n, &refs, &mut packed);
    let mut out = vec![0f32; n_rows];
    (k.dot)(n, &packed, act, &mut out);
    for (r, row) in rows.iter().enumerate() {
        prop_assert_eq!(
            out[r].to_bits(),
            one(n, row, act).to_bits(),
            "{} rows lane {} n={}",
            label,
            r,
            n
        );
    }
    if let Some(dot4) = k.dot4 {
        let four = dot4(n, &packed, std::array::from_fn(|c| &acts[c][1..]));
        for (c, ac) in acts.iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                prop_assert_eq!(
                    four[c][r].to_bits(),
                    one(n, row, &ac[1..]).to_bits(),
                    "{} rows x4 act {} lane {} n={}",
                    label,
                    c,
                    r,
                    n
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn dots_equal_their_scalar_twins(seed in any::<u64>(), n_blocks in 0usize..20, which in 0usize..11) {
        let (w, act) = DOT_TYPES[which];
        let mut rng = Rng::new(seed);
        // F16 rows of whole 16-lane chunks (no f64 tail) and ragged ones.
        let n = match (w, seed % 2) {
            (DType::F16, 0) => n_blocks * 16,
            (DType::F16, _) => n_blocks * 29 + (seed % 7) as usize,
            _ => n_blocks * w.block_size(),
        };
        let rows: Vec<Vec<u8>> = (0..4).map(|_| misaligned(&random_blocks(w, n, &mut rng))).collect();
        let raw_act = misaligned(&random_blocks(act, n, &mut rng));
        let acts: Vec<Vec<u8>> = (0..4).map(|_| misaligned(&random_blocks(act, n, &mut rng))).collect();
        for tier in Tier::ALL.into_iter().filter(|t| t.is_available()) {
            // Multi-row kernels of every tier, the scalar ones included, equal the single dot.
            let t = traits_for(tier, w).unwrap();
            let (dot, dot4a) = (t.vec_dot.unwrap(), t.vec_dot_4act.unwrap());
            let four = dot4a(n, &rows[0][1..], std::array::from_fn(|r| &acts[r][1..]));
            for (r, a) in acts.iter().enumerate() {
                prop_assert_eq!(four[r].to_bits(), dot(n, &rows[0][1..], &a[1..]).to_bits(), "{:?} {} 4act {}", tier, w, r);
            }
            if let Some(tile) = t.vec_dot_tile {
                let unpacked: Vec<Vec<u8>> = rows.iter().map(|r| {
                    let mut u = vec![0u8; (tile.unpacked_row_bytes)(n) + 1];
                    (tile.unpack)(n, &r[1..], &mut u[1..]);
                    u
                }).collect();
                // The tile's own activation layout where it has one.
                let tile_acts: Vec<Vec<u8>> = acts.iter().map(|a| match tile.unpack_act {
                    Some(ua) => {
                        let mut u = vec![0u8; (ua.row_bytes)(n) + 1];
                        (ua.unpack)(n, &a[1..], &mut u[1..]);
                        u
                    }
                    None => a.clone(),
                }).collect();
                if let Some(dot8) = tile.dot8 {
                    let out8 = dot8(n, std::array::from_fn(|r| &unpacked[r % 4][1..]), std::array::from_fn(|c| &tile_acts[c][1..]));
                    for r in 0..8 {
                        for (c, a) in acts.iter().enumerate() {
                            prop_assert_eq!(out8[r][c].to_bits(), dot(n, &rows[r % 4][1..], &a[1..]).to_bits(), "{:?} {} tile8 {} {}", tier, w, r, c);
                        }
                    }
                }
                let out = (tile.dot)(n, std::array::from_fn(|r| &unpacked[r][1..]), std::array::from_fn(|c| &tile_acts[c][1..]));
                for (r, row) in rows.iter().enumerate() {
                    for (c, a) in acts.iter().enumerate() {
                        prop_assert_eq!(out[r][c].to_bits(), dot(n, &row[1..], &a[1..]).to_bits(), "{:?} {} tile {} {}", tier, w, r, c);
                    }
                }
            }
        }
        for tier in simd_tiers() {
            let t = traits_for(tier, w).unwrap();
            let (dot, dot4) = (t.vec_dot.unwrap(), t.vec_dot_x4.unwrap());
            let four = dot4(n, std::array::from_fn(|r| &rows[r][1..]), &raw_act[1..]);
            for (r, row) in rows.iter().enumerate() {
                let ours = dot(n, &row[1..], &raw_act[1..]);
                prop_assert_eq!(four[r].to_bits(), ours.to_bits(), "{:?} {} x4 row {}", tier, w, r);
                if let Some(twin) = twin(tier, w) {
                    let theirs = twin(n, &row[1..], &raw_act[1..]);
                    prop_assert_eq!(ours.to_bits(), theirs.to_bits(), "{:?} {} n={}: {} vs {}", tier, w, n, ours, theirs);
                }
            }
        }
    }

    #[test]
    fn row_run_kernels_equal_the_single_dot(seed in any::<u64>(), n_blocks in 0usize..20, which in 0usize..11, m in 0usize..14) {
        // Runs of `m` consecutive rows (every split into quarters and leftovers), misaligned.
        let (w, act) = DOT_TYPES[which];
        let mut rng = Rng::new(seed);
        let n = if w == DType::F16 { n_blocks * 29 + (seed % 7) as usize } else { n_blocks * w.block_size() };
        let row_bytes = w.row_bytes(n as u64).unwrap() as usize;
        let mut run = vec![0u8; 1];
        for _ in 0..m {
            run.extend_from_slice(&random_blocks(w, n, &mut rng));
        }
        let a = misaligned(&random_blocks(act, n, &mut rng));
        for tier in Tier::ALL.into_iter().filter(|t| t.is_available()) {
            let t = traits_for(tier, w).unwrap();
            let (Some(rows), Some(dot)) = (t.vec_dot_rows, t.vec_dot) else { continue };
            let mut out = vec![f32::NAN; m];
            rows(n, &run[1..], row_bytes, &a[1..], &mut out);
            for (r, got) in out.iter().enumerate() {
                let want = dot(n, &run[1 + r * row_bytes..1 + (r + 1) * row_bytes], &a[1..]);
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{:?} {} rows run of {}: row {}", tier, w, m, r);
            }
        }
    }

    #[test]
    fn panel_kernel_equals_its_sequential_order(seed in any::<u64>(), n in 0usize..300, rows in 0usize..18, toks in 0usize..10, stride_pad in 0usize..3) {
        // Up to 16 F16 rows (rows `row_bytes` apart, maybe with a gap) against up to 8
        // activation rows: the packed layouts equal the scalar packing, and every result is
        // the sequential FMA chain's bits, missing rows and tokens zero.
        let mut rng = Rng::new(seed);
        let row_bytes = 2 * n + 2 * stride_pad;
        let block = |m: usize, rng: &mut Rng| {
            let mut v = vec![0u8; 1];
            for _ in 0..m {
                v.extend_from_slice(&random_blocks(DType::F16, n, rng));
                v.extend(std::iter::repeat_n(0xffu8, 2 * stride_pad));
            }
            v
        };
        let (w, a) = (block(rows, &mut rng), block(toks, &mut rng));
        for tier in Tier::ALL.into_iter().filter(|t| t.is_available()) {
            let Some(k) = traits_for(tier, DType::F16).unwrap().vec_dot_panel else { continue };
            let mut panel = vec![f32::NAN; 16 * n];
            (k.pack_rows)(n, &w[1..], row_bytes, rows, &mut panel);
            let mut want_panel = vec![f32::NAN; 16 * n];
            orchard_quant::panel_pack_f16_scalar::<16>(n, &w[1..], row_bytes, rows, &mut want_panel);
            prop_assert_eq!(panel.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want_panel.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            let mut acts = vec![f32::NAN; 8 * n];
            (k.pack_acts)(n, &a[1..], row_bytes, toks, &mut acts);
            let mut want_acts = vec![f32::NAN; 8 * n];
            orchard_quant::panel_acts_f16_scalar(n, &a[1..], row_bytes, toks, &mut want_acts);
            prop_assert_eq!(acts.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want_acts.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            let mut out = vec![[f32::NAN; 16]; toks.min(8)];
            (k.dot)(n, &panel, &acts, &mut out);
            for (t, o) in out.iter().enumerate() {
                for (r, got) in o.iter().enumerate() {
                    let want = if r < rows.min(16) {
                        (k.dot_one)(n, &w[1 + r * row_bytes..1 + r * row_bytes + 2 * n], &a[1 + t * row_bytes..1 + t * row_bytes + 2 * n])
                    } else {
                        0.0
                    };
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{:?} n={} row {} token {}", tier, n, r, t);
                }
            }
        }
    }

    #[test]
    fn interleaved_q4_k_orders_equal_their_scalar_twins(seed in any::<u64>(), n_blocks in 0usize..6) {
        let mut rng = Rng::new(seed);
        let n = n_blocks * 256;
        let w = misaligned(&random_blocks(DType::Q4_K, n, &mut rng));
        let a = misaligned(&random_blocks(DType::Q8_K, n, &mut rng));
        let s = traits_for(Tier::Scalar, DType::Q4_K).unwrap();
        for tier in simd_tiers() {
            let t = traits_for(tier, DType::Q4_K).unwrap();
            for (ours, theirs) in [
                (t.vec_dot_interleaved, s.vec_dot_interleaved),
                (t.vec_dot_interleaved_gemm, s.vec_dot_interleaved_gemm),
            ] {
                let (ours, theirs) = (ours.unwrap()(n, &w[1..], &a[1..]), theirs.unwrap()(n, &w[1..], &a[1..]));
                prop_assert_eq!(ours.to_bits(), theirs.to_bits(), "{:?} n={}", tier, n);
            }
            // Four rows block-interleaved: each result equals the scalar gemv order of its row.
            let rows4: Vec<u8> = (0..4).flat_map(|_| random_blocks(DType::Q4_K, n, &mut rng)).collect();
            let mut group = vec![0u8; rows4.len() + 1];
            orchard_quant::interleave_rows(&rows4, 144, &mut group[1..]);
            let got = t.vec_dot_interleaved_group.unwrap()(n, &group[1..], &a[1..]);
            let row = rows4.len() / 4;
            for (r, g) in got.iter().enumerate() {
                let want = s.vec_dot_interleaved.unwrap()(n, &rows4[r * row..(r + 1) * row], &a[1..]);
                prop_assert_eq!(g.to_bits(), want.to_bits(), "{:?} group row {} n={}", tier, r, n);
            }
            let scalar = s.vec_dot_interleaved_group.unwrap()(n, &group[1..], &a[1..]);
            prop_assert_eq!(scalar.map(f32::to_bits), got.map(f32::to_bits));
            // The 16-row block kernel of the gemm order: each lane equals the single-row kernel.
            if let Some(k) = t.vec_dot_interleaved_gemm_rows {
                let n_rows = 1 + (seed % k.rows as u64) as usize;
                let acts: Vec<Vec<u8>> = (0..4).map(|_| misaligned(&random_blocks(DType::Q8_K, n, &mut rng))).collect();
                let one = s.vec_dot_interleaved_gemm.unwrap();
                check_row_block(&k, DType::Q4_K, n, n_rows, &a[1..], &acts, one, &mut rng, &format!("{tier:?} gemm"))?;
            }
            // The four-activation gemm order: each result equals the single-row gemm order.
            let acts: Vec<Vec<u8>> = (0..4).map(|_| misaligned(&random_blocks(DType::Q8_K, n, &mut rng))).collect();
            let four = t.vec_dot_interleaved_gemm_4act.unwrap()(n, &w[1..], std::array::from_fn(|c| &acts[c][1..]));
            for (c, a) in acts.iter().enumerate() {
                let one = s.vec_dot_interleaved_gemm.unwrap()(n, &w[1..], &a[1..]);
                prop_assert_eq!(four[c].to_bits(), one.to_bits(), "{:?} gemm 4act {} n={}", tier, c, n);
            }
        }
        // Q6_K's tiled order: SIMD against scalar, and the scalar against its definition.
        let w6 = misaligned(&random_blocks(DType::Q6_K, n, &mut rng));
        let tiled = traits_for(Tier::Scalar, DType::Q6_K).unwrap().vec_dot_tiled.unwrap()(n, &w6[1..], &a[1..]);
        prop_assert_eq!(tiled.to_bits(), q6_k_tiled_definition(n, &w6[1..], &a[1..]).to_bits());
        let acts: Vec<Vec<u8>> = (0..4).map(|_| misaligned(&random_blocks(DType::Q8_K, n, &mut rng))).collect();
        for tier in simd_tiers() {
            let ours = traits_for(tier, DType::Q6_K).unwrap().vec_dot_tiled.unwrap()(n, &w6[1..], &a[1..]);
            prop_assert_eq!(ours.to_bits(), tiled.to_bits(), "{:?} tiled Q6_K n={}", tier, n);
            if let Some(k) = traits_for(tier, DType::Q6_K).unwrap().vec_dot_tiled_rows {
                let n_rows = 1 + (seed % k.rows as u64) as usize;
                check_row_block(&k, DType::Q6_K, n, n_rows, &a[1..], &acts, q6_k_tiled_definition, &mut rng, &format!("{tier:?} tiled"))?;
            }
            let four = traits_for(tier, DType::Q6_K).unwrap().vec_dot_tiled_4act.unwrap()(n, &w6[1..], std::array::from_fn(|c| &acts[c][1..]));
            for (c, ac) in acts.iter().enumerate() {
                let one = q6_k_tiled_definition(n, &w6[1..], &ac[1..]);
                prop_assert_eq!(four[c].to_bits(), one.to_bits(), "{:?} tiled Q6_K 4act {} n={}", tier, c, n);
            }
        }
    }

    #[test]
    fn activation_quantizers_equal_their_scalar_twins(seed in any::<u64>(), n_blocks in 0usize..12, specials in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let mut x = activations(n_blocks * 256, &mut rng);
        if specials && !x.is_empty() {
            for v in [f32::NAN, f32::INFINITY, -f32::INFINITY, -0.0, f32::MAX, 1e-40] {
                let at = rng.below(x.len() as u64) as usize;
                x[at] = v;
            }
        }
        for tier in simd_tiers() {
            for act in [DType::Q8_0, DType::Q8_1, DType::Q8_K, DType::F16] {
                let len = x.len() / act.block_size() * act.block_bytes();
                let mut ours = vec![0u8; len];
                let mut theirs = vec![0u8; len];
                (traits_for(tier, act).unwrap().from_float.unwrap())(&x, &mut ours);
                (traits_for(Tier::Scalar, act).unwrap().from_float.unwrap())(&x, &mut theirs);
                prop_assert!(ours == theirs, "{:?} {} quantized differently", tier, act);
            }
        }
    }

    #[test]
    fn dots_agree_with_the_reference_kernels(seed in any::<u64>(), n_blocks in 1usize..17, which in 0usize..11) {
        let (w, act) = DOT_TYPES[which];
        let mut rng = Rng::new(seed);
        let n = n_blocks * 256;
        let wq = random_blocks(w, n, &mut rng);
        let a = activations(n, &mut rng);
        let mut aq = vec![0u8; n / act.block_size() * act.block_bytes()];
        (traits_for(Tier::Scalar, act).unwrap().from_float.unwrap())(&a, &mut aq);
        let reference = (traits_for(Tier::Reference, w).unwrap().vec_dot.unwrap())(n, &wq, &aq);
        // The rounding of any summation order is bounded by n ulps of the sum of |products|;
        // Q8_1's `s` terms carry the weight minimum, so count them too.
        let (dw, da) = (dequantize(w, &wq, n), dequantize(act, &aq, n));
        let mut scale: f64 = dw.iter().zip(&da).map(|(x, y)| (f64::from(*x) * f64::from(*y)).abs()).sum();
        if act == DType::Q8_1 {
            for (xb, yb) in wq.chunks(w.block_bytes()).zip(aq.chunks(36)) {
                let h = |b: &[u8], at: usize| f64::from(half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32());
                scale += (h(xb, 2) * h(yb, 2)).abs();
            }
        }
        let scalar = (traits_for(Tier::Scalar, w).unwrap().vec_dot.unwrap())(n, &wq, &aq);
        for tier in simd_tiers() {
            let ours = (traits_for(tier, w).unwrap().vec_dot.unwrap())(n, &wq, &aq);
            // Quantized activations never hold -128, the one byte where NEON's plain multiply
            // and x86's sign trick part ways, so here every tier must equal its scalar twin.
            if tier != Tier::Avx2 || w != DType::F16 {
                prop_assert_eq!(ours.to_bits(), scalar.to_bits(), "{:?} {} n={} vs scalar", tier, w, n);
            }
            let err = (f64::from(ours) - f64::from(reference)).abs();
            prop_assert!(err <= 1e-7 * n as f64 * scale + 1e-30,
                "{:?} {} n={}: {} vs reference {} (scale {})", tier, w, n, ours, reference, scale);
        }
    }
}

#[test]
fn best_tier_is_available_and_forced_scalar_is_honoured() {
    assert!(Tier::best().is_available());
    assert!(Tier::Scalar.is_available() && Tier::Reference.is_available());
    // Tables of tiers this CPU cannot run are never built.
    for tier in Tier::ALL {
        assert_eq!(
            traits_for(tier, DType::Q4_0).is_some(),
            tier.is_available(),
            "{tier:?}"
        );
    }
    let expected = match std::env::var("ORCHARD_FORCE_SCALAR").ok().as_deref() {
        Some("ref") | Some("reference") => Tier::Reference,
        None | Some("") | Some("0") | Some("false") => Tier::best(),
        Some(_) => Tier::Scalar,
    };
    assert_eq!(orchard_quant::active_tier(), expected);
}
