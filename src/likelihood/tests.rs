use super::*;

#[test]
fn estimate_is_the_mean_and_its_standard_error() {
    // numpy: x = [1, 2, 4, 7]; x.mean() = 3.5; x.std(ddof=1) / 2 = 1.3228756555322954
    let e = Estimate::of(&[1.0, 2.0, 4.0, 7.0]);
    assert_eq!(e.mean, 3.5);
    assert!((e.se - 1.3228756555322954).abs() < 1e-12);
    assert!(Estimate::of(&[2.0]).se.is_nan());
}
