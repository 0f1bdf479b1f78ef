//! Synthetic llama- and gemma3-architecture models: random weights of any shape and quant mix,
//! written as a GGUF that `Model::load`, the tokenizer and llama.cpp accept, so that 1B/8B/70B
//! shapes can be planned and benchmarked without downloading them (`orchard synth`).
//!
//! The vocabulary is a byte-level BPE one (the GPT-2 byte alphabet, one control token, and
//! merges that grow lowercase words letter by letter) of exactly `n_vocab` tokens. Weights are
//! uniform random with a fan-in scale, quantized by `orchard_quant`'s reference quantizers.
//! A sparse file (`SynthSpec::sparse`) stores no tensor data at all: the GGUF describes the
//! model but its tensors read as zeros, which is enough for memory planning.

use crate::ModelError;
use orchard_core::DType;
use orchard_gguf::{GgufWriter, Value};
use std::path::Path;

/// The architecture a synthetic file declares, which picks its metadata keys and tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthArch {
    Llama,
    /// Gemma 3 (text): per-head Q/K norms, post-attention and post-FFN norms, sliding-window
    /// layers (window 512, every sixth layer global) with their own RoPE base.
    Gemma3,
}

impl SynthArch {
    /// The `general.architecture` value and metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            SynthArch::Llama => "llama",
            SynthArch::Gemma3 => "gemma3",
        }
    }
}

/// Shape and quantization of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub arch: SynthArch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of Q, K and V when it is not `n_embd / n_head` (Gemma 3 270M: 4 heads of
    /// 256 at width 640); written as `attention.key_length` / `value_length`.
    pub head_dim: Option<usize>,
    pub n_vocab: usize,
    /// A llama.cpp file type name: `F32`, `F16`, `Q8_0`, `Q4_0`, `Q4_1`, `Q5_0`, `Q4_K_S`,
    /// `Q4_K_M`, `Q5_K_M`, `Q6_K`.
    pub ftype: String,
    pub seed: u64,
    /// Write tensor descriptions but no data (holes): for planning, not for running.
    pub sparse: bool,
    /// No `output.weight`: the head reuses `token_embd` (SmolLM2, Gemma), which then gets the
    /// output's type as llama-quantize does for tied embeddings.
    pub tie_embeddings: bool,
    /// Quantize at most this many distinct random rows per tensor and repeat them: for speed
    /// benchmarks of large shapes, where the values do not matter but quantizing billions of
    /// them with the reference quantizers takes minutes. `None`: every row is drawn.
    pub row_pool: Option<usize>,
}

impl SynthSpec {
    /// SmolLM2-135M's shape (30 layers of 576, 9 heads / 3 KV heads, 49152 tokens).
    pub fn smollm2_135m(ftype: &str) -> SynthSpec {
        SynthSpec {
            arch: SynthArch::Llama,
            n_layer: 30,
            n_embd: 576,
            n_ff: 1536,
            n_head: 9,
            n_head_kv: 3,
            head_dim: None,
            n_vocab: 49152,
            ftype: ftype.into(),
            seed: 1,
            sparse: false,
            tie_embeddings: true,
            row_pool: None,
        }
    }

    /// Llama 3 8B's shape with a 49152-token vocabulary (the benchmark shape of the GPU notes).
    pub fn llama_8b(ftype: &str) -> SynthSpec {
        SynthSpec {
            arch: SynthArch::Llama,
            n_layer: 32,
            n_embd: 4096,
            n_ff: 14336,
            n_head: 32,
            n_head_kv: 8,
            head_dim: None,
            n_vocab: 49152,
            ftype: ftype.into(),
            seed: 1,
            sparse: false,
            tie_embeddings: false,
            row_pool: None,
        }
    }

    /// Gemma 3 270M's shape: 18 layers of 640, 4 heads / 1 KV head of 256, a 2048-wide GeGLU,
    /// 262144 tokens, tied embeddings. In Q4_K_M the 640-wide rows fall back from K-quants as
    /// in the real file (Q4_K, Q5_0, Q6_K, Q8_0 and F32 norms).
    pub fn gemma3_270m(ftype: &str) -> SynthSpec {
        SynthSpec {
            arch: SynthArch::Gemma3,
            n_layer: 18,
            n_embd: 640,
            n_ff: 2048,
            n_head: 4,
            n_head_kv: 1,
            head_dim: Some(256),
            n_vocab: 262144,
            ftype: ftype.into(),
            seed: 1,
            sparse: false,
            tie_embeddings: true,
            row_pool: None,
        }
    }
}

/// Gemma 3's attention window on its sliding layers (llama.cpp makes every sixth layer global).
const GEMMA3_SLIDING_WINDOW: usize = 512;

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    pub n_params: u64,
    /// Bytes of tensor data (also for a sparse file, whose data is not on disk).
    pub tensor_bytes: u64,
    /// Tensors per type, sorted by type name.
    pub types: Vec<(DType, usize)>,
}

/// The tensor types of one file type, as llama.cpp's `llama_tensor_get_type` chooses them for
/// a dense llama model without an importance matrix.
struct Mix {
    base: DType,
    /// `output.weight`.
    output: DType,
    /// `token_embd.weight`.
    embd: DType,
    /// Per-layer override of attn_v / ffn_down when `use_more_bits` holds.
    more_bits: Option<DType>,
    /// attn_v on the other layers (Q4_K_S: the first four get Q5_K).
    q4ks: bool,
}

fn mix(ftype: &str) -> Option<Mix> {
    let m = |base, output, more_bits| Mix {
        base,
        output,
        embd: base,
        more_bits,
        q4ks: false,
    };
    Some(match ftype.to_ascii_uppercase().as_str() {
        "F32" => m(DType::F32, DType::F32, None),
        "F16" => m(DType::F16, DType::F16, None),
        "Q8_0" => m(DType::Q8_0, DType::Q8_0, None),
        "Q4_0" => m(DType::Q4_0, DType::Q6_K, None),
        "Q4_1" => m(DType::Q4_1, DType::Q6_K, None),
        "Q5_0" => m(DType::Q5_0, DType::Q6_K, None),
        "Q6_K" => m(DType::Q6_K, DType::Q6_K, None),
        "Q4_K_M" => m(DType::Q4_K, DType::Q6_K, Some(DType::Q6_K)),
        "Q5_K_M" => m(DType::Q5_K, DType::Q6_K, Some(DType::Q6_K)),
        "Q4_K_S" => Mix {
            q4ks: true,
            ..m(DType::Q4_K, DType::Q6_K, None)
        },
        _ => return None,
    })
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// in between get more bits on attn_v and ffn_down.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize).rem_euclid(3) == 2
}

/// llama.cpp's fallback when a row is not a whole number of 256-element K-quant blocks.
fn fit(dtype: DType, row_len: usize) -> DType {
    if row_len.is_multiple_of(dtype.block_size()) {
        return dtype;
    }
    let fallback = match dtype {
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        other => other,
    };
    if row_len.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        DType::F16
    }
}

/// The GPT-2 byte-to-unicode alphabet: printable bytes stand for themselves, the rest are
/// shifted past U+0100.
fn byte_symbols() -> Vec<String> {
    let mut out = vec![String::new(); 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let cp = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        out[b as usize] = char::from_u32(cp).expect("valid code point").to_string();
    }
    out
}

/// `n_vocab` tokens: 256 bytes, merges growing lowercase words (with and without the GPT-2
/// space marker `Ġ`), and one control token `<|endoftext|>` last. Returns (tokens, types,
/// merges).
fn vocabulary(n_vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens = byte_symbols();
    let mut merges = Vec::new();
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let letters: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let space = tokens[b' ' as usize].clone();
    let want = n_vocab - 1;
    // Words grow breadth-first: every existing word token followed by every letter.
    let mut frontier: Vec<String> = vec![space];
    frontier.extend(letters.iter().cloned());
    let mut i = 0;
    while tokens.len() < want && i < frontier.len() {
        let left = frontier[i].clone();
        i += 1;
        for l in &letters {
            if tokens.len() >= want {
                break;
            }
            let t = format!("{left}{l}");
            if seen.insert(t.clone()) {
                merges.push(format!("{left} {l}"));
                tokens.push(t.clone());
                frontier.push(t);
            }
        }
    }
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; tokens.len()];
    *types.last_mut().expect("non-empty") = 3;
    (tokens, types, merges)
}

/// A small xorshift generator: reproducible weights from the seed, no dependency.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Quantizes `rows` random rows of `cols` values in `[-scale, scale]`, split over threads;
/// with a `pool`, only that many distinct rows are drawn and then repeated.
fn random_tensor(
    dtype: DType,
    cols: usize,
    rows: usize,
    scale: f32,
    seed: u64,
    pool: Option<usize>,
) -> Vec<u8> {
    let row_bytes = dtype.row_bytes(cols as u64).expect("fitted type") as usize;
    if let Some(p) = pool.filter(|&p| p > 0 && p < rows) {
        let distinct = random_tensor(dtype, cols, p, scale, seed, None);
        let mut data = Vec::with_capacity(row_bytes * rows);
        while data.len() < row_bytes * rows {
            let take = (row_bytes * rows - data.len()).min(distinct.len());
            data.extend_from_slice(&distinct[..take]);
        }
        return data;
    }
    let mut data = vec![0u8; row_bytes * rows];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(64);
    let rows_per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (ci, chunk) in data.chunks_mut(rows_per * row_bytes).enumerate() {
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ ((ci as u64 + 1) << 32));
                let mut row = vec![0.0f32; cols];
                for out in chunk.chunks_mut(row_bytes) {
                    row.iter_mut().for_each(|v| *v = rng.next_f32() * scale);
                    orchard_quant::quantize_row(dtype, &row, out)
                        .expect("row length fits the type");
                }
            });
        }
    });
    data
}

fn bad(key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadHParam {
        key: format!("synth.{key}"),
        reason: reason.into(),
    }
}

/// Writes a GGUF of `spec.arch` with random weights to `path`; the name predates the `arch`
/// field and is kept for existing callers.
pub fn write_synthetic_llama(path: &Path, spec: &SynthSpec) -> Result<SynthSummary, ModelError> {
    let mx = mix(&spec.ftype)
        .ok_or_else(|| bad("ftype", format!("unknown file type {}", spec.ftype)))?;
    if spec.n_layer == 0 || spec.n_embd == 0 || spec.n_ff == 0 || spec.n_head == 0 {
        return Err(bad("shape", "layers, widths and heads must be non-zero"));
    }
    if spec.n_head_kv == 0
        || !spec.n_head.is_multiple_of(spec.n_head_kv)
        || (spec.head_dim.is_none() && !spec.n_embd.is_multiple_of(spec.n_head))
    {
        return Err(bad(
            "n_head_kv",
            "head_count_kv must divide head_count, which must divide n_embd",
        ));
    }
    let head_dim = spec.head_dim.unwrap_or(spec.n_embd / spec.n_head);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(bad("n_head", "the head size must be even for RoPE"));
    }
    if spec.n_vocab < 258 {
        return Err(bad(
            "n_vocab",
            "at least 258 tokens (256 bytes, a merge, EOS)",
        ));
    }
    let (tokens, types, merges) = vocabulary(spec.n_vocab);
    let mut w = GgufWriter::new();
    let a = spec.arch.name();
    let md = |w: &mut GgufWriter, k: &str, v: Value| w.add_metadata(k.to_string(), v);
    md(&mut w, "general.architecture", Value::String(a.into()));
    md(
        &mut w,
        "general.name",
        Value::String(format!("synthetic-{a}-{}L-{}", spec.n_layer, spec.n_embd)),
    );
    md(
        &mut w,
        "general.file_type",
        Value::U32(ftype_id(&spec.ftype)),
    );
    let u = |v: usize| Value::U32(v as u32);
    let ak = |k: &str| format!("{a}.{k}");
    let gemma = spec.arch == SynthArch::Gemma3;
    // Gemma 3's sliding layers (all but every sixth, the pattern both llama.cpp and Orchard
    // assume) use RoPE base 10000; that is their default too, written so the file says it.
    let (n_ctx, rope_base, rms_eps) = if gemma {
        (32768, 1e6, 1e-6)
    } else {
        (8192, 500000.0, 1e-5)
    };
    md(&mut w, &ak("block_count"), u(spec.n_layer));
    md(&mut w, &ak("context_length"), u(n_ctx));
    md(&mut w, &ak("embedding_length"), u(spec.n_embd));
    md(&mut w, &ak("feed_forward_length"), u(spec.n_ff));
    md(&mut w, &ak("attention.head_count"), u(spec.n_head));
    md(&mut w, &ak("attention.head_count_kv"), u(spec.n_head_kv));
    if spec.head_dim.is_some() {
        md(&mut w, &ak("attention.key_length"), u(head_dim));
        md(&mut w, &ak("attention.value_length"), u(head_dim));
    }
    md(&mut w, &ak("rope.dimension_count"), u(head_dim));
    md(&mut w, &ak("rope.freq_base"), Value::F32(rope_base));
    if gemma {
        md(&mut w, &ak("rope.freq_base_swa"), Value::F32(10000.0));
        md(
            &mut w,
            &ak("attention.sliding_window"),
            u(GEMMA3_SLIDING_WINDOW),
        );
    }
    md(
        &mut w,
        &ak("attention.layer_norm_rms_epsilon"),
        Value::F32(rms_eps),
    );
    md(&mut w, &ak("vocab_size"), u(spec.n_vocab));
    md(&mut w, "tokenizer.ggml.model", Value::String("gpt2".into()));
    md(&mut w, "tokenizer.ggml.pre", Value::String("gpt-2".into()));
    md(
        &mut w,
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    md(
        &mut w,
        "tokenizer.ggml.token_type",
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    md(
        &mut w,
        "tokenizer.ggml.merges",
        Value::Array(merges.into_iter().map(Value::String).collect()),
    );
    let eos = spec.n_vocab - 1;
    md(&mut w, "tokenizer.ggml.bos_token_id", u(eos));
    md(&mut w, "tokenizer.ggml.eos_token_id", u(eos));
    md(&mut w, "tokenizer.ggml.add_bos_token", Value::Bool(false));

    let (e, f, v) = (spec.n_embd, spec.n_ff, spec.n_vocab);
    let kv = spec.n_head_kv * head_dim;
    // Width of Q and of attn_output's input: n_embd unless the head size is set apart.
    let q = spec.n_head * head_dim;
    let mut summary = SynthSummary {
        n_params: 0,
        tensor_bytes: 0,
        types: Vec::new(),
    };
    let mut counts: std::collections::BTreeMap<String, (DType, usize)> = Default::default();
    let mut seed = spec.seed;
    let mut add = |w: &mut GgufWriter,
                   name: String,
                   dtype: DType,
                   cols: usize,
                   rows: usize|
     -> Result<(), ModelError> {
        let dtype = if rows == 1 {
            DType::F32
        } else {
            fit(dtype, cols)
        };
        let dims = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        summary.n_params += (cols * rows) as u64;
        summary.tensor_bytes += dtype.row_bytes(cols as u64).unwrap_or(0) * rows as u64;
        counts.entry(dtype.to_string()).or_insert((dtype, 0)).1 += 1;
        seed = seed.wrapping_add(1);
        if spec.sparse {
            w.add_tensor_hole(name, dims, dtype)?;
        } else if rows == 1 {
            let ones: Vec<u8> = std::iter::repeat_n(1.0f32.to_le_bytes(), cols)
                .flatten()
                .collect();
            w.add_tensor(name, dims, dtype, ones)?;
        } else {
            let scale = 1.0 / (cols as f32).sqrt();
            w.add_tensor(
                name,
                dims,
                dtype,
                random_tensor(dtype, cols, rows, scale, seed, spec.row_pool),
            )?;
        }
        Ok(())
    };
    let embd_type = if spec.tie_embeddings {
        mx.output
    } else {
        mx.embd
    };
    add(&mut w, "token_embd.weight".into(), embd_type, e, v)?;
    for il in 0..spec.n_layer {
        let more = mx.more_bits.filter(|_| use_more_bits(il, spec.n_layer));
        let attn_v = if mx.q4ks && il < 4 {
            DType::Q5_K
        } else {
            more.unwrap_or(mx.base)
        };
        let b = |s: &str| format!("blk.{il}.{s}");
        add(&mut w, b("attn_norm.weight"), DType::F32, e, 1)?;
        add(&mut w, b("attn_q.weight"), mx.base, e, q)?;
        add(&mut w, b("attn_k.weight"), mx.base, e, kv)?;
        add(&mut w, b("attn_v.weight"), attn_v, e, kv)?;
        add(&mut w, b("attn_output.weight"), mx.base, q, e)?;
        if gemma {
            add(&mut w, b("attn_q_norm.weight"), DType::F32, head_dim, 1)?;
            add(&mut w, b("attn_k_norm.weight"), DType::F32, head_dim, 1)?;
            add(&mut w, b("post_attention_norm.weight"), DType::F32, e, 1)?;
        }
        add(&mut w, b("ffn_norm.weight"), DType::F32, e, 1)?;
        add(&mut w, b("ffn_gate.weight"), mx.base, e, f)?;
        add(&mut w, b("ffn_up.weight"), mx.base, e, f)?;
        add(&mut w, b("ffn_down.weight"), more.unwrap_or(mx.base), f, e)?;
        if gemma {
            add(&mut w, b("post_ffw_norm.weight"), DType::F32, e, 1)?;
        }
    }
    add(&mut w, "output_norm.weight".into(), DType::F32, e, 1)?;
    if !spec.tie_embeddings {
        add(&mut w, "output.weight".into(), mx.output, e, v)?;
    }
    w.write_to_path(path)?;
    summary.types = counts.into_values().collect();
    Ok(summary)
}

/// llama.cpp's `llama_ftype` number of a file type name (`general.file_type`).
fn ftype_id(ftype: &str) -> u32 {
    match ftype.to_ascii_uppercase().as_str() {
        "F32" => 0,
        "F16" => 1,
        "Q4_0" => 2,
        "Q4_1" => 3,
        "Q8_0" => 7,
        "Q5_0" => 8,
        "Q4_K_S" => 14,
        "Q4_K_M" => 15,
        "Q5_K_M" => 17,
        "Q6_K" => 18,
        _ => 0,
    }
}
