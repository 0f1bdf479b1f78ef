//! One step of the forward pass as seen by an architecture's layer code, and the layer builders
//! the architectures share (`attn_norm`, `qkv`, `attention`, `ffn_glu`).

use crate::{ModelError, TensorRef};
use orchard_backend::{
    AttnBatch, AttnParams, Backend, BufId, GluKind, RopeParams, TokenSlot, WeightId,
};
use std::collections::HashMap;

/// Named scratch buffers of one backend, reused across steps.
#[derive(Default)]
pub(crate) struct Scratch {
    bufs: HashMap<&'static str, (BufId, usize)>,
}

/// What a layer's code can touch during one step: the backend running it, the weights uploaded
/// there, scratch buffers, the token positions and the residual stream `x` (`[n_tokens, n_embd]`).
pub struct Step<'a> {
    pub b: &'a mut dyn Backend,
    pub(crate) weights: &'a [Option<WeightId>],
    pub(crate) scratch: &'a mut Scratch,
    pub n_tokens: usize,
    pub tokens: &'a [TokenSlot],
    pub attn: AttnBatch<'a>,
    /// The residual stream, updated in place by each layer.
    pub x: BufId,
    /// Set for the last layer when only some rows are wanted (the tokens that need logits):
    /// [`Step::keep_out_rows`] then narrows the stream to them after attention.
    pub out_rows: Option<&'a [u32]>,
}

/// Where `Step::tap` writes intermediate tensors (`ORCHARD_DUMP_DIR`), read once.
fn dump_dir() -> Option<&'static std::path::Path> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("ORCHARD_DUMP_DIR").map(Into::into))
        .as_deref()
}

impl Step<'_> {
    /// Debugging aid: with `ORCHARD_DUMP_DIR` set, writes `buf` as raw f32 to
    /// `<dir>/<name>-<layer>.bin`, named like llama.cpp's graph tensors so the two engines'
    /// intermediate values can be compared op by op. Costs one branch otherwise.
    pub fn tap(&mut self, name: &str, il: usize, buf: BufId) {
        let Some(dir) = dump_dir() else { return };
        let mut host = Vec::new();
        self.b.download(buf, &mut host);
        let bytes: Vec<u8> = host.iter().flat_map(|v| v.to_le_bytes()).collect();
        if let Err(e) = std::fs::write(dir.join(format!("{name}-{il}.bin")), bytes) {
            tracing::warn!("ORCHARD_DUMP_DIR: {e}");
        }
    }

    /// The backend's handle for a model tensor. Panics only on a context bug (a layer running on
    /// a backend its weights were not uploaded to).
    pub fn w(&self, t: TensorRef) -> WeightId {
        self.weights[t.0 as usize].expect("weight uploaded to the backend that runs its layer")
    }

    /// A scratch buffer named `name` of `[n_tokens, width]`.
    pub fn buf(&mut self, name: &'static str, width: usize) -> BufId {
        let n = self.n_tokens;
        match self.scratch.bufs.get(name) {
            Some(&(id, w)) if w == width => {
                self.b.set_rows(id, n);
                id
            }
            _ => {
                let id = self.b.alloc(n, width);
                self.scratch.bufs.insert(name, (id, width));
                id
            }
        }
    }

    /// After the last layer's attention (whose K/V every row fed): keeps only the rows in
    /// `out_rows`, so the rest of the layer (the feed-forward block, its norms and adds) runs
    /// on those alone, as llama.cpp's graphs do (`inp_out_ids`). The kept rows are tokens of
    /// their own sequences again, for the matmuls whose order depends on the row count. A
    /// no-op where `out_rows` is unset; afterwards it is, and `x` holds the kept rows in order.
    pub fn keep_out_rows(&mut self, n_embd: usize) {
        let Some(rows) = self.out_rows.take() else {
            return;
        };
        let seqs: Vec<u32> = rows.iter().map(|&r| self.tokens[r as usize].seq).collect();
        self.n_tokens = rows.len();
        let kept = self.buf("out_rows", n_embd);
        self.b.copy_rows(self.x, rows, kept);
        self.b.set_row_sequences(&seqs);
        self.x = kept;
    }

    /// `out = rms_norm(x) * w` into a scratch buffer.
    pub fn norm(
        &mut self,
        x: BufId,
        w: TensorRef,
        eps: f32,
        name: &'static str,
        width: usize,
    ) -> BufId {
        let out = self.buf(name, width);
        let w = self.w(w);
        self.b.rms_norm(x, Some(w), eps, out);
        out
    }

    /// `out = W x (+ bias)` into a scratch buffer of width `rows`.
    pub fn linear(
        &mut self,
        w: TensorRef,
        bias: Option<TensorRef>,
        x: BufId,
        name: &'static str,
        rows: usize,
    ) -> BufId {
        let out = self.buf(name, rows);
        let wid = self.w(w);
        self.b.matmul(wid, x, out);
        if let Some(bias) = bias {
            let bid = self.w(bias);
            self.b.add_bias(out, bid);
        }
        out
    }
}

/// Tensors of a standard attention block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnWeights {
    pub wq: TensorRef,
    pub wk: TensorRef,
    pub wv: TensorRef,
    pub wo: TensorRef,
    pub bq: Option<TensorRef>,
    pub bk: Option<TensorRef>,
    pub bv: Option<TensorRef>,
    /// Per-head RMS norms of Q and K applied before RoPE (Qwen 3, Gemma 3).
    pub q_norm: Option<TensorRef>,
    pub k_norm: Option<TensorRef>,
}

impl AttnWeights {
    /// Loads `attn_{q,k,v,output}` (+ optional biases and Q/K norms) of layer `il`.
    pub fn load(
        ld: &mut crate::Loader<'_>,
        il: usize,
        biases: bool,
        qk_norm: bool,
    ) -> Result<AttnWeights, ModelError> {
        let hp = ld.hp.clone();
        let (e, q, k, v) = (
            hp.n_embd as u64,
            hp.n_embd_q() as u64,
            hp.n_embd_k_gqa() as u64,
            hp.n_embd_v_gqa() as u64,
        );
        let o_in = (hp.n_head * hp.head_dim_v) as u64;
        let hk = hp.head_dim_k as u64;
        Ok(AttnWeights {
            wq: ld.layer(il, "attn_q.weight", &[e, q])?,
            wk: ld.layer(il, "attn_k.weight", &[e, k])?,
            wv: ld.layer(il, "attn_v.weight", &[e, v])?,
            wo: ld.layer(il, "attn_output.weight", &[o_in, e])?,
            bq: if biases {
                ld.layer_optional(il, "attn_q.bias", &[q])?
            } else {
                None
            },
            bk: if biases {
                ld.layer_optional(il, "attn_k.bias", &[k])?
            } else {
                None
            },
            bv: if biases {
                ld.layer_optional(il, "attn_v.bias", &[v])?
            } else {
                None
            },
            q_norm: if qk_norm {
                Some(ld.layer(il, "attn_q_norm.weight", &[hk])?)
            } else {
                None
            },
            k_norm: if qk_norm {
                Some(ld.layer(il, "attn_k_norm.weight", &[hk])?)
            } else {
                None
            },
        })
    }
}

/// Shape and position parameters of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnConfig {
    pub params: AttnParams,
    pub rope: RopeParams,
    pub rope_factors: Option<TensorRef>,
    pub norm_eps: f32,
    /// Multiplier applied to Q after RoPE (Gemma 3 scales Q instead of the scores).
    pub q_scale: Option<f32>,
}

impl AttnConfig {
    /// Full attention scaled by 1/sqrt(head_dim), RoPE from the hyper-parameters: the llama
    /// family's configuration (`neox` picks the rotation order).
    pub fn standard(
        hp: &crate::HParams,
        neox: bool,
        rope_factors: Option<TensorRef>,
    ) -> AttnConfig {
        AttnConfig {
            params: AttnParams {
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim_k: hp.head_dim_k,
                head_dim_v: hp.head_dim_v,
                scale: 1.0 / (hp.head_dim_k as f32).sqrt(),
                window: None,
                softcap: None,
            },
            rope: RopeParams {
                n_rot: hp.n_rot,
                head_dim: hp.head_dim_k,
                freq_base: hp.rope_freq_base,
                freq_scale: hp.rope_freq_scale,
                neox,
            },
            rope_factors,
            norm_eps: hp.rms_eps,
            q_scale: None,
        }
    }
}

/// The llama family's pre-norm block: `x += attn(norm(x)); x += ffn_swiglu(norm(x))`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreNormBlock {
    pub attn_norm: TensorRef, // [n_embd]
    pub attn: AttnWeights,
    pub ffn_norm: TensorRef, // [n_embd]
    pub ffn: FfnWeights,     // gate/up [n_embd, n_ff], down [n_ff, n_embd]
}

impl PreNormBlock {
    /// Loads layer `il`; `biases` reads optional Q/K/V biases, `qk_norm` the per-head Q/K norms.
    pub fn load(
        ld: &mut crate::Loader<'_>,
        il: usize,
        biases: bool,
        qk_norm: bool,
    ) -> Result<PreNormBlock, ModelError> {
        let e = ld.hp.n_embd as u64;
        Ok(PreNormBlock {
            attn_norm: ld.layer(il, "attn_norm.weight", &[e])?,
            attn: AttnWeights::load(ld, il, biases, qk_norm)?,
            ffn_norm: ld.layer(il, "ffn_norm.weight", &[e])?,
            ffn: FfnWeights::load(ld, il)?,
        })
    }

    pub fn forward(
        &self,
        s: &mut Step<'_>,
        il: usize,
        cfg: &AttnConfig,
        hp: &crate::HParams,
    ) -> Result<(), ModelError> {
        let cur = s.norm(s.x, self.attn_norm, hp.rms_eps, "attn_norm", hp.n_embd);
        s.tap("attn_norm.MUL", il, cur);
        let a = attention(s, il, cur, &self.attn, cfg, hp.n_embd)?;
        s.b.add(s.x, a);
        s.keep_out_rows(hp.n_embd);
        s.tap("ffn_inp.ADD", il, s.x);
        let cur = s.norm(s.x, self.ffn_norm, hp.rms_eps, "ffn_norm", hp.n_embd);
        s.tap("ffn_norm.MUL", il, cur);
        let f = ffn_glu(s, il, cur, &self.ffn, GluKind::SwiGlu, hp.n_ff, hp.n_embd);
        s.b.add(s.x, f);
        s.tap("l_out.ADD", il, s.x);
        Ok(())
    }
}

/// Q/K/V projections, Q/K norms, RoPE, attention over the cache and the output projection.
/// Returns the `[n_tokens, n_embd]` output (not yet added to the residual).
pub(crate) fn attention(
    s: &mut Step<'_>,
    il: usize,
    x: BufId,
    w: &AttnWeights,
    c: &AttnConfig,
    n_embd: usize,
) -> Result<BufId, ModelError> {
    let p = &c.params;
    let q = s.linear(w.wq, w.bq, x, "q", p.n_head * p.head_dim_k);
    let k = s.linear(w.wk, w.bk, x, "k", p.n_head_kv * p.head_dim_k);
    let v = s.linear(w.wv, w.bv, x, "v", p.n_head_kv * p.head_dim_v);
    s.tap("Qcur.MUL_MAT", il, q);
    s.tap("Kcur.MUL_MAT", il, k);
    s.tap("Vcur.MUL_MAT", il, v);
    if let (Some(qn), Some(kn)) = (w.q_norm, w.k_norm) {
        let (qn, kn) = (s.w(qn), s.w(kn));
        s.b.head_rms_norm(q, qn, p.head_dim_k, c.norm_eps);
        s.b.head_rms_norm(k, kn, p.head_dim_k, c.norm_eps);
    }
    let ff = c.rope_factors.map(|f| s.w(f));
    s.b.rope(q, s.tokens, &c.rope, ff);
    s.b.rope(k, s.tokens, &c.rope, ff);
    s.tap("Qcur.ROPE", il, q);
    s.tap("Kcur.ROPE", il, k);
    if let Some(qs) = c.q_scale {
        s.b.scale(q, qs);
    }
    let out = s.buf("attn", p.n_head * p.head_dim_v);
    let attn = s.attn;
    s.b.attention(il, q, k, v, &attn, p, out)?;
    s.tap("kqv_out.RESHAPE", il, out);
    let o = s.linear(w.wo, None, out, "attn_out", n_embd);
    s.tap("attn_out.MUL_MAT", il, o);
    Ok(o)
}

/// Tensors of a gated feed-forward block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FfnWeights {
    pub gate: TensorRef,
    pub up: TensorRef,
    pub down: TensorRef,
}

impl FfnWeights {
    pub fn load(ld: &mut crate::Loader<'_>, il: usize) -> Result<FfnWeights, ModelError> {
        let (e, f) = (ld.hp.n_embd as u64, ld.hp.n_ff as u64);
        Ok(FfnWeights {
            gate: ld.layer(il, "ffn_gate.weight", &[e, f])?,
            up: ld.layer(il, "ffn_up.weight", &[e, f])?,
            down: ld.layer(il, "ffn_down.weight", &[f, e])?,
        })
    }
}

/// `down(act(gate(x)) * up(x))`, returns `[n_tokens, n_embd]`.
pub(crate) fn ffn_glu(
    s: &mut Step<'_>,
    il: usize,
    x: BufId,
    w: &FfnWeights,
    kind: GluKind,
    n_ff: usize,
    n_embd: usize,
) -> BufId {
    let g = s.linear(w.gate, None, x, "ffn_gate", n_ff);
    let u = s.linear(w.up, None, x, "ffn_up", n_ff);
    s.tap("ffn_gate.MUL_MAT", il, g);
    s.tap("ffn_up.MUL_MAT", il, u);
    let h = s.buf("ffn_act", n_ff);
    s.b.glu(g, u, kind, h);
    s.tap("ffn_glu", il, h);
    let o = s.linear(w.down, None, h, "ffn_out", n_embd);
    s.tap("ffn_out.MUL_MAT", il, o);
    o
}
