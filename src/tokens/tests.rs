//! Tests of the module root.

use super::testutil::*;
use super::*;
use ndarray::{Array1, array};

#[test]
fn validate_rejects_mismatches() {
    let t = Array2::<f32>::zeros((6, 3));
    let bad = Array2::<f32>::zeros((2, 5));
    assert!(VisualInput::new(t.view()).validate().is_ok());
    assert!(matches!(
        VisualInput::new(t.view()).with_grid(2, 2).validate(),
        Err(Error::Shape { op: "grid", .. })
    ));
    assert!(matches!(
        VisualInput::new(t.view()).with_cls_attn(bad.view()).validate(),
        Err(Error::Shape { op: "cls_attn", .. })
    ));
    assert!(VisualInput::new(t.view()).with_keys(bad.view()).validate().is_err());
    assert!(VisualInput::new(t.view()).with_vis_attn(bad.view()).validate().is_err());
    let s = Array1::from(vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    assert!(matches!(
        VisualInput::new(t.view()).with_sizes(s.view()).validate(),
        Err(Error::InvalidParam { name: "sizes", .. })
    ));
    let empty = Array2::<f32>::zeros((0, 3));
    assert!(VisualInput::new(empty.view()).validate().is_err());
}

#[test]
fn merge_renumbers_by_representative() {
    let t = array![[1.0f32, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]];
    let input = VisualInput::new(t.view());
    // provisional row 0 represents token 3, row 1 token 0
    let assign = [Some(1), Some(1), Some(0), Some(0)];
    let r = merge(&input, &[3, 0], &assign, &[1.0, 1.0, 0.0, 0.0], None);
    check_reduction(&r, 4);
    assert_eq!(r.origin, vec![0, 3]);
    assert_eq!(r.tokens, array![[2.0, 0.0], [0.0, 3.0]]); // zero weights fall back to sizes
    assert_eq!(r.sizes, vec![2.0, 2.0]);
    assert_eq!(r.assignment, vec![Some(0), Some(0), Some(1), Some(1)]);
}

#[test]
fn reducer_config_round_trips_and_rejects_unknown_fields() {
    let cfgs = [
        ReducerConfig::Random(RandomParams::default()),
        ReducerConfig::UniformGrid,
        ReducerConfig::ClsTopK,
        ReducerConfig::TextAttnTopK(TextAttnTopKParams::default()),
        ReducerConfig::PruMerge(PruMergeParams::default()),
        ReducerConfig::VisionZip(VisionZipParams::default()),
        ReducerConfig::DivPrune(DivPruneParams::default()),
        ReducerConfig::ToMe(ToMeParams::default()),
        ReducerConfig::Adaptive(AdaptivePrunerParams::default()),
    ];
    let data = Owned::new(4, 4, 8, 1);
    for c in cfgs {
        let json = serde_json::to_string(&c).unwrap();
        let back: ReducerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let r = c.build().unwrap();
        let out = r.reduce(&data.input(), &Budget::keep(5)).unwrap();
        check_reduction(&out, 16);
        assert_eq!(out.k, 5, "{}", r.name());
    }
    let bad = r#"{"kind":"pru_merge","knn":4,"bogus":1}"#;
    assert!(serde_json::from_str::<ReducerConfig>(bad).is_err());
}

#[test]
fn missing_signal_is_an_error_not_a_panic() {
    let t = Array2::<f32>::ones((9, 2));
    let input = VisualInput::new(t.view());
    for r in [
        ReducerConfig::ClsTopK,
        ReducerConfig::TextAttnTopK(TextAttnTopKParams::default()),
        ReducerConfig::PruMerge(PruMergeParams::default()),
        ReducerConfig::VisionZip(VisionZipParams::default()),
    ] {
        let e = r.build().unwrap().reduce(&input, &Budget::keep(3)).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { .. }), "{e}");
    }
}

#[test]
fn nan_scores_are_errors() {
    let mut data = Owned::new(3, 3, 4, 2);
    data.cls[[1, 4]] = f32::NAN;
    let e = ClsTopK.reduce(&data.input(), &Budget::keep(3)).unwrap_err();
    assert!(e.to_string().contains("token 4"), "{e}");
}
