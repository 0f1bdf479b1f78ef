//! A seeded chain of samplers over a candidate list, after llama.cpp's sampler chain
//!
//! The chain is llama.cpp's default (common/sampling.cpp): logit bias -> penalties -> top-k ->
//! typical-p -> top-p -> min-p -> temperature -> dist. DRY, top-n-sigma and XTC are disabled in
//! llama.cpp's defaults and are not implemented here. A temperature <= 0 means greedy: the best token
//! that survives the earlier stages.
//!
//! The random stream is llama.cpp's (`std::mt19937` and libstdc++'s conversion to double, one draw
//! per sampled token), so with the same seed and the same logits a [`Sampler`] picks the tokens
//! llama.cpp picks, and a seeded one is reproducible run to run.

mod rng;
mod stages;

use std::collections::{HashMap, VecDeque};

use orchard_core::TokenId;

pub use stages::Candidate;
use stages::Cands;

/// llama.cpp's `LLAMA_DEFAULT_SEED`: a seed with this value means "pick a fresh random seed".
pub const DEFAULT_SEED: u64 = 0xFFFF_FFFF;

/// Sampling parameters, named and defaulted as llama.cpp's `common_params_sampling`.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// <= 0 samples greedily.
    pub temperature: f32,
    /// <= 0 disables top-k (the whole vocabulary stays).
    pub top_k: i32,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables; relative to the best token's probability.
    pub min_p: f32,
    /// 1.0 disables.
    pub typical_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// How many of the most recently accepted tokens the penalties look at: 0 disables the
    /// penalties, -1 means every token accepted since the last reset.
    pub repeat_last_n: i32,
    /// 0.0 disables.
    pub frequency_penalty: f32,
    /// 0.0 disables.
    pub presence_penalty: f32,
    /// [`DEFAULT_SEED`] picks a random seed; anything else makes the stream reproducible.
    pub seed: u64,
    /// Added to the raw logits before everything else; `f32::NEG_INFINITY` bans a token. Entries for
    /// ids outside the logit row are ignored; repeated ids add up.
    pub logit_bias: Vec<(TokenId, f32)>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: DEFAULT_SEED,
            logit_bias: Vec::new(),
        }
    }
}

/// Why a [`SamplerConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    #[error("sampling parameter `{name}` must be a finite number, got {value}")]
    NotFinite { name: &'static str, value: f32 },
    #[error("sampling parameter `{name}` is {value}, but it must be {expected}")]
    OutOfRange {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("logit bias {bias} for token {token} is invalid: it must be finite, or -inf to ban the token")]
    InvalidLogitBias { token: TokenId, bias: f32 },
}

impl SamplerConfig {
    /// Checks every field; the first problem found is reported.
    pub fn validate(&self) -> Result<(), SamplerError> {
        fn finite(name: &'static str, value: f32) -> Result<(), SamplerError> {
            if value.is_finite() {
                Ok(())
            } else {
                Err(SamplerError::NotFinite { name, value })
            }
        }
        fn unit(name: &'static str, value: f32) -> Result<(), SamplerError> {
            finite(name, value)?;
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(SamplerError::OutOfRange {
                    name,
                    value: value as f64,
                    expected: "between 0 and 1",
                })
            }
        }
        finite("temperature", self.temperature)?;
        unit("top_p", self.top_p)?;
        unit("min_p", self.min_p)?;
        unit("typical_p", self.typical_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        // llama.cpp also rejects penalties whose reciprocal overflows.
        if self.repeat_penalty <= 0.0 || !(1.0 / self.repeat_penalty).is_finite() {
            return Err(SamplerError::OutOfRange {
                name: "repeat_penalty",
                value: self.repeat_penalty as f64,
                expected: "greater than 0",
            });
        }
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        if self.repeat_last_n < -1 {
            return Err(SamplerError::OutOfRange {
                name: "repeat_last_n",
                value: self.repeat_last_n as f64,
                expected: "-1 (whole context), 0 (disabled) or a positive count",
            });
        }
        for &(token, bias) in &self.logit_bias {
            if !(bias.is_finite() || bias == f32::NEG_INFINITY) {
                return Err(SamplerError::InvalidLogitBias { token, bias });
            }
        }
        Ok(())
    }

    fn penalties_enabled(&self) -> bool {
        self.repeat_last_n != 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// A hook that constrains decoding (grammars, JSON schemas). It sees the candidate list after logit
/// bias and penalties and before top-k, and may remove entries or set their logit to -inf; either way
/// the token can no longer be chosen.
pub trait TokenFilter {
    fn allowed(&mut self, candidates: &mut Vec<Candidate>);
}

impl<F: FnMut(&mut Vec<Candidate>)> TokenFilter for F {
    fn allowed(&mut self, candidates: &mut Vec<Candidate>) {
        self(candidates)
    }
}

/// A sampled token with the log-probabilities an OpenAI `logprobs` answer needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub token: TokenId,
    /// Log-softmax of the biased raw logits at `token`.
    pub logprob: f32,
    /// The `n_top` most likely tokens under the same log-softmax, best first.
    pub top: Vec<(TokenId, f32)>,
}

/// One sequence's sampler: the configured chain, its random stream and the token history the
/// penalties look at.
pub struct Sampler {
    cfg: SamplerConfig,
    seed: u64,
    rng: rng::Rng,
    history: VecDeque<TokenId>,
    counts: HashMap<TokenId, u32>,
    // Scratch buffers reused across calls so that a 262144-entry vocabulary is not reallocated per
    // token.
    cands: Vec<Candidate>,
    row: Vec<f32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("cfg", &self.cfg)
            .field("seed", &self.seed)
            .field("history_len", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Sampler, SamplerError> {
        cfg.validate()?;
        let seed = resolve_seed(cfg.seed);
        Ok(Sampler {
            rng: rng::Rng::from_seed(seed),
            seed,
            cfg,
            history: VecDeque::new(),
            counts: HashMap::new(),
            cands: Vec::new(),
            row: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The seed actually in use (a random one when the config asked for [`DEFAULT_SEED`]).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Records a token for the penalties. Like llama.cpp, callers should accept the prompt tokens
    /// too, and every sampled token after it is chosen; `sample` does not accept by itself.
    pub fn accept(&mut self, tok: TokenId) {
        let window = self.cfg.repeat_last_n;
        if window == 0 {
            return;
        }
        *self.counts.entry(tok).or_insert(0) += 1;
        if window < 0 {
            // Whole context: the counts alone are enough, no need to remember the order.
            return;
        }
        if self.history.len() >= window as usize {
            if let Some(old) = self.history.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.history.push_back(tok);
    }

    /// Forgets the history and restarts the random stream (with a fresh seed if the seed is random).
    pub fn reset(&mut self) {
        self.history.clear();
        self.counts.clear();
        self.seed = resolve_seed(self.cfg.seed);
        self.rng = rng::Rng::from_seed(self.seed);
    }

    /// Runs the chain on one full logit row (index = token id) and returns the chosen token. An
    /// empty row yields token 0. NaN logits are treated as -inf.
    pub fn sample(&mut self, logits: &[f32]) -> TokenId {
        self.sample_impl(logits, None).unwrap_or(0)
    }

    /// Like [`Sampler::sample`], with a constraint applied before top-k. Returns `None` when the
    /// filter left no token.
    pub fn sample_filtered(
        &mut self,
        logits: &[f32],
        filter: &mut dyn TokenFilter,
    ) -> Option<TokenId> {
        self.sample_impl(logits, Some(filter))
    }

    /// Samples like [`Sampler::sample`] and also returns the `n_top` best tokens with their
    /// log-probabilities: the log-softmax of the raw logits plus logit bias, before penalties and
    /// truncation (what llama-server reports when `post_sampling_probs` is off).
    pub fn sample_with_probs(
        &mut self,
        logits: &[f32],
        n_top: usize,
    ) -> (TokenId, Vec<(TokenId, f32)>) {
        let s = self.sample_with_logprobs(logits, n_top);
        (s.token, s.top)
    }

    /// [`Sampler::sample_with_probs`] plus the chosen token's own log-probability.
    pub fn sample_with_logprobs(&mut self, logits: &[f32], n_top: usize) -> SampledToken {
        let token = self.sample(logits);
        self.load_row(logits, false);
        let lse = log_sum_exp(&self.row);
        let logprob = self
            .row
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| l - lse);
        let n = n_top.min(self.row.len());
        let mut top = Vec::with_capacity(n);
        if n > 0 {
            self.cands.clear();
            self.cands
                .extend(self.row.iter().enumerate().map(|(i, &l)| Candidate {
                    id: i as TokenId,
                    logit: l,
                    p: 0.0,
                }));
            stages::sort_prefix(&mut self.cands, n);
            top.extend(self.cands[..n].iter().map(|c| (c.id, c.logit - lse)));
        }
        SampledToken {
            token,
            logprob,
            top,
        }
    }

    /// Copies `logits` into the scratch row with NaN -> -inf, logit bias and (optionally) penalties.
    fn load_row(&mut self, logits: &[f32], penalties: bool) {
        self.row.clear();
        self.row.extend(
            logits
                .iter()
                .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }),
        );
        for &(tok, bias) in &self.cfg.logit_bias {
            if let Some(l) = self.row.get_mut(tok as usize) {
                *l += bias;
            }
        }
        if penalties && self.cfg.penalties_enabled() {
            stages::apply_penalties_row(
                &mut self.row,
                &self.counts,
                self.cfg.repeat_penalty,
                self.cfg.frequency_penalty,
                self.cfg.presence_penalty,
            );
        }
    }

    fn sample_impl(
        &mut self,
        logits: &[f32],
        filter: Option<&mut dyn TokenFilter>,
    ) -> Option<TokenId> {
        if logits.is_empty() {
            return None;
        }
        let greedy = self.cfg.temperature <= 0.0;
        // top-k, top-p and min-p always keep the best token, so greedy decoding only needs the
        // full chain when typical-p (which may drop it) or a filter is active.
        if greedy && self.cfg.typical_p >= 1.0 && filter.is_none() {
            let untouched = self.cfg.logit_bias.is_empty()
                && (!self.cfg.penalties_enabled() || self.counts.is_empty());
            if untouched {
                return stages::argmax_f32(logits).map(|i| i as TokenId);
            }
            self.load_row(logits, true);
            return stages::argmax_f32(&self.row).map(|i| i as TokenId);
        }

        self.load_row(logits, true);
        self.cands.clear();
        self.cands
            .extend(self.row.iter().enumerate().map(|(i, &l)| Candidate {
                id: i as TokenId,
                logit: l,
                p: 0.0,
            }));
        if let Some(f) = filter {
            f.allowed(&mut self.cands);
            self.cands
                .retain(|c| c.logit > f32::NEG_INFINITY && !c.logit.is_nan());
            if self.cands.is_empty() {
                return None;
            }
        }

        let cfg = &self.cfg;
        let mut c = Cands {
            v: &mut self.cands,
            sorted: false,
        };
        stages::top_k(&mut c, cfg.top_k);
        stages::typical(&mut c, cfg.typical_p);
        stages::top_p(&mut c, cfg.top_p);
        stages::min_p(&mut c, cfg.min_p);
        if greedy {
            return stages::best_candidate(c.v).map(|x| x.id);
        }
        stages::temperature(&mut c, cfg.temperature);
        let u = self.rng.next_f64();
        stages::dist(c.v, u).map(|x| x.id)
    }
}

fn resolve_seed(seed: u64) -> u64 {
    if seed == DEFAULT_SEED {
        rng::entropy_seed()
    } else {
        seed
    }
}

/// log(sum(exp(row))), accumulated in f64 so that a 262144-entry vocabulary does not lose precision.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (max as f64 + sum.ln()) as f32
}

/// Argmax of a logit row, lowest id on ties; NaN never wins. An empty row yields token 0.
pub fn greedy(logits: &[f32]) -> TokenId {
    stages::argmax_f32(logits).map_or(0, |i| i as TokenId)
}
