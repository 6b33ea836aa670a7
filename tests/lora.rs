//! LoRA files against the deltas diffusers fused into the weights (fixtures:
//! ../shared/reference/pipelines/sdxl/lora; tolerance 1e-6). Our convention for a kohya
//! module without `.alpha` is sd-scripts' (alpha = rank), so `sdxl_lora_kohya.safetensors`
//! must give the `kohya_sdscripts-equivalent` deltas. LyCORIS LoHa / LoKr files against the
//! deltas LyCORIS's own `merge_to` adds (tests/fixtures/sdxl/lycoris, `make_lycoris.py`).

mod common;

use common::{fixtures, load, max_abs_diff};

use hanga::weights::LoraFile;

const LORA_SCALE: f32 = 0.8;

fn check(dir: &str, lora: &str, fused: &str) {
    let dir = fixtures().join(dir);
    let file = LoraFile::open(&dir.join(lora)).unwrap();
    let expected = load(&dir.join(fused));
    // Fused keys are `<component>.<module>[.weight]`; transformers 5 drops CLIP-L's `text_model.`.
    let normalize = |key: &str| {
        let key = key.strip_suffix(".weight").unwrap_or(key);
        let (component, module) = key.split_once('.').unwrap();
        if component.starts_with("text_encoder") && !module.starts_with("text_model.") {
            format!("{component}.text_model.{module}")
        } else {
            key.to_owned()
        }
    };
    let expected: std::collections::HashMap<String, _> = expected
        .into_iter()
        .map(|(k, v)| (normalize(&k), v))
        .collect();
    assert_eq!(
        file.modules.len(),
        expected.len(),
        "{lora}: one module per fused delta"
    );
    let mut worst = 0.0f32;
    for module in &file.modules {
        let key = format!("{}.{}", module.component.name(), module.module);
        let reference = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{lora}: no fused delta for {key}"));
        let (delta, shape) = module.delta(LORA_SCALE).unwrap();
        // Conv factors may come flattened ([out, in·kh·kw]); the patch reshapes them.
        assert_eq!(shape[0], reference.shape[0], "{key}");
        assert_eq!(delta.len(), reference.f32().len(), "{key}");
        let err = max_abs_diff(&delta, &reference.f32());
        assert!(err <= 1e-6, "{lora} {key}: max abs error {err:e}");
        worst = worst.max(err);
    }
    println!("{lora}: {} modules, worst {worst:e}", file.modules.len());
}

#[test]
fn peft_lora_reproduces_diffusers_deltas() {
    check(
        "sdxl/lora",
        "sdxl_lora_peft.safetensors",
        "fused_deltas_peft.safetensors",
    );
}

#[test]
fn kohya_lora_follows_sd_scripts_alpha_convention() {
    check(
        "sdxl/lora",
        "sdxl_lora_kohya.safetensors",
        "fused_deltas_kohya_sdscripts-equivalent.safetensors",
    );
    check(
        "sdxl/lora",
        "sdxl_lora_kohya_sdscripts-equivalent.safetensors",
        "fused_deltas_kohya_sdscripts-equivalent.safetensors",
    );
}

#[test]
fn lycoris_locon_loha_and_lokr_reproduce_lycoris_deltas() {
    // Linear, 3×3 and 1×1 conv modules; LoCon (plain LoRA factors, also on convs); LoHa with
    // and without Tucker cores; LoKr with a low-rank and a whole second factor, and with both
    // factors whole (scale 1).
    for name in [
        "sdxl_locon",
        "sdxl_loha",
        "sdxl_loha_tucker",
        "sdxl_lokr",
        "sdxl_lokr_full",
    ] {
        check(
            "sdxl/lycoris",
            &format!("{name}.safetensors"),
            &format!("fused_deltas_{name}.safetensors"),
        );
    }
}

/// Two LoRAs on one network: each weight becomes W + ΔW₁ + ΔW₂ (convs reshaped, linears in
/// burn's transposed layout), and restoring gives W back bit for bit.
#[test]
fn stacked_loras_add_their_deltas_and_come_off() {
    use burn::module::{Module, ModuleVisitor, Param, ParamId};
    use burn::prelude::*;
    use common::{B, values};
    use hanga::models::unet_sdxl::{UNet, UNetConfig};
    use hanga::weights::{LoraComponent, LoraPatch, SafetensorsFile, TensorStore};
    use std::collections::HashMap;

    /// Every float parameter's values, by id, in PyTorch's layout.
    struct Values(HashMap<ParamId, Vec<f32>>);
    impl ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            let tensor = if D == 2 { tensor.transpose() } else { tensor };
            self.0.insert(param.id, values(tensor));
        }
    }
    let snapshot = |unet: &UNet<B>| {
        let mut v = Values(HashMap::new());
        unet.visit(&mut v);
        v.0
    };

    let dir = fixtures().join("sdxl/diffusers/unet");
    let store = TensorStore::from_file_prefix(
        &SafetensorsFile::open(&dir.join("diffusion_pytorch_model.safetensors")).unwrap(),
        "",
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let pooled_dim = config["projection_class_embeddings_input_dim"]
        .as_u64()
        .unwrap()
        - 6 * config["addition_time_embed_dim"].as_u64().unwrap();
    let cfg = UNetConfig::detect(&store, &config, pooled_dim as usize).unwrap();
    let unet = UNet::<B>::load(&store, &cfg, &Default::default()).unwrap();
    let params = store.loaded_params();
    let before = snapshot(&unet);

    let lycoris = fixtures().join("sdxl/lycoris");
    let loha = LoraFile::open(&lycoris.join("sdxl_loha.safetensors")).unwrap();
    let lokr = LoraFile::open(&lycoris.join("sdxl_lokr.safetensors")).unwrap();
    let (loha_weight, lokr_weight) = (LORA_SCALE, 0.5);
    let mut patch = LoraPatch::<B>::new(
        LoraComponent::Unet,
        &[(&loha, loha_weight), (&lokr, lokr_weight)],
        &params,
    )
    .unwrap();
    let unet = patch.apply(unet);
    let merged = snapshot(&unet);

    // The fixtures hold each file's deltas at LORA_SCALE; deltas are linear in the weight.
    let loha_deltas = load(&lycoris.join("fused_deltas_sdxl_loha.safetensors"));
    let lokr_deltas = load(&lycoris.join("fused_deltas_sdxl_lokr.safetensors"));
    let mut checked = 0;
    for (key, loha_delta) in &loha_deltas {
        let Some(name) = key.strip_prefix("unet.") else {
            continue;
        };
        let id = params[name].id;
        let lokr_delta = lokr_deltas[key].f32();
        let expected: Vec<f32> = before[&id]
            .iter()
            .zip(loha_delta.f32())
            .zip(lokr_delta)
            .map(|((w, a), b)| w + a + b * lokr_weight / LORA_SCALE)
            .collect();
        let err = max_abs_diff(&merged[&id], &expected);
        assert!(err <= 1e-6, "{name}: {err:e}");
        checked += 1;
    }
    assert_eq!(checked, 33, "every UNet module of the fixtures");

    let unet = patch.restore(unet);
    assert_eq!(
        snapshot(&unet),
        before,
        "restore puts the base weights back exactly"
    );
}

mod pipeline {
    use super::common::{B, fixtures, load, max_abs_diff, max_pixel_diff, repo, values};
    use hanga::pipelines::{Flow, GenerationParams, SdxlPipeline};
    use hanga::registry::Manifest;
    use hanga::sampling::{SamplerKind, ScheduleKind};
    use hanga::text::LongPrompt;
    use hanga::weights::LoraFile;

    fn case(
        run: &str,
    ) -> (
        GenerationParams,
        std::collections::HashMap<String, super::common::Recorded>,
        image::RgbImage,
    ) {
        let dir = fixtures().join(format!("sdxl/lora/cases/sdxl_lora_euler_64x64_{run}"));
        let text = std::fs::read_to_string(dir.join("case.json"))
            .unwrap()
            .replace("-Infinity", "null");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let params = GenerationParams {
            prompt: json["prompt"].as_str().unwrap().into(),
            negative_prompt: json["negative_prompt"].as_str().map(Into::into),
            width: 64,
            height: 64,
            steps: json["num_inference_steps"].as_u64().unwrap() as usize,
            guidance_scale: json["guidance_scale"].as_f64().unwrap() as f32,
            sampler: SamplerKind::Euler,
            scheduler: ScheduleKind::Normal,
            seed: json["seed"].as_u64().unwrap(),
            long_prompt: LongPrompt::Chunk,
            init_image: None,
        };
        let png = image::open(dir.join("image.png")).unwrap().to_rgb8();
        (params, load(&dir.join("case.safetensors")), png)
    }

    fn lora(file: &str) -> LoraFile {
        LoraFile::open(&fixtures().join("sdxl/lora").join(file)).unwrap()
    }

    #[test]
    fn loras_reproduce_the_reference_images_and_come_off_cleanly() {
        let manifest =
            Manifest::from_file(&repo().join("model_manifests/sdxl-tiny-demo.toml")).unwrap();
        let mut pipeline = SdxlPipeline::<B>::load(&manifest, &Default::default()).unwrap();
        let (base_params, _, base_png) = case("base");
        let base = pipeline
            .generate(&base_params, &mut |_| Flow::Continue)
            .unwrap();
        assert!(max_pixel_diff(&base, &base_png) <= 2);

        for (file, run) in [
            ("sdxl_lora_peft.safetensors", "peft"),
            ("sdxl_lora_kohya.safetensors", "kohya_sdscripts-equivalent"),
            (
                "sdxl_lora_kohya_sdscripts-equivalent.safetensors",
                "kohya_sdscripts-equivalent",
            ),
        ] {
            let (params, tensors, png) = case(run);
            let file = lora(file);
            let merged = pipeline.merge_loras(&[(&file, 0.8)]).unwrap();
            let image = pipeline
                .generate(&params, &mut |p| {
                    let key = format!("latents.step{}", p.step - 1);
                    let err = max_abs_diff(&values(p.latents.clone()), &tensors[&key].f32());
                    assert!(err <= 1e-3, "{run} {key}: {err:e}");
                    Flow::Continue
                })
                .unwrap();
            pipeline.unmerge_loras(merged);
            let diff = max_pixel_diff(&image, &png);
            assert!(diff <= 2, "{run}: image differs by {diff}/255");
            assert_ne!(image, base, "{run}: the LoRA changes the image");
            // Nothing stays merged: the next plain run is the base image, bit for bit.
            assert_eq!(
                pipeline
                    .generate(&base_params, &mut |_| Flow::Continue)
                    .unwrap(),
                base,
                "{run} left weights behind"
            );
        }

        let peft = lora("sdxl_lora_peft.safetensors");
        let merged = pipeline.merge_loras(&[(&peft, 0.0)]).unwrap();
        let zero = pipeline
            .generate(&base_params, &mut |_| Flow::Continue)
            .unwrap();
        pipeline.unmerge_loras(merged);
        assert_eq!(zero, base, "weight 0 gives the base image exactly");
    }
}

/// A LoRA that patches a weight kept in fp8 (see `models::linear`) is refused with a reason,
/// not merged into a float copy that the network never reads.
#[test]
fn loras_refuse_weights_kept_in_fp8() {
    use hanga::weights::{LoadedParam, LoraPatch};
    let file = LoraFile::open(&fixtures().join("sdxl/lora/sdxl_lora_peft.safetensors")).unwrap();
    let module = &file.modules[0];
    let params = |fp8: bool| {
        let (_, shape) = module.delta(1.0).unwrap();
        let param = LoadedParam {
            id: burn::module::ParamId::new(),
            shape,
            fp8,
        };
        [(format!("{}.weight", module.module), param)].into()
    };
    let loras = [(&file, 1.0)];
    let only_first = |p| LoraPatch::<common::B>::new(module.component, &loras[..], &p);
    // The file's other modules are missing from a one-weight map either way; only the
    // reason differs.
    let float = only_first(params(false)).err().unwrap().to_string();
    assert!(!float.contains("fp8"), "{float}");
    let fp8 = only_first(params(true)).err().unwrap().to_string();
    assert!(fp8.contains("fp8"), "{fp8}");
}
