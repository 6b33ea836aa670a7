//! ComfyUI's SDXL numbers, stage by stage, against runs of ComfyUI's own node classes on the
//! tiny checkpoint (fixtures: ../shared/reference/comfyui, README "Suggested tolerances"):
//! tokens exact; cond / pooled 1e-5; sigmas and noise 1e-6; every step's x and x₀ 1e-4 of
//! max |x|; image within 2/255 of ComfyUI's PNG.

mod common;

use std::collections::HashMap;

use burn::prelude::*;
use common::comfyui::{case_dir, case_json, flux_cases, sdxl_cases};
use common::{B, Recorded, assert_close, fixtures, load, repo, values};
use std::sync::Arc;

use hanga::graph::folders::{ComfyFolders, FolderHost, GraphEvent};
use hanga::graph::ksampler::{
    CondEntry, KSamplerSettings, ksample, ksampler_node_sigmas, prepare_noise,
};
use hanga::graph::models::GraphModel;
use hanga::graph::nodes::Host;
use hanga::pipelines::{Flow, SdxlPipeline};
use hanga::registry::Manifest;
use hanga::registry::{LoraLibrary, Registry};
use hanga::sampling::comfy::{BrownianNoise, KSamplerName, ModelSampling, SchedulerName};
use hanga::text::ClipTokenizer;
use hanga::weights::LoraFile;

fn pipeline() -> SdxlPipeline<B> {
    let manifest =
        Manifest::from_file(&repo().join("model_manifests/sdxl-tiny-demo.toml")).unwrap();
    SdxlPipeline::load(&manifest, &Default::default()).unwrap()
}

/// ComfyUI's `image.uint8`: `clip(255·clamp((x+1)/2, 0, 1))` truncated, [B, H, W, 3].
fn saved_pixels(decoded: Tensor<B, 4>) -> Vec<u8> {
    values(hanga::graph::vae_output_to_image(decoded))
        .into_iter()
        .map(hanga::graph::to_uint8)
        .collect()
}

#[test]
fn every_scheduler_gives_comfyuis_sigmas() {
    let ms = ModelSampling::sdxl();
    let table = load(&fixtures().join("comfyui/schedules.safetensors"));
    assert_close(
        "model_sampling.sigmas",
        ms.sigmas(),
        &table["model_sampling.sigmas"].f32(),
        1e-6,
    );
    let mut checked = 0;
    for (key, expected) in &table {
        let Some(rest) = key.strip_prefix("sigmas.") else {
            continue;
        };
        // sigmas.<scheduler>.steps<N>.denoise<d>[.discard_penultimate]
        let parts: Vec<&str> = rest.split('.').collect();
        let scheduler = SchedulerName::parse(parts[0]).unwrap();
        let steps: usize = parts[1].strip_prefix("steps").unwrap().parse().unwrap();
        let denoise: f64 = format!("{}.{}", parts[2].strip_prefix("denoise").unwrap(), parts[3])
            .parse()
            .unwrap();
        let discard = parts.get(4) == Some(&"discard_penultimate");
        let got = hanga::sampling::comfy::ksampler_sigmas(&ms, scheduler, steps, denoise, discard)
            .unwrap();
        assert_eq!(got.len(), expected.values.len(), "{key}: number of sigmas");
        assert_close(key, &got, &expected.f32(), 2e-6);
        checked += 1;
    }
    assert!(checked > 700, "only {checked} schedules in the table");
}

struct Case {
    json: serde_json::Value,
    t: HashMap<String, Recorded>,
}

impl Case {
    fn load(id: &'static str) -> Self {
        Self {
            json: case_json(id),
            t: load(&case_dir(id).join("case.safetensors")),
        }
    }

    /// `prepare_noise` for the case's seed and latent against the record.
    fn check_noise(&self, id: &str, latent: &Tensor<B, 4>) {
        let noise = prepare_noise(self.ksampler().seed, latent);
        assert_close(
            &format!("{id} noise"),
            &values(noise),
            &self.t["noise"].f32(),
            1e-6,
        );
    }

    /// Each step's x and x₀ as the sampler reported them (k-diffusion: x entering step i;
    /// UniPC: its VP x after step i), then the result, against the record; returns the
    /// result's error.
    fn check_steps(
        &self,
        id: &str,
        seen: &[(Vec<f32>, Vec<f32>)],
        out: Tensor<B, 4>,
        tol: f32,
    ) -> f32 {
        let t = &self.t;
        assert_eq!(seen.len(), self.ksampler().steps, "{id}: callbacks");
        for (i, (x, denoised)) in seen.iter().enumerate() {
            let entering = if t.contains_key("callback.0.x") {
                format!("callback.{i}.x")
            } else if i == 0 {
                "x.init".to_string()
            } else {
                format!("steps.{}", i - 1)
            };
            assert_close(&format!("{id} {entering}"), x, &t[&entering].f32(), tol);
            let key = format!("steps.{i}.denoised");
            assert_close(&format!("{id} {key}"), denoised, &t[&key].f32(), tol);
        }
        assert_close(
            &format!("{id} latent.final"),
            &values(out),
            &t["latent.final"].f32(),
            tol,
        )
    }

    /// SaveImage's pixels of the VAE's output against ComfyUI's, within 2/255.
    fn check_image(&self, id: &str, decoded: Tensor<B, 4>, latent_error: f32) {
        let pixels = saved_pixels(decoded);
        let expected: Vec<u8> = self.t["image.uint8"]
            .values
            .iter()
            .map(|&v| v as u8)
            .collect();
        let worst = pixels
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 2, "{id}: image differs by {worst}/255");
        eprintln!("{id}: latent.final max error {latent_error:e}, image within {worst}/255");
    }

    fn setting(&self, name: &str) -> &serde_json::Value {
        &self.json["settings"][name]
    }

    fn ksampler(&self) -> KSamplerSettings {
        KSamplerSettings {
            seed: self.setting("seed").as_u64().unwrap(),
            steps: self.setting("steps").as_u64().unwrap() as usize,
            cfg: self.setting("cfg").as_f64().unwrap(),
            sampler: KSamplerName::parse(self.setting("sampler_name").as_str().unwrap()).unwrap(),
            scheduler: SchedulerName::parse(self.setting("scheduler").as_str().unwrap()).unwrap(),
            denoise: self.setting("denoise").as_f64().unwrap(),
        }
    }
}

/// torchsde's BrownianTree as ComfyUI queries it: every draw of the SDE samplers' runs.
#[test]
fn brownian_tree_noise_matches_torchsde() {
    for id in [
        "dpmpp_2m_sde_karras_64x64_neg-empty",
        "dpmpp_sde_exponential_64x64",
    ] {
        let case = Case::load(id);
        let sigmas = case.t["sigmas"].f32();
        let sigma_min = sigmas
            .iter()
            .copied()
            .filter(|&s| s > 0.0)
            .fold(f32::MAX, f32::min);
        let sigma_max = sigmas.iter().copied().fold(0.0, f32::max);
        let numel = case.t["noise"].values.len();
        let seed = case.setting("seed").as_u64().unwrap();
        let mut noise = BrownianNoise::new(sigma_min, sigma_max, numel, seed);
        let draws = case.json["noise_draws"].as_array().unwrap();
        assert!(!draws.is_empty());
        for (k, draw) in draws.iter().enumerate() {
            let got = noise.sample(
                draw["sigma"].as_f64().unwrap() as f32,
                draw["sigma_next"].as_f64().unwrap() as f32,
            );
            assert_close(
                &format!("{id} noise_draw.{k}"),
                &got,
                &case.t[&format!("noise_draw.{k}")].f32(),
                1e-5,
            );
        }
    }
}

#[test]
fn comfyui_tokenization_of_every_prompt() {
    let tokenizer =
        ClipTokenizer::from_file(&repo().join("assets/demo/tokenizer/tokenizer.json"), None)
            .unwrap();
    for &id in sdxl_cases() {
        let case = Case::load(id);
        for (side, text) in [("positive", "prompt"), ("negative", "negative")] {
            let text = case.setting(text).as_str().unwrap();
            for (encoder, pad) in [("l", None), ("g", Some(0))] {
                let chunks = tokenizer.comfy_chunks(text, pad, &|_| None).unwrap();
                let ids: Vec<u32> = chunks.iter().flat_map(|c| c.ids.clone()).collect();
                let weights: Vec<f32> = chunks.iter().flat_map(|c| c.weights.clone()).collect();
                let key = format!("tokens.{side}.{encoder}");
                assert_eq!(ids, case.t[&format!("{key}.ids")].ids(), "{id} {key} ids");
                assert_close(
                    &format!("{id} {key}.weights"),
                    &weights,
                    &case.t[&format!("{key}.weights")].f32(),
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn sdxl_ksampler_cases_match_comfyui_step_by_step() {
    let base = pipeline();
    let ms = ModelSampling::sdxl();
    for &id in sdxl_cases() {
        let case = Case::load(id);
        let t = &case.t;
        let settings = case.ksampler();
        let pipeline = match case.setting("lora").as_object() {
            None => base.clone(),
            Some(lora) => {
                let file = LoraFile::open(
                    &fixtures()
                        .join("sdxl/lora")
                        .join(lora["lora_name"].as_str().unwrap()),
                )
                .unwrap();
                let (sm, sc) = (
                    lora["strength_model"].as_f64().unwrap() as f32,
                    lora["strength_clip"].as_f64().unwrap() as f32,
                );
                base.with_loras(&[(&file, sm)], &[(&file, sc)]).unwrap()
            }
        };

        let encode = |text: &str, side: &str| {
            let (context, pooled) = pipeline
                .comfy_clip(&Default::default())
                .encode(text, text, -2)
                .unwrap();
            assert_close(
                &format!("{id} cond.{side}"),
                &values(context.clone()),
                &t[&format!("cond.{side}")].f32(),
                1e-5,
            );
            assert_close(
                &format!("{id} cond.{side}.pooled_output"),
                &values(pooled.clone()),
                &t[&format!("cond.{side}.pooled_output")].f32(),
                1e-5,
            );
            vec![CondEntry::new(context, Some(pooled))]
        };
        let positive = encode(case.setting("prompt").as_str().unwrap(), "positive");
        let negative = encode(case.setting("negative").as_str().unwrap(), "negative");

        let sigmas = ksampler_node_sigmas(&ms, &settings).unwrap();
        assert_close(&format!("{id} sigmas"), &sigmas, &t["sigmas"].f32(), 1e-6);

        let latent: Tensor<B, 4> = match case.json["settings"]["img2img"].is_object() {
            false => t["latent_image"].tensor(),
            true => {
                // LoadImage gives uint8/255 [1, H, W, 3]; VAEEncode takes 2x − 1, channels first.
                let image: Tensor<B, 4> = t["input_image"].tensor();
                let encoded = pipeline
                    .vae()
                    .1
                    .forward(image.permute([0, 3, 1, 2]) * 2.0 - 1.0);
                assert_close(
                    &format!("{id} VAEEncode"),
                    &values(encoded.clone()),
                    &t["latent_image"].f32(),
                    1e-4,
                );
                encoded
            }
        };
        case.check_noise(id, &latent);

        let mut seen = Vec::new();
        let model = GraphModel::Sdxl(Arc::new(pipeline.clone()));
        let out = ksample(
            &model,
            &ms,
            &settings,
            &positive,
            &negative,
            latent,
            &mut |step| {
                seen.push((values(step.x.clone()), values(step.denoised.clone())));
                Flow::Continue
            },
        )
        .unwrap();
        let err = case.check_steps(id, &seen, out.clone(), 1e-4);
        case.check_image(id, pipeline.vae().0.forward(out), err);
    }
}

/// ComfyUI's UNETLoader / DualCLIPLoader / CLIPLoader / VAELoader graphs on the tiny Flux,
/// schnell and Chroma files (README "Flux-family determinism and tolerances"): cond and
/// pooled 2e-5, sigmas and noise 1e-6, every step 1e-5 of max |x|, image within 2/255.
#[test]
fn flux_family_cases_match_comfyui_step_by_step() {
    let registry =
        Registry::scan(&[repo().join("model_manifests"), fixtures().join("flux")]).unwrap();
    let folders = ComfyFolders::new(
        &common::temp_dir("comfyui-flux-stages"),
        &registry,
        &LoraLibrary::scan(&[]),
    )
    .unwrap();
    let mut ignore = |_: GraphEvent<B>| Flow::Continue;
    let mut host = FolderHost {
        folders: &folders,
        device: Default::default(),
        on_event: &mut ignore,
    };
    for &id in flux_cases() {
        let case = Case::load(id);
        let t = &case.t;
        let graph = &case.json["workflow_api"];
        let settings = case.ksampler();
        let (model, mut sampling) = host
            .diffusion_model(graph["12"]["inputs"]["unet_name"].as_str().unwrap())
            .unwrap();
        if let Some(ms) = case.setting("model_sampling_flux").as_object() {
            let f = |k: &str| ms[k].as_f64().unwrap();
            sampling = ModelSampling::flux(ModelSampling::flux_mu(
                f("max_shift"),
                f("base_shift"),
                f("width"),
                f("height"),
            ));
        }
        let loader = &graph["11"]["inputs"];
        let names: Vec<String> = ["clip_name", "clip_name1", "clip_name2"]
            .iter()
            .filter_map(|k| loader[*k].as_str().map(str::to_owned))
            .collect();
        let clip = host
            .text_encoders(&names, loader["type"].as_str().unwrap())
            .unwrap();
        let encode = |text: &str, side: &str| {
            let entry = clip.encode(text).unwrap();
            assert_close(
                &format!("{id} cond.{side}"),
                &values(entry.context.clone()),
                &t[&format!("cond.{side}")].f32(),
                2e-5,
            );
            if let Some(pooled) = &entry.pooled {
                assert_close(
                    &format!("{id} cond.{side}.pooled_output"),
                    &values(pooled.clone()),
                    &t[&format!("cond.{side}.pooled_output")].f32(),
                    2e-5,
                );
            }
            entry
        };
        let mut positive = encode(case.setting("prompt").as_str().unwrap(), "positive");
        positive.guidance = case.setting("guidance").as_f64().map(|g| g as f32);
        let negative = match case.setting("negative").as_str() {
            Some(text) => encode(text, "negative"),
            // ConditioningZeroOut(positive).
            None => CondEntry {
                context: positive.context.zeros_like(),
                pooled: positive.pooled.as_ref().map(|p| p.zeros_like()),
                ..positive.clone()
            },
        };
        let sigmas = ksampler_node_sigmas(&sampling, &settings).unwrap();
        assert_close(&format!("{id} sigmas"), &sigmas, &t["sigmas"].f32(), 1e-6);
        let latent: Tensor<B, 4> = t["latent_image"].tensor();
        case.check_noise(id, &latent);

        let mut seen = Vec::new();
        let out = ksample(
            &model,
            &sampling,
            &settings,
            &[positive],
            &[negative],
            latent,
            &mut |step| {
                seen.push((values(step.x.clone()), values(step.denoised.clone())));
                Flow::Continue
            },
        )
        .unwrap();
        let err = case.check_steps(id, &seen, out.clone(), 1e-5);
        let vae = host
            .vae(graph["10"]["inputs"]["vae_name"].as_str().unwrap())
            .unwrap();
        case.check_image(id, vae.decode_raw(out), err);
    }
}
