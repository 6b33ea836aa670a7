//! `hanga bench`: the tensor lists it builds full-size networks from must be diffusers' own
//! (checked against the tiny checkpoints diffusers wrote), and the command must run.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use hanga::bench::shapes::{self, Shapes};
use hanga::weights::{SafetensorsFile, TensorStore};

fn config(dir: &str) -> serde_json::Value {
    let path = common::fixtures()
        .join("components")
        .join(dir)
        .join("config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's tensors whose names `keep` accepts, name → shape.
fn stored(dir: &str, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<usize>> {
    let path = common::fixtures()
        .join("components")
        .join(dir)
        .join("diffusion_pytorch_model.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    file.tensors()
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, info)| (name.clone(), info.shape.clone()))
        .collect()
}

fn assert_same(dir: &str, built: Shapes, keep: impl Fn(&str) -> bool) {
    let count = built.len();
    let built: BTreeMap<String, Vec<usize>> = built.into_iter().collect();
    assert_eq!(built.len(), count, "{dir}: a tensor is listed twice");
    let stored = stored(dir, keep);
    let missing: Vec<_> = stored.keys().filter(|k| !built.contains_key(*k)).collect();
    let extra: Vec<_> = built.keys().filter(|k| !stored.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{dir}: missing {missing:?}, extra {extra:?}"
    );
    for (name, shape) in &stored {
        assert_eq!(&built[name], shape, "{dir}: {name}");
    }
}

#[test]
fn tensor_lists_are_diffusers_own() {
    assert_same(
        "sdxl_unet",
        shapes::sdxl_unet(&config("sdxl_unet")).unwrap(),
        |_| true,
    );
    for dir in ["flux_dev_transformer", "flux_schnell_transformer"] {
        assert_same(dir, shapes::flux_transformer(&config(dir)).unwrap(), |_| {
            true
        });
    }
    for dir in ["sdxl_vae", "flux_vae"] {
        assert_same(dir, shapes::vae_decoder(&config(dir)).unwrap(), |name| {
            name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
        });
    }
}

/// The full-size cases have the parameter counts diffusers 0.42.1 gives the same configs
/// (`cls.from_config(config)` on the meta device, `sum(p.numel() …)`; decoder and
/// `post_quant_conv` only for a VAE): SDXL's UNet 2,567,463,684 and FLUX.1's transformer
/// 11,901,408,320, as published.
#[test]
fn full_size_cases_have_diffusers_parameter_counts() {
    let count = |s: Shapes| {
        s.iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum::<usize>()
    };
    let cases = hanga::bench::cases(hanga::bench::Size::Full);
    let config = |n: &str| &cases.iter().find(|c| c.name == n).unwrap().config;
    assert_eq!(
        count(shapes::sdxl_unet(config("sdxl-unet")).unwrap()),
        2_567_463_684
    );
    let flux = shapes::flux_transformer(config("flux-dev-transformer")).unwrap();
    assert_eq!(count(flux), 11_901_408_320);
    let sdxl_vae = shapes::vae_decoder(config("sdxl-vae-decode")).unwrap();
    assert_eq!(count(sdxl_vae), 49_490_199);
    let flux_vae = shapes::vae_decoder(config("flux-vae-decode")).unwrap();
    assert_eq!(count(flux_vae), 49_545_475);
}

/// Random weights load through the real loaders: the store reads back the listed shapes, with
/// norm weights 1, biases 0 and matrices bounded by √(3/fan_in).
#[test]
fn random_weights_hold_the_listed_tensors() {
    let listed = shapes::vae_decoder(&config("sdxl_vae")).unwrap();
    let store =
        TensorStore::from_file_prefix(&hanga::bench::random_weights(&listed, "vae").unwrap(), "");
    for (name, shape) in &listed {
        assert_eq!(&store.shape(name).unwrap(), shape, "{name}");
    }
    let values = |name: &str| store.get(name).unwrap().to_f32().unwrap();
    assert!(
        values("decoder.conv_norm_out.weight")
            .iter()
            .all(|&v| v == 1.0)
    );
    assert!(values("decoder.conv_in.bias").iter().all(|&v| v == 0.0));
    let kernel = values("decoder.conv_in.weight");
    let bound = (3.0f32 / (4 * 9) as f32).sqrt() * 1.01;
    assert!(kernel.iter().all(|v| v.abs() <= bound));
    let mean_square = kernel.iter().map(|v| v * v).sum::<f32>() / kernel.len() as f32;
    assert!(
        (mean_square - 1.0 / 36.0).abs() < 0.2 / 36.0,
        "variance {mean_square}"
    );
}

/// `hanga bench --size small` on the device these tests run on prints one row per network and
/// writes the same rows as JSON.
#[test]
fn bench_command_times_every_network() {
    let dir = common::temp_dir("bench");
    let json = dir.join("rows.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hanga"))
        .args([
            "bench",
            "--device",
            common::http::TEST_DEVICE,
            "--size",
            "small",
        ])
        .args(["--runs", "1", "--warmup", "1", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "sdxl-unet",
            "flux-dev-transformer",
            "sdxl-vae-decode",
            "flux-vae-decode"
        ]
    );
    for row in rows {
        assert!(row["median_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["weight_bytes"].as_u64().unwrap() > 1 << 20, "{row}");
        assert!(
            row["peak_bytes"].as_u64().unwrap() >= row["weight_bytes"].as_u64().unwrap(),
            "{row}"
        );
    }
    for name in names {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{stdout}"
        );
    }
}
