//! End-to-end checks of the sampler chain through its public API: validation, penalties, greedy,
//! seeded determinism, and a chi-square test that sampled frequencies follow the softmax.

use orchard_sampler::{greedy, Candidate, Sampler, SamplerConfig, SamplerError, DEFAULT_SEED};

/// A config with every truncation stage off, so only temperature shapes the distribution.
fn plain(temperature: f32, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..SamplerConfig::default()
    }
}

fn softmax(logits: &[f32], temp: f32) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temp as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&o, &p)| {
            let e = n as f64 * p;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// A deterministic pseudo-random logit row (no RNG dependency in tests).
fn wavy_row(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u64).wrapping_mul(2654435761) % 10007;
            (x as f32 / 10007.0) * 12.0 - 6.0
        })
        .collect()
}

#[test]
fn defaults_are_llama_cpp_defaults_and_valid() {
    let d = SamplerConfig::default();
    assert_eq!(d.temperature, 0.8);
    assert_eq!(d.top_k, 40);
    assert_eq!(d.top_p, 0.95);
    assert_eq!(d.min_p, 0.05);
    assert_eq!(d.typical_p, 1.0);
    assert_eq!(d.repeat_penalty, 1.0);
    assert_eq!(d.repeat_last_n, 64);
    assert_eq!(d.frequency_penalty, 0.0);
    assert_eq!(d.presence_penalty, 0.0);
    assert_eq!(d.seed, DEFAULT_SEED);
    assert!(d.logit_bias.is_empty());
    assert_eq!(d.validate(), Ok(()));
}

#[test]
fn validate_rejects_bad_parameters_with_named_errors() {
    let bad = |f: fn(&mut SamplerConfig)| {
        let mut c = SamplerConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(matches!(
        bad(|c| c.temperature = f32::NAN),
        SamplerError::NotFinite {
            name: "temperature",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.top_p = -0.1),
        SamplerError::OutOfRange { name: "top_p", .. }
    ));
    assert!(matches!(
        bad(|c| c.top_p = 1.5),
        SamplerError::OutOfRange { name: "top_p", .. }
    ));
    assert!(matches!(
        bad(|c| c.min_p = f32::INFINITY),
        SamplerError::NotFinite { name: "min_p", .. }
    ));
    assert!(matches!(
        bad(|c| c.typical_p = -1.0),
        SamplerError::OutOfRange {
            name: "typical_p",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.repeat_penalty = 0.0),
        SamplerError::OutOfRange {
            name: "repeat_penalty",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.frequency_penalty = f32::NAN),
        SamplerError::NotFinite {
            name: "frequency_penalty",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.repeat_last_n = -2),
        SamplerError::OutOfRange {
            name: "repeat_last_n",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.logit_bias = vec![(3, f32::NAN)]),
        SamplerError::InvalidLogitBias { token: 3, .. }
    ));
    assert!(matches!(
        bad(|c| c.logit_bias = vec![(3, f32::INFINITY)]),
        SamplerError::InvalidLogitBias { token: 3, .. }
    ));
    let msg = bad(|c| c.top_p = -0.1).to_string();
    assert!(
        msg.contains("top_p") && msg.contains("between 0 and 1"),
        "{msg}"
    );
    assert!(Sampler::new(SamplerConfig {
        top_p: f32::NAN,
        ..SamplerConfig::default()
    })
    .is_err());

    // Negative temperature (greedy), -1 window and a -inf ban are all fine.
    let ok = SamplerConfig {
        temperature: -1.0,
        repeat_last_n: -1,
        logit_bias: vec![(0, f32::NEG_INFINITY)],
        ..SamplerConfig::default()
    };
    assert_eq!(ok.validate(), Ok(()));
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    assert_eq!(greedy(&[0.1, 0.7, 0.7, 0.2]), 1);
    assert_eq!(greedy(&[f32::NAN, -3.0, f32::NAN]), 1);
    assert_eq!(greedy(&[]), 0);
    let mut s = Sampler::new(plain(0.0, 1)).unwrap();
    assert_eq!(s.sample(&[0.1, 0.7, 0.7, 0.2]), 1);
    let row = wavy_row(262_144);
    assert_eq!(s.sample(&row), greedy(&row));
    assert_eq!(s.sample(&[]), 0);
}

#[test]
fn greedy_sampler_sees_penalties_and_window() {
    let row = [2.0f32, 1.9, -1.0, 0.5, 0.0, 0.0, 0.0];
    let cfg = |repeat_last_n| SamplerConfig {
        temperature: 0.0,
        repeat_penalty: 1.1,
        repeat_last_n,
        ..SamplerConfig::default()
    };

    let mut s = Sampler::new(cfg(2)).unwrap();
    assert_eq!(s.sample(&row), 0);
    s.accept(0);
    // 2.0 / 1.1 = 1.82 < 1.9
    assert_eq!(s.sample(&row), 1);
    s.accept(5);
    s.accept(6);
    // Token 0 has left the 2-token window.
    assert_eq!(s.sample(&row), 0);

    let mut all = Sampler::new(cfg(-1)).unwrap();
    all.accept(0);
    for _ in 0..100 {
        all.accept(5);
    }
    assert_eq!(all.sample(&row), 1, "-1 remembers the whole context");
    all.reset();
    assert_eq!(all.sample(&row), 0, "reset forgets the history");

    let mut off = Sampler::new(cfg(0)).unwrap();
    off.accept(0);
    assert_eq!(off.sample(&row), 0, "window 0 disables penalties");
}

#[test]
fn frequency_and_presence_penalties_subtract() {
    let row = [2.0f32, 1.9, 0.0];
    let mut freq = Sampler::new(SamplerConfig {
        temperature: 0.0,
        frequency_penalty: 0.05,
        ..SamplerConfig::default()
    })
    .unwrap();
    freq.accept(0);
    assert_eq!(freq.sample(&row), 0, "2.0 - 0.05 > 1.9");
    freq.accept(0);
    freq.accept(0);
    assert_eq!(freq.sample(&row), 1, "2.0 - 3 * 0.05 < 1.9");

    let mut pres = Sampler::new(SamplerConfig {
        temperature: 0.0,
        presence_penalty: 0.2,
        ..SamplerConfig::default()
    })
    .unwrap();
    pres.accept(0);
    assert_eq!(pres.sample(&row), 1, "2.0 - 0.2 < 1.9");
}

#[test]
fn logit_bias_bans_and_boosts() {
    let row = [3.0f32, 1.0, 2.0];
    let mut s = Sampler::new(SamplerConfig {
        temperature: 0.0,
        logit_bias: vec![(0, f32::NEG_INFINITY), (99, 5.0)],
        ..SamplerConfig::default()
    })
    .unwrap();
    assert_eq!(s.sample(&row), 2);
    let mut s = Sampler::new(SamplerConfig {
        logit_bias: vec![(1, 1.5), (1, 1.0)],
        ..plain(0.0, 1)
    })
    .unwrap();
    assert_eq!(s.sample(&row), 1, "repeated biases add up: 1 + 2.5 > 3");

    // A banned token is never sampled at a high temperature either.
    let mut s = Sampler::new(SamplerConfig {
        logit_bias: vec![(0, f32::NEG_INFINITY)],
        ..plain(5.0, 3)
    })
    .unwrap();
    assert!((0..2000).all(|_| s.sample(&row) != 0));
}

#[test]
fn seeded_runs_are_reproducible_and_seeds_differ() {
    let row = wavy_row(5000);
    let run = |seed: u64| {
        let mut s = Sampler::new(SamplerConfig {
            seed,
            ..SamplerConfig::default()
        })
        .unwrap();
        (0..300)
            .map(|_| {
                let t = s.sample(&row);
                s.accept(t);
                t
            })
            .collect::<Vec<_>>()
    };
    let a = run(1234);
    assert_eq!(a, run(1234));
    assert_ne!(a, run(1235));
    // The default chain sampled something other than the argmax at least sometimes.
    assert!(a.iter().any(|&t| t != greedy(&row)));

    let mut s = Sampler::new(SamplerConfig {
        seed: 1234,
        ..SamplerConfig::default()
    })
    .unwrap();
    let first: Vec<_> = (0..50).map(|_| s.sample(&row)).collect();
    s.reset();
    let again: Vec<_> = (0..50).map(|_| s.sample(&row)).collect();
    assert_eq!(first, again, "reset restarts the seeded stream");
    assert_eq!(s.seed(), 1234);

    let r1 = Sampler::new(SamplerConfig::default()).unwrap();
    let r2 = Sampler::new(SamplerConfig::default()).unwrap();
    assert_ne!(r1.seed(), r2.seed(), "DEFAULT_SEED draws a fresh seed");
}

#[test]
fn temperature_sampling_frequencies_match_softmax() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let temp = 0.7;
    let n = 60_000;
    let mut s = Sampler::new(plain(temp, 42)).unwrap();
    let mut counts = vec![0u64; logits.len()];
    for _ in 0..n {
        counts[s.sample(&logits) as usize] += 1;
    }
    let expected = softmax(&logits, temp);
    let chi2 = chi_square(&counts, &expected);
    // 5 degrees of freedom: P(chi2 > 20.52) = 0.001.
    assert!(chi2 < 20.52, "chi2 = {chi2}, counts = {counts:?}");
    // The same counts are far from the untempered distribution, so the test has power.
    let wrong = chi_square(&counts, &softmax(&logits, 1.0));
    assert!(wrong > 200.0, "chi2 vs wrong distribution only {wrong}");
}

#[test]
fn truncated_chain_samples_the_renormalised_survivors() {
    // top_k = 3 keeps tokens 1, 4, 0; min_p = 0.05 then keeps all three (0.27 >= 0.05 * 0.45);
    // temperature 1 leaves their relative odds alone.
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1.0,
        top_k: 3,
        top_p: 1.0,
        min_p: 0.05,
        seed: 7,
        ..SamplerConfig::default()
    })
    .unwrap();
    let mut counts = [0u64; 6];
    let n = 30_000;
    for _ in 0..n {
        counts[s.sample(&logits) as usize] += 1;
    }
    assert_eq!(counts[2] + counts[3] + counts[5], 0, "{counts:?}");
    let kept = [1.0f32, 2.0, 1.5];
    let expected = softmax(&kept, 1.0);
    let chi2 = chi_square(&[counts[0], counts[1], counts[4]], &expected);
    // 2 degrees of freedom: P(chi2 > 13.82) = 0.001.
    assert!(chi2 < 13.82, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn big_vocabulary_default_chain_stays_in_top_k() {
    let row = wavy_row(262_144);
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    let top40: std::collections::HashSet<u32> = order[..40].iter().copied().collect();
    let mut s = Sampler::new(SamplerConfig {
        seed: 9,
        ..SamplerConfig::default()
    })
    .unwrap();
    for _ in 0..50 {
        let t = s.sample(&row);
        assert!(top40.contains(&t), "token {t} is outside the top 40");
    }
}

#[test]
fn logprobs_are_the_log_softmax_of_biased_logits() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let mut s = Sampler::new(SamplerConfig {
        logit_bias: vec![(3, 4.0)],
        ..plain(0.0, 5)
    })
    .unwrap();
    let (tok, top) = s.sample_with_probs(&logits, 3);
    assert_eq!(tok, 3, "bias makes token 3 the argmax");
    let mut biased = logits;
    biased[3] += 4.0;
    let p = softmax(&biased, 1.0);
    assert_eq!(top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 1, 4]);
    for &(id, lp) in &top {
        assert!((lp as f64 - p[id as usize].ln()).abs() < 1e-5, "{id}: {lp}");
    }

    let full = s.sample_with_logprobs(&logits, 100);
    assert_eq!(full.top.len(), logits.len());
    let mass: f64 = full.top.iter().map(|x| (x.1 as f64).exp()).sum();
    assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
    assert!((full.logprob as f64 - p[3].ln()).abs() < 1e-5);
    assert!(full.top.windows(2).all(|w| w[0].1 >= w[1].1));
}

#[test]
fn filter_hook_constrains_the_choice() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let mut s = Sampler::new(plain(2.0, 11)).unwrap();
    let mut only_even = |c: &mut Vec<Candidate>| c.retain(|x| x.id % 2 == 0);
    for _ in 0..500 {
        let t = s.sample_filtered(&logits, &mut only_even).unwrap();
        assert_eq!(t % 2, 0);
    }
    // Setting -inf counts as removal.
    let mut ban_all_but_3 = |c: &mut Vec<Candidate>| {
        c.iter_mut()
            .filter(|x| x.id != 3)
            .for_each(|x| x.logit = f32::NEG_INFINITY)
    };
    assert_eq!(s.sample_filtered(&logits, &mut ban_all_but_3), Some(3));
    let mut none = |c: &mut Vec<Candidate>| c.clear();
    assert_eq!(s.sample_filtered(&logits, &mut none), None);

    // Greedy with a filter picks the best allowed token.
    let mut g = Sampler::new(plain(0.0, 1)).unwrap();
    assert_eq!(g.sample_filtered(&logits, &mut only_even), Some(4));
}

#[test]
fn greedy_with_typical_p_takes_the_best_survivor() {
    // p = [1/2, 1/4, 1/8, 1/8]: typical_p 0.2 keeps only token 1 (see the stage test), so even a
    // greedy sampler must return it, as llama.cpp's chain does.
    let logits: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
        .iter()
        .map(|p| p.ln())
        .collect();
    let mut s = Sampler::new(SamplerConfig {
        temperature: 0.0,
        typical_p: 0.2,
        ..plain(0.0, 1)
    })
    .unwrap();
    assert_eq!(s.sample(&logits), 1);
}
