//! The cost model against a calculation done by hand from examples/cost-model.toml (the same
//! numbers as the README's worked example).

use orchard_ledger::cost::PowerSource;
use orchard_ledger::{split_step_time, tco_report, CostModel, Throughput};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {
        assert!(
            close($a, $b),
            "{} = {} but hand calculation says {}",
            stringify!($a),
            $a,
            $b
        )
    };
}

#[test]
fn tco_matches_hand_calculation() {
    let model = CostModel::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cost-model.toml"
    ))
    .unwrap();
    let measured = Throughput {
        prompt_tps: 4000.0,
        gen_tps: 100.0,
        utilisation: 0.5,
    };
    let r = tco_report(&model, measured);

    // Hardware: 2400 USD over 36 months = 66.666... USD/month.
    assert_close!(r.monthly.hardware_usd, 2400.0 / 36.0);
    // Power: half the month at 350 W, half at 60 W -> 205 W average; 205 W x 730 h = 149.65 kWh.
    assert_close!(r.monthly.energy_kwh, 149.65);
    // 149.65 kWh x 0.25 USD = 37.4125 USD; x 1.3 overhead = 48.63625 USD.
    assert_close!(r.monthly.energy_usd, 37.4125);
    assert_close!(r.monthly.operating_usd, 48.63625);
    // Owned: 66.6667 + 48.63625 = 115.302916... USD/month.
    assert_close!(r.monthly.total_usd, 2400.0 / 36.0 + 48.63625);
    // Busy time: 0.5 x 730 h x 3600 s = 1,314,000 s -> 115.3029 / 1,314,000 = 8.77496e-5 USD/s.
    assert_close!(r.monthly.busy_seconds, 1_314_000.0);
    let per_s = (2400.0 / 36.0 + 48.63625) / 1_314_000.0;
    assert_close!(r.usd_per_device_second, per_s);
    assert!((r.usd_per_device_second - 8.77496e-5).abs() < 1e-9);
    // 1M prompt tokens at 4000 tok/s = 250 s -> 0.021937 USD; 1M generated at 100 tok/s = 10,000 s -> 0.87750 USD.
    assert_close!(r.owned_usd_per_1m_prompt, 250.0 * per_s);
    assert_close!(r.owned_usd_per_1m_generated, 10_000.0 * per_s);
    assert!((r.owned_usd_per_1m_generated - 0.87750).abs() < 1e-5);
    // Cloud: 2 USD/h = 1/1800 USD/s, 1.5x faster. 1M generated = 10,000 / 1.5 s = 6666.67 s -> 3.7037 USD.
    assert_close!(r.cloud_usd_per_1m_generated, 10_000.0 / 1.5 / 1800.0);
    assert_close!(r.cloud_usd_per_1m_prompt, 250.0 / 1.5 / 1800.0);
    // Same busy work on the cloud: 1,314,000 s / 1.5 = 876,000 s = 243.33 h x 2 USD = 486.667 USD/month.
    assert_close!(r.cloud_monthly_usd, 876_000.0 / 1800.0);
    // Saving: 486.667 - 48.636 (running cost; the hardware is the investment) = 438.030 USD/month.
    assert_close!(r.monthly_saving_usd, 876_000.0 / 1800.0 - 48.63625);
    // Break-even: 2400 / 438.030 = 5.479 months.
    let be = r.break_even_months.unwrap();
    assert_close!(be, 2400.0 / (876_000.0 / 1800.0 - 48.63625));
    assert!((be - 5.4791).abs() < 1e-3, "{be}");

    // Per request: 1,500 ms of attributed device time.
    assert_close!(model.request_cost_usd(1500.0), 1.5 * per_s);
    assert_eq!(model.request_cost_usd(-3.0), 0.0);

    let table = r.render_table();
    assert!(table.contains("5.5 months"), "{table}");
    assert!(table.contains("$0.8775"), "{table}");
    assert!(table.contains("$486.6667"), "{table}");
    assert!(table.contains("(configured)"), "{table}");
}

#[test]
fn cloud_cheaper_means_no_break_even_and_measured_power_is_used() {
    let mut model = CostModel::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cost-model.toml"
    ))
    .unwrap();
    model.cloud.usd_per_gpu_hour = 0.01;
    let r = model.tco(Throughput {
        prompt_tps: 1000.0,
        gen_tps: 50.0,
        utilisation: f64::NAN,
    });
    // NaN utilisation falls back to the configured 0.5.
    assert_eq!(r.throughput.utilisation, 0.5);
    assert!(r.monthly_saving_usd < 0.0);
    assert_eq!(r.break_even_months, None);
    assert!(r.render_table().contains("never"));

    let m2 = model.clone().with_measured_load_watts(410.0);
    assert_eq!(m2.power.source, PowerSource::Measured);
    let r2 = m2.tco(Throughput {
        prompt_tps: 1000.0,
        gen_tps: 50.0,
        utilisation: 1.0,
    });
    // All month at 410 W: 410 x 730 / 1000 = 299.3 kWh.
    assert_close!(r2.monthly.energy_kwh, 299.3);
    assert!(r2.render_table().contains("410.0 W (measured)"));
}

#[test]
fn step_time_split_feeds_request_cost() {
    // One 40 ms step: request A prefills 300 tokens, B and C decode one token each.
    let shares = split_step_time(40.0, &[("A", 300), ("B", 1), ("C", 1)]);
    let sum: f64 = shares.iter().map(|s| s.1).sum();
    assert_close!(sum, 40.0);
    assert_close!(shares[0].1, 40.0 * 300.0 / 302.0);
    assert_close!(shares[1].1, 40.0 / 302.0);
}
