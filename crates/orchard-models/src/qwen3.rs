//! Qwen 3 (dense): the llama block without biases, per-head RMS norms on Q and K before RoPE,
//! NeoX-order RoPE. After llama.cpp's `src/models/qwen3.cpp`.

use crate::layers::{attention, ffn_glu, AttnConfig, AttnWeights, FfnWeights};
use crate::{Architecture, HParams, Loader, ModelError, Step, TensorRef};
use orchard_backend::{AttnParams, GluKind, RopeParams};

struct Layer {
    attn_norm: TensorRef, // [n_embd]
    attn: AttnWeights,    // with q_norm/k_norm [head_dim]
    ffn_norm: TensorRef,  // [n_embd]
    ffn: FfnWeights,
}

struct Qwen3 {
    hp: HParams,
    layers: Vec<Layer>,
    cfg: AttnConfig,
}

pub(crate) fn load(ld: &mut Loader<'_>) -> Result<Box<dyn Architecture>, ModelError> {
    let hp = ld.hp.clone();
    let mut layers = Vec::with_capacity(hp.n_layer);
    for il in 0..hp.n_layer {
        let e = hp.n_embd as u64;
        layers.push(Layer {
            attn_norm: ld.layer(il, "attn_norm.weight", &[e])?,
            attn: AttnWeights::load(ld, il, false, true)?,
            ffn_norm: ld.layer(il, "ffn_norm.weight", &[e])?,
            ffn: FfnWeights::load(ld, il)?,
        });
    }
    let cfg = AttnConfig {
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
            neox: true,
        },
        rope_factors: None,
        norm_eps: hp.rms_eps,
        q_scale: None,
    };
    Ok(Box::new(Qwen3 { hp, layers, cfg }))
}

impl Architecture for Qwen3 {
    fn layer(&self, s: &mut Step<'_>, il: usize) -> Result<(), ModelError> {
        let (l, hp) = (&self.layers[il], &self.hp);
        let cur = s.norm(s.x, l.attn_norm, hp.rms_eps, "attn_norm", hp.n_embd);
        s.tap("attn_norm.MUL", il, cur);
        let a = attention(s, il, cur, &l.attn, &self.cfg, hp.n_embd)?;
        s.b.add(s.x, a);
        s.tap("ffn_inp.ADD", il, s.x);
        let cur = s.norm(s.x, l.ffn_norm, hp.rms_eps, "ffn_norm", hp.n_embd);
        s.tap("ffn_norm.MUL", il, cur);
        let f = ffn_glu(s, il, cur, &l.ffn, GluKind::SwiGlu, hp.n_ff, hp.n_embd);
        s.b.add(s.x, f);
        s.tap("l_out.ADD", il, s.x);
        Ok(())
    }

    fn kv_width(&self, _il: usize) -> (usize, usize) {
        (self.hp.n_embd_k_gqa(), self.hp.n_embd_v_gqa())
    }
}
