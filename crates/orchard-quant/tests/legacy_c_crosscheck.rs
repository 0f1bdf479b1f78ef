//! Bit-for-bit cross-check of the legacy-format kernels against ggml's own C code: reference
//! quantizers (`quantize_row_*_ref`, fp16/bf16 conversions), dequantizers and the `*_generic`
//! dots, compiled from a llama.cpp source tree by `scripts/legacy_c_crosscheck.sh`. Ignored by
//! default: it needs that tree and a C compiler, which CI does not have. The numpy comparisons
//! cover dequantization and most quantizers in CI; this also covers Q8_1 and the dots, for
//! which gguf-py has no code.

mod common;
#[path = "common/legacy_data.rs"]
mod legacy_data;

use common::{assert_bits_equal, read_f32, write_f32, Rng, ScratchDir};
use legacy_data::{edge_blocks, generate_data, varied_blocks};
use orchard_core::DType;
use orchard_quant::{dequantize_row, quantize_row, traits_for, Tier};
use std::process::Command;

const N_BLOCKS: usize = 1024;

fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; x.len() / dtype.block_size() * dtype.block_bytes()];
    quantize_row(dtype, x, &mut q).unwrap();
    q
}

fn assert_same_blocks(label: &str, dtype: DType, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{label}: length");
    let bb = dtype.block_bytes();
    if let Some(k) = ours
        .chunks(bb)
        .zip(theirs.chunks(bb))
        .position(|(a, b)| a != b)
    {
        panic!(
            "{label}: block {k} differs: ours {:02x?} C {:02x?}",
            &ours[k * bb..(k + 1) * bb],
            &theirs[k * bb..(k + 1) * bb]
        );
    }
}

#[test]
#[ignore = "needs a llama.cpp tree and a C compiler: run scripts/legacy_c_crosscheck.sh"]
fn quantizers_dequantizers_and_dots_match_ggml_c_bit_for_bit() {
    let harness = std::env::var("LEGACY_C_HARNESS")
        .expect("LEGACY_C_HARNESS must name the built legacy_c_ref binary");
    let mut rng = Rng::new(0xC0FFEE);
    let mut w = edge_blocks();
    w.extend(generate_data(0.0, 32 * 128));
    w.extend(varied_blocks(&mut rng, N_BLOCKS - w.len() / 32));
    let mut a = varied_blocks(&mut rng, N_BLOCKS - 8);
    a.extend(edge_blocks().into_iter().take(8 * 32));
    assert_eq!((w.len(), a.len()), (N_BLOCKS * 32, N_BLOCKS * 32));

    let dir = ScratchDir::new("legacy-c");
    write_f32(&dir.join("w.f32"), &w);
    write_f32(&dir.join("a.f32"), &a);
    let out = Command::new(&harness)
        .arg(dir.path())
        .output()
        .expect("run harness");
    assert!(
        out.status.success(),
        "harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for act_type in [DType::Q8_0, DType::Q8_1] {
        let theirs = std::fs::read(dir.join(&format!("c_act_{}.q", act_type.name()))).unwrap();
        assert_same_blocks("activations", act_type, &quantize(act_type, &a), &theirs);
    }

    let all = [
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
    ];
    for dtype in all {
        let ours = quantize(dtype, &w);
        let theirs = std::fs::read(dir.join(&format!("c_{}.q", dtype.name()))).unwrap();
        assert_same_blocks("weights", dtype, &ours, &theirs);
        let c_deq = dir.join(&format!("c_{}.f32", dtype.name()));
        if c_deq.exists() {
            let mut y = vec![0f32; w.len()];
            dequantize_row(dtype, &ours, &mut y).unwrap();
            assert_bits_equal(&format!("dequantized {dtype}"), &y, &read_f32(&c_deq));
        }
    }

    let dots = std::fs::read_to_string(dir.join("c_dots.txt")).unwrap();
    let mut n_dots = 0;
    for line in dots.lines() {
        let mut it = line.split(' ');
        let (name, n, bits) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let dtype = DType::from_name(name).unwrap();
        let n: usize = n.parse().unwrap();
        let bits = u32::from_str_radix(bits, 16).unwrap();
        let act_type = orchard_quant::traits(dtype).unwrap().vec_dot_type;
        let wq = quantize(dtype, &w[..n]);
        let aq = quantize(act_type, &a[..n]);
        // The generic C kernels are what the reference tier mirrors.
        let dot = traits_for(Tier::Reference, dtype).unwrap().vec_dot.unwrap();
        let ours = dot(n, &wq, &aq);
        assert_eq!(
            ours.to_bits(),
            bits,
            "{dtype} dot n={n}: ours {ours:e} C {:e}",
            f32::from_bits(bits)
        );
        n_dots += 1;
    }
    assert_eq!(n_dots, 5 * N_BLOCKS, "dots checked");
    eprintln!("{n_dots} dots, 8 quantizers, 5 dequantizers bit-identical to ggml's C");
}
