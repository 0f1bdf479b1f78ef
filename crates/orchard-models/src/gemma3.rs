//! Gemma 3 (text): embeddings scaled by sqrt(n_embd), pre- and post-norms around attention and
//! FFN, per-head Q/K norms, GeGLU, interleaved sliding-window and global layers with their own
//! RoPE bases, Q scaled by `f_attention_scale`, optional final logit soft-capping.
//! After llama.cpp's `src/models/gemma3.cpp`. RMSNorm weights are used as stored: the GGUF
//! converter already folded Gemma's `1 + w` into them.

use crate::layers::{attention, ffn_glu, AttnConfig, AttnWeights, FfnWeights};
use crate::{Architecture, HParams, Loader, ModelError, Step, TensorRef};
use orchard_backend::{AttnParams, GluKind, RopeParams};

struct Layer {
    attn_norm: TensorRef,      // [n_embd]
    attn: AttnWeights,         // with q_norm/k_norm [head_dim]
    attn_post_norm: TensorRef, // [n_embd]
    ffn_norm: TensorRef,       // [n_embd]
    ffn: FfnWeights,
    ffn_post_norm: TensorRef, // [n_embd]
    cfg: AttnConfig,
}

struct Gemma3 {
    hp: HParams,
    layers: Vec<Layer>,
    final_softcap: Option<f32>,
}

/// llama.cpp's default pattern for Gemma 3: five sliding-window layers, then one global.
const SWA_PATTERN: usize = 6;
/// RoPE base of sliding-window layers when the GGUF does not give `rope.freq_base_swa`.
const DEFAULT_SWA_FREQ_BASE: f32 = 10000.0;

pub(crate) fn load(ld: &mut Loader<'_>) -> Result<Box<dyn Architecture>, ModelError> {
    let hp = ld.hp.clone();
    let md = ld.file.metadata();
    let window = md
        .get_u32("gemma3.attention.sliding_window")?
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    let pattern = md
        .get_u32("gemma3.attention.sliding_window_pattern")?
        .map_or(SWA_PATTERN, |p| p as usize);
    let swa_base = md
        .get_f32("gemma3.rope.freq_base_swa")?
        .unwrap_or(DEFAULT_SWA_FREQ_BASE);
    let final_softcap = md
        .get_f32("gemma3.final_logit_softcapping")?
        .filter(|&c| c > 0.0);
    // 27B scales by n_embd / n_head; every other size by the key length.
    let q_scale = if hp.n_layer == 62 {
        1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt()
    } else {
        1.0 / (hp.head_dim_k as f32).sqrt()
    };
    let mut layers = Vec::with_capacity(hp.n_layer);
    for il in 0..hp.n_layer {
        let e = hp.n_embd as u64;
        let is_swa = window.is_some() && (pattern == 0 || il % pattern < pattern - 1);
        let cfg = AttnConfig {
            params: AttnParams {
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim_k: hp.head_dim_k,
                head_dim_v: hp.head_dim_v,
                scale: 1.0,
                window: if is_swa { window } else { None },
                softcap: None,
            },
            rope: RopeParams {
                n_rot: hp.n_rot,
                head_dim: hp.head_dim_k,
                freq_base: if is_swa { swa_base } else { hp.rope_freq_base },
                freq_scale: if is_swa { 1.0 } else { hp.rope_freq_scale },
                neox: true,
            },
            rope_factors: None,
            norm_eps: hp.rms_eps,
            q_scale: Some(q_scale),
        };
        layers.push(Layer {
            attn_norm: ld.layer(il, "attn_norm.weight", &[e])?,
            attn: AttnWeights::load(ld, il, false, true)?,
            attn_post_norm: ld.layer(il, "post_attention_norm.weight", &[e])?,
            ffn_norm: ld.layer(il, "ffn_norm.weight", &[e])?,
            ffn: FfnWeights::load(ld, il)?,
            ffn_post_norm: ld.layer(il, "post_ffw_norm.weight", &[e])?,
            cfg,
        });
    }
    Ok(Box::new(Gemma3 {
        hp,
        layers,
        final_softcap,
    }))
}

impl Architecture for Gemma3 {
    fn layer(&self, s: &mut Step<'_>, il: usize) -> Result<(), ModelError> {
        let (l, hp) = (&self.layers[il], &self.hp);
        let cur = s.norm(s.x, l.attn_norm, hp.rms_eps, "attn_norm", hp.n_embd);
        s.tap("attn_norm.MUL", il, cur);
        let a = attention(s, il, cur, &l.attn, &l.cfg, hp.n_embd)?;
        let a = s.norm(a, l.attn_post_norm, hp.rms_eps, "attn_post", hp.n_embd);
        s.tap("attn_post_norm.MUL", il, a);
        s.b.add(s.x, a);
        s.keep_out_rows(hp.n_embd);
        s.tap("sa_out.ADD", il, s.x);
        let cur = s.norm(s.x, l.ffn_norm, hp.rms_eps, "ffn_norm", hp.n_embd);
        s.tap("ffn_norm.MUL", il, cur);
        let f = ffn_glu(s, il, cur, &l.ffn, GluKind::GeGlu, hp.n_ff, hp.n_embd);
        let f = s.norm(f, l.ffn_post_norm, hp.rms_eps, "ffn_post", hp.n_embd);
        s.tap("ffn_post_norm.MUL", il, f);
        s.b.add(s.x, f);
        s.tap("l_out.ADD", il, s.x);
        Ok(())
    }

    fn k_rope_pairs(&self, il: usize) -> orchard_backend::RopePairs {
        self.layers[il].cfg.rope.pairs()
    }

    fn kv_width(&self, _il: usize) -> (usize, usize) {
        (self.hp.n_embd_k_gqa(), self.hp.n_embd_v_gqa())
    }

    fn sliding_window(&self, il: usize) -> Option<usize> {
        self.layers[il].cfg.params.window
    }

    fn embed_scale(&self) -> Option<f32> {
        Some((self.hp.n_embd as f32).sqrt())
    }

    fn final_logit_softcap(&self) -> Option<f32> {
        self.final_softcap
    }
}
