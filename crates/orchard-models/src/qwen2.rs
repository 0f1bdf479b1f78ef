//! Qwen 2 / 2.5: the llama block with Q/K/V biases and NeoX-order RoPE.
//! After llama.cpp's `src/models/qwen2.cpp`.

use crate::layers::{AttnConfig, PreNormBlock};
use crate::{Architecture, HParams, Loader, ModelError, Step};

struct Qwen2 {
    hp: HParams,
    layers: Vec<PreNormBlock>,
    cfg: AttnConfig,
}

pub(crate) fn load(ld: &mut Loader<'_>) -> Result<Box<dyn Architecture>, ModelError> {
    let hp = ld.hp.clone();
    let layers = (0..hp.n_layer)
        .map(|il| PreNormBlock::load(ld, il, true, false))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = AttnConfig::standard(&hp, true, None);
    Ok(Box::new(Qwen2 { hp, layers, cfg }))
}

impl Architecture for Qwen2 {
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
