//! The noise generator against torch.randn draws (fixtures: ../shared/reference/pipelines/rng).

mod common;

use common::{fixtures, load, max_abs_diff};
use hanga::sampling::TorchGenerator;

#[test]
fn single_draws_match_torch_randn() {
    let recorded = load(&fixtures().join("rng/randn.safetensors"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("rng/cases.json")).unwrap())
            .unwrap();
    let draws = cases["single_draws"].as_array().unwrap();
    assert!(draws.len() >= 40);
    for draw in draws {
        let key = draw["key"].as_str().unwrap();
        let seed = draw["seed"].as_u64().unwrap();
        let expected = recorded[key].f32();
        let got = TorchGenerator::new(seed).randn(expected.len());
        let err = max_abs_diff(&got, &expected);
        assert!(err <= 1e-6, "{key}: max abs error {err:e}");
    }
}

#[test]
fn consecutive_draws_continue_the_stream() {
    let recorded = load(&fixtures().join("rng/randn.safetensors"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("rng/cases.json")).unwrap())
            .unwrap();
    for sequence in cases["sequences"].as_array().unwrap() {
        let mut rng = TorchGenerator::new(sequence["seed"].as_u64().unwrap());
        for draw in sequence["draws"].as_array().unwrap() {
            let key = draw["key"].as_str().unwrap();
            let expected = recorded[key].f32();
            let err = max_abs_diff(&rng.randn(expected.len()), &expected);
            assert!(err <= 1e-6, "{key}: max abs error {err:e}");
        }
    }
}

#[test]
fn seeds_wrap_at_32_bits_as_torch_does() {
    let a = TorchGenerator::new((1 << 32) + 7).randn(256);
    let b = TorchGenerator::new(7).randn(256);
    assert_eq!(a, b);
    assert_ne!(a, TorchGenerator::new(8).randn(256));
}
