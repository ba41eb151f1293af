//! Tests of the parent module.

use super::*;
use crate::tokens::rng::SplitMix64;
use ndarray::{Array2, array};

fn input_of(n: usize) -> Array2<f32> {
    Array2::zeros((n, 1))
}

#[test]
fn iqr_hand_checked() {
    // Q1 = 3, Q3 = 7, IQR = 4, fence = 13: only 100 is an outlier.
    let s = [5.0, 1.0, 100.0, 3.0, 2.0, 4.0, 8.0, 7.0, 6.0];
    let t = input_of(9);
    let x = VisualInput::new(t.view());
    let b = Budget::adaptive(AdaptiveRule::default());
    assert_eq!(b.resolve(&x, Some(&s)).unwrap(), 1);
    // whisker 0: fence 7, so 8 and 100.
    let b0 = Budget::adaptive(AdaptiveRule::IqrOutliers { whisker: 0.0 });
    assert_eq!(b0.resolve(&x, Some(&s)).unwrap(), 2);
    // clamps
    assert_eq!(b.clone().with_clamps(3, 5).resolve(&x, Some(&s)).unwrap(), 3);
    let all = Budget::adaptive(AdaptiveRule::IqrOutliers { whisker: -10.0 }).with_clamps(1, 4);
    assert_eq!(all.resolve(&x, Some(&s)).unwrap(), 4);
}

#[test]
fn other_rules_hand_checked() {
    let s = [0.4, 0.3, 0.2, 0.1, 0.0];
    let t = input_of(5);
    let x = VisualInput::new(t.view());
    let r = |rule| Budget::adaptive(rule).with_clamps(0, 99).resolve(&x, Some(&s)).unwrap();
    assert_eq!(r(AdaptiveRule::CumulativeMass { mass: 0.7 }), 2);
    assert_eq!(r(AdaptiveRule::CumulativeMass { mass: 0.71 }), 3);
    assert_eq!(r(AdaptiveRule::CumulativeMass { mass: 0.0 }), 0);
    assert_eq!(r(AdaptiveRule::CumulativeMass { mass: 1.0 }), 4);
    assert_eq!(r(AdaptiveRule::MeanPlusStd { alpha: 0.0 }), 2);
    assert_eq!(r(AdaptiveRule::MeanPlusStd { alpha: 1.0 }), 1); // 0.2 + 0.1414
    assert_eq!(r(AdaptiveRule::Threshold { tau: 0.15 }), 3);
    assert_eq!(Budget::keep(9).resolve(&x, None).unwrap(), 5);
    assert_eq!(Budget::ratio(0.5).resolve(&x, None).unwrap(), 3); // round(2.5) = 3
    assert_eq!(Budget::ratio(0.01).resolve(&x, None).unwrap(), 1);
    assert!(Budget::adaptive(AdaptiveRule::default()).resolve(&x, None).is_err());
    assert!(Budget::ratio(0.0).validate().is_err());
    assert!(Budget::keep(0).validate().is_err());
    assert!(
        Budget::adaptive(AdaptiveRule::default())
            .with_clamps(5, 2)
            .validate()
            .is_err()
    );
    let neg = [1.0, -1.0, 0.0, 0.0, 0.0];
    let mass = Budget::adaptive(AdaptiveRule::cumulative_mass());
    assert!(mass.resolve(&x, Some(&neg)).is_err());
    let nan = [1.0, f32::NAN, 0.0, 0.0, 0.0];
    assert!(
        Budget::adaptive(AdaptiveRule::default())
            .resolve(&x, Some(&nan))
            .is_err()
    );
}

#[test]
fn matrix_rank_rule_uses_text_rank() {
    // rows 0 and 2 are equal, so rank 2.
    let text = array![[0.5f32, 0.25, 0.25, 0.0], [0.0, 0.5, 0.0, 0.5], [0.5, 0.25, 0.25, 0.0]];
    assert_eq!(numerical_rank(text.view()).unwrap(), 2);
    assert_eq!(numerical_rank(text.t()).unwrap(), 2);
    let t = input_of(4);
    let x = VisualInput::new(t.view()).with_text_attn(text.view());
    let b = Budget::adaptive(AdaptiveRule::MatrixRank { scale: 1.5, bias: 0.0 });
    assert_eq!(b.resolve(&x, Some(&[0.0; 4])).unwrap(), 3);
    let no_text = VisualInput::new(t.view());
    assert!(b.resolve(&no_text, Some(&[0.0; 4])).is_err());
}

#[test]
fn numerical_rank_of_random_low_rank_product() {
    let mut rng = SplitMix64::new(3);
    let a = Array2::from_shape_fn((12, 3), |_| rng.next_f32() - 0.5);
    let b = Array2::from_shape_fn((3, 40), |_| rng.next_f32() - 0.5);
    assert_eq!(numerical_rank(a.dot(&b).view()).unwrap(), 3);
    let full = Array2::from_shape_fn((12, 40), |_| rng.next_f32());
    assert_eq!(numerical_rank(full.view()).unwrap(), 12);
}

fn synthetic_set(n_img: usize, n: usize, seed: u64) -> Vec<CalibrationSample> {
    let mut rng = SplitMix64::new(seed);
    (0..n_img)
        .map(|i| {
            // Softmax-like scores with a per-image temperature: some images peaked, some flat.
            let temp = 0.5 + 4.0 * (i as f32 / n_img as f32);
            let logits: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * temp).collect();
            let z: f32 = logits.iter().map(|l| l.exp()).sum();
            CalibrationSample {
                scores: logits.iter().map(|l| l.exp() / z).collect(),
                text_rank: Some(1 + rng.below(n / 2)),
            }
        })
        .collect()
}

#[test]
fn calibration_hits_target_mean_within_one_token() {
    let set = synthetic_set(60, 96, 11);
    for rule in [
        AdaptiveRule::default(),
        AdaptiveRule::cumulative_mass(),
        AdaptiveRule::mean_plus_std(),
        AdaptiveRule::Threshold { tau: 0.0 },
        AdaptiveRule::matrix_rank(),
    ] {
        for target in [12.0, 17.0, 37.0] {
            let b = Budget::adaptive(rule).with_clamps(4, 90);
            let fitted = calibrate(&b, &set, target).unwrap();
            let m = mean_kept(&fitted, &set).unwrap();
            assert!((m - target).abs() <= 1.0, "{rule:?} target {target}: mean {m}");
            // each image keeps its own count
            let Budget::Adaptive { .. } = fitted else { panic!() };
            let counts: Vec<usize> = set
                .iter()
                .map(|s| fitted.count(&Stats::new(&s.scores, s.text_rank).unwrap()).unwrap())
                .collect();
            assert!(counts.iter().any(|&c| c != counts[0]), "{rule:?}: counts all equal");
        }
    }
    let b = Budget::adaptive(AdaptiveRule::default()).with_clamps(4, 10);
    assert!(calibrate(&b, &set, 50.0).is_err());
    assert!(calibrate(&Budget::keep(3), &set, 5.0).is_err());
}

#[test]
fn budget_serde_round_trip() {
    let b = Budget::adaptive(AdaptiveRule::mean_plus_std()).with_clamps(8, 64);
    let s = serde_json::to_string(&b).unwrap();
    assert_eq!(serde_json::from_str::<Budget>(&s).unwrap(), b);
    let short: Budget =
        serde_json::from_str(r#"{"kind":"adaptive","rule":{"rule":"iqr_outliers","whisker":1.5}}"#).unwrap();
    assert_eq!(short, Budget::adaptive(AdaptiveRule::default()));
    assert!(serde_json::from_str::<Budget>(r#"{"kind":"keep","k":3,"x":1}"#).is_err());
}
