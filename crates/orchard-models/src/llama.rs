//! Llama (1/2/3), SmolLM, Mistral-style models: pre-norm attention with normal-order RoPE,
//! optional Llama 3 per-frequency RoPE factors (`rope_freqs.weight`), SwiGLU FFN, optional
//! Q/K/V biases. After llama.cpp's `src/models/llama.cpp`.

use crate::layers::{AttnConfig, PreNormBlock};
use crate::{Architecture, HParams, Loader, ModelError, Step};

struct Llama {
    hp: HParams,
    layers: Vec<PreNormBlock>,
    cfg: AttnConfig,
}

pub(crate) fn load(ld: &mut Loader<'_>) -> Result<Box<dyn Architecture>, ModelError> {
    let hp = ld.hp.clone();
    let rope_factors = ld.optional("rope_freqs.weight", &[hp.n_rot as u64 / 2])?;
    let layers = (0..hp.n_layer)
        .map(|il| PreNormBlock::load(ld, il, true, false))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = AttnConfig::standard(&hp, false, rope_factors);
    Ok(Box::new(Llama { hp, layers, cfg }))
}

impl Architecture for Llama {
    fn layer(&self, s: &mut Step<'_>, il: usize) -> Result<(), ModelError> {
        self.layers[il].forward(s, il, &self.cfg, &self.hp)
    }

    fn k_rope_pairs(&self, _il: usize) -> orchard_backend::RopePairs {
        self.cfg.rope.pairs()
    }

    fn kv_width(&self, _il: usize) -> (usize, usize) {
        (self.hp.n_embd_k_gqa(), self.hp.n_embd_v_gqa())
    }
}
