//! ComfyUI API-format prompts through validation and the executor: each recorded SDXL case's
//! `workflow_api` gives ComfyUI's PNG (within 2/255, with the same `prompt` text chunk), a
//! second run reuses every cached node, and bad graphs get ComfyUI's errors.

mod common;

use common::comfyui::{CASES, case_json, comfyui_image, recorded_images};
use common::{B, fixtures, repo, temp_dir};
use hanga::graph::definitions::node_defs;
use hanga::graph::execute::Executor;
use hanga::graph::folders::{ComfyFolders, FolderHost, GraphEvent};
use hanga::graph::nodes::IMPLEMENTED;
use hanga::graph::validate::validate;
use hanga::pipelines::Flow;
use hanga::registry::{LoraLibrary, Registry};
use serde_json::{Map, Value, json};

fn folders(name: &str) -> ComfyFolders {
    folders_with(name, None)
}

/// The manifests' models (and a models folder's files), the SDXL fixture LoRAs, and
/// ComfyUI's folders in a fresh temp dir.
fn folders_with(name: &str, models_dir: Option<&std::path::Path>) -> ComfyFolders {
    let root = temp_dir(name);
    let mut registry = Registry::scan(&[
        repo().join("model_manifests"),
        fixtures().join("flux"),
        fixtures().join("zimage"),
    ])
    .unwrap();
    if let Some(dir) = models_dir {
        registry.add_models_dir(dir).unwrap();
    }
    let loras = LoraLibrary::scan(&[fixtures().join("sdxl/lora")]);
    ComfyFolders::new(&root, &registry, &loras).unwrap()
}

fn png_text(bytes: &[u8], key: &str) -> Option<String> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == key)
        .map(|c| c.text.clone())
}

#[test]
fn recorded_workflows_give_comfyuis_images_and_cache_between_prompts() {
    let folders = folders("graphs");
    let input = fixtures().join("comfyui/img2img_dpmpp_2m_sgm-uniform_64x64_d0.6/input.png");
    std::fs::copy(&input, folders.dir("input").unwrap().join("input.png")).unwrap();
    let defs = node_defs(IMPLEMENTED, &folders.combo_lists());
    let mut executor = Executor::<B>::default();
    for id in CASES.iter().copied() {
        let case = case_json(id);
        let prompt = case["workflow_api"].as_object().unwrap().clone();
        let accepted = validate(&prompt, &defs, None).unwrap();
        assert_eq!(accepted.outputs, vec!["9".to_string()]);
        let mut steps = 0;
        let mut on_event = |event: GraphEvent<B>| {
            if let GraphEvent::Progress { value, max, .. } = event {
                assert!(value <= max);
                steps += 1;
            }
            Flow::Continue
        };
        let mut host = FolderHost {
            folders: &folders,
            device: Default::default(),
            on_event: &mut on_event,
        };
        let run = executor.run(&prompt, &accepted.outputs, &mut host).unwrap();
        assert_eq!(
            steps,
            case["settings"]["steps"].as_u64().unwrap(),
            "{id}: progress"
        );
        let images = run.outputs["9"]["images"].as_array().unwrap().clone();
        let expected = recorded_images(&case);
        assert_eq!(images.len(), expected.len(), "{id}: images");
        for (saved, recorded) in images.iter().zip(expected) {
            assert_eq!(saved["type"], "output");
            let path = folders
                .dir("output")
                .unwrap()
                .join(saved["filename"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap();
            let ours = image::load_from_memory(&bytes).unwrap().to_rgb8();
            let theirs = comfyui_image(id, &recorded);
            let worst = common::max_pixel_diff(&ours, &theirs);
            assert!(
                worst <= 2,
                "{id}: {} differs by {worst}/255",
                path.display()
            );
            let prompt_chunk: Value =
                serde_json::from_str(&png_text(&bytes, "prompt").unwrap()).unwrap();
            assert_eq!(prompt_chunk, case["workflow_api"], "{id}: prompt chunk");
        }
        // The first case names ComfyUI_00001_.png as ComfyUI did on an empty folder.
        if id == CASES[0] {
            assert_eq!(images[0]["filename"], "ComfyUI_00001_.png");
        }

        // The same prompt again: every node is cached, nothing is sampled or written.
        let mut events = 0;
        let mut on_event = |event: GraphEvent<B>| {
            if matches!(
                event,
                GraphEvent::Progress { .. } | GraphEvent::Executing(_)
            ) {
                events += 1;
            }
            Flow::Continue
        };
        let mut host = FolderHost {
            folders: &folders,
            device: Default::default(),
            on_event: &mut on_event,
        };
        let again = executor.run(&prompt, &accepted.outputs, &mut host).unwrap();
        assert_eq!(again.cached.len(), prompt.len(), "{id}: all cached");
        assert_eq!(events, 0, "{id}: nothing ran");
        assert_eq!(again.outputs["9"]["images"], json!(images));
    }
    // As ComfyUI's cache, only what the last prompt could reuse was kept: the first case's
    // nodes all run again.
    let first = case_json(CASES[0])["workflow_api"]
        .as_object()
        .unwrap()
        .clone();
    let mut ignore = |_: GraphEvent<B>| Flow::Continue;
    let mut host = FolderHost {
        folders: &folders,
        device: Default::default(),
        on_event: &mut ignore,
    };
    let rerun = executor.run(&first, &["9".to_string()], &mut host).unwrap();
    assert!(rerun.cached.is_empty(), "{:?}", rerun.cached);
}

fn base_prompt() -> Map<String, Value> {
    case_json("euler_normal_64x64")["workflow_api"]
        .as_object()
        .unwrap()
        .clone()
}

fn refused(prompt: &Map<String, Value>) -> (Value, Value) {
    let folders = folders("graph-errors");
    let defs = node_defs(IMPLEMENTED, &folders.combo_lists());
    let rejection = validate(prompt, &defs, None).unwrap_err();
    (rejection.error, rejection.node_errors)
}

#[test]
fn bad_graphs_get_comfyuis_errors() {
    let mut p = base_prompt();
    p["3"]["class_type"] = json!("NoSuchNode");
    let (error, node_errors) = refused(&p);
    assert_eq!(error["type"], "invalid_prompt");
    assert_eq!(
        error["message"],
        "Cannot execute because node NoSuchNode does not exist."
    );
    assert_eq!(error["details"], "Node ID '#3'");
    assert_eq!(node_errors, json!({}));

    let mut p = base_prompt();
    p["3"].as_object_mut().unwrap().remove("class_type");
    assert_eq!(refused(&p).0["type"], "invalid_prompt");

    let mut p = base_prompt();
    p.remove("9");
    assert_eq!(refused(&p).0["type"], "prompt_no_outputs");

    let mut p = base_prompt();
    p["3"]["inputs"]["steps"] = json!(0);
    p["3"]["inputs"]["cfg"] = json!("lots");
    p["3"]["inputs"]["sampler_name"] = json!("euler_fast");
    p["3"]["inputs"].as_object_mut().unwrap().remove("seed");
    p["4"]["inputs"]["ckpt_name"] = json!("nope.safetensors");
    let (error, node_errors) = refused(&p);
    assert_eq!(error["type"], "prompt_outputs_failed_validation");
    assert_eq!(error["message"], "Prompt outputs failed validation");
    let ksampler = &node_errors["3"];
    assert_eq!(ksampler["class_type"], "KSampler");
    assert_eq!(ksampler["dependent_outputs"], json!(["9"]));
    let kinds: Vec<&str> = ksampler["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "required_input_missing",
            "value_smaller_than_min",
            "invalid_input_type",
            "value_not_in_list"
        ]
    );
    let steps = &ksampler["errors"][1];
    assert_eq!(steps["message"], "Value 0 smaller than min of 1");
    assert_eq!(steps["details"], "steps");
    assert_eq!(steps["extra_info"]["input_config"][0], "INT");
    let ckpt = &node_errors["4"]["errors"][0];
    assert_eq!(ckpt["type"], "value_not_in_list");
    assert_eq!(
        ckpt["details"],
        "ckpt_name: 'nope.safetensors' not in ['sd_xl_tiny.safetensors']"
    );
    // Nodes invalid only through an upstream error carry no entry of their own.
    assert!(node_errors.get("8").is_none());

    let mut p = base_prompt();
    p["8"]["inputs"]["samples"] = json!(["4", 0]);
    let (_, node_errors) = refused(&p);
    let mismatch = &node_errors["8"]["errors"][0];
    assert_eq!(mismatch["type"], "return_type_mismatch");
    assert_eq!(
        mismatch["details"],
        "samples, received_type(MODEL) mismatch input_type(LATENT)"
    );

    let mut p = base_prompt();
    p["8"]["inputs"]["samples"] = json!(["3"]);
    assert_eq!(refused(&p).1["8"]["errors"][0]["type"], "bad_linked_input");

    // A cycle: the sampler's latent comes from its own decoder's re-encoding.
    let mut p = base_prompt();
    p.insert(
        "12".into(),
        json!({"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}}),
    );
    p["3"]["inputs"]["latent_image"] = json!(["12", 0]);
    let (error, node_errors) = refused(&p);
    assert_eq!(error["type"], "prompt_outputs_failed_validation");
    let cycle: Vec<&Value> = node_errors
        .as_object()
        .unwrap()
        .values()
        .flat_map(|n| n["errors"].as_array().unwrap())
        .filter(|e| e["type"] == "dependency_cycle")
        .collect();
    assert!(!cycle.is_empty(), "{node_errors}");
}

/// Runs `prompt` and returns its SaveImage ("9") PNGs.
fn run_images(
    executor: &mut Executor<B>,
    folders: &ComfyFolders,
    prompt: &Map<String, Value>,
) -> Vec<image::RgbImage> {
    let defs = node_defs(IMPLEMENTED, &folders.combo_lists());
    let accepted = validate(prompt, &defs, None).unwrap();
    let mut ignore = |_: GraphEvent<B>| Flow::Continue;
    let mut host = FolderHost {
        folders,
        device: Default::default(),
        on_event: &mut ignore,
    };
    let run = executor.run(prompt, &accepted.outputs, &mut host).unwrap();
    run.outputs["9"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|saved| {
            let path = folders
                .dir("output")
                .unwrap()
                .join(saved["filename"].as_str().unwrap());
            image::open(path).unwrap().to_rgb8()
        })
        .collect()
}

/// A recorded graph with its KSampler ("3") replaced by SamplerCustomAdvanced ("24"): the
/// same seed, euler, the KSampler's steps on `scheduler`, and the guider `guider` builds from
/// the KSampler's inputs. Returns the graph and those inputs.
fn with_custom_sampler(
    case: &str,
    scheduler: &str,
    guider: impl Fn(&Value) -> Value,
) -> (Map<String, Value>, Value) {
    let mut p = case_json(case)["workflow_api"].as_object().unwrap().clone();
    let k = p.remove("3").unwrap()["inputs"].clone();
    let nodes = [
        (
            "20",
            json!({"class_type": "RandomNoise", "inputs": {"noise_seed": k["seed"]}}),
        ),
        ("21", guider(&k)),
        (
            "22",
            json!({"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}),
        ),
        (
            "23",
            json!({"class_type": "BasicScheduler", "inputs": {
            "model": k["model"], "scheduler": scheduler, "steps": k["steps"], "denoise": 1.0}}),
        ),
        (
            "24",
            json!({"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["20", 0], "guider": ["21", 0], "sampler": ["22", 0],
            "sigmas": ["23", 0], "latent_image": k["latent_image"]}}),
        ),
    ];
    for (id, node) in nodes {
        p.insert(id.into(), node);
    }
    p["8"]["inputs"]["samples"] = json!(["24", 0]);
    (p, k)
}

/// The custom-sampling nodes and KSamplerAdvanced against ComfyUI's KSampler images: by
/// ComfyUI's code these graphs compute what the recorded KSampler graphs compute
/// (`common_ksampler` is `CFGGuider.sample` over `KSampler.sigmas` with `prepare_noise`;
/// BasicScheduler is `calculate_sigmas` at denoise 1; BasicGuider at cfg 1 is KSampler with a
/// negative that is never evaluated), and a run split by KSamplerAdvanced at step 2 with the
/// leftover noise kept continues to the same image.
#[test]
fn custom_sampling_graphs_give_the_recorded_ksampler_images() {
    let folders = folders("graph-custom");
    let mut executor = Executor::<B>::default();

    // SDXL euler / normal through SamplerCustomAdvanced.
    let (mut p, k) = with_custom_sampler("euler_normal_64x64", "normal", |k| {
        json!({"class_type": "CFGGuider", "inputs": {
            "model": k["model"], "positive": k["positive"], "negative": k["negative"],
            "cfg": k["cfg"]}})
    });
    let theirs = comfyui_image("euler_normal_64x64", "image.png");
    let ours = run_images(&mut executor, &folders, &p);
    assert!(
        common::max_pixel_diff(&ours[0], &theirs) <= 2,
        "SamplerCustomAdvanced"
    );

    // The same through SamplerCustom (its own noise and CFG).
    p.insert(
        "25".into(),
        json!({"class_type": "SamplerCustom", "inputs": {
        "model": ["4", 0], "add_noise": true, "noise_seed": k["seed"], "cfg": k["cfg"],
        "positive": ["6", 0], "negative": ["7", 0], "sampler": ["22", 0], "sigmas": ["23", 0],
        "latent_image": ["5", 0]}}),
    );
    p["8"]["inputs"]["samples"] = json!(["25", 0]);
    let ours = run_images(&mut executor, &folders, &p);
    assert!(
        common::max_pixel_diff(&ours[0], &theirs) <= 2,
        "SamplerCustom"
    );

    // KSamplerAdvanced over all steps, then split at step 2: the first half keeps its
    // leftover noise, the second adds none.
    let mut p = case_json("euler_normal_64x64")["workflow_api"]
        .as_object()
        .unwrap()
        .clone();
    let advanced = |start: u64, end: u64, add: &str, leftover: &str, latent: Value| {
        json!({"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["4", 0], "add_noise": add, "noise_seed": k["seed"], "steps": k["steps"],
            "cfg": k["cfg"], "sampler_name": "euler", "scheduler": "normal",
            "positive": ["6", 0], "negative": ["7", 0], "latent_image": latent,
            "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": leftover}})
    };
    p["3"] = advanced(0, 10000, "enable", "disable", json!(["5", 0]));
    let ours = run_images(&mut executor, &folders, &p);
    assert!(
        common::max_pixel_diff(&ours[0], &theirs) <= 2,
        "KSamplerAdvanced"
    );
    p.insert(
        "30".into(),
        advanced(0, 2, "enable", "enable", json!(["5", 0])),
    );
    p["3"] = advanced(2, 10000, "disable", "disable", json!(["30", 0]));
    let ours = run_images(&mut executor, &folders, &p);
    assert!(
        common::max_pixel_diff(&ours[0], &theirs) <= 2,
        "KSamplerAdvanced in two halves"
    );

    // FLUX.1 dev through BasicGuider (the recorded graph's negative is never evaluated).
    let (p, _) = with_custom_sampler("flux-dev_euler_simple_64x64", "simple", |k| {
        json!({"class_type": "BasicGuider", "inputs": {
            "model": k["model"], "conditioning": k["positive"]}})
    });
    let ours = run_images(&mut executor, &folders, &p);
    let theirs = comfyui_image("flux-dev_euler_simple_64x64", "image.png");
    assert!(
        common::max_pixel_diff(&ours[0], &theirs) <= 2,
        "Flux SamplerCustomAdvanced"
    );
}

/// LoraLoaderModelOnly is LoraLoader with the text encoders left alone, and
/// ModelSamplingAuraFlow(shift 1) is schnell's own model sampling.
#[test]
fn model_only_lora_and_auraflow_shift_agree_with_their_equivalents() {
    let folders = folders("graph-model-patches");
    let mut executor = Executor::<B>::default();
    let mut p = case_json("lora_euler_normal_64x64_s0.8")["workflow_api"]
        .as_object()
        .unwrap()
        .clone();
    p["10"]["inputs"]["strength_clip"] = json!(0.0);
    let both = run_images(&mut executor, &folders, &p);
    p.insert(
        "11".into(),
        json!({"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["4", 0], "lora_name": p["10"]["inputs"]["lora_name"],
            "strength_model": p["10"]["inputs"]["strength_model"]}}),
    );
    p["3"]["inputs"]["model"] = json!(["11", 0]);
    for node in ["6", "7"] {
        p[node]["inputs"]["clip"] = json!(["4", 1]);
    }
    let model_only = run_images(&mut executor, &folders, &p);
    assert_eq!(common::max_pixel_diff(&both[0], &model_only[0]), 0);
    // The LoRA does change the image.
    assert!(
        common::max_pixel_diff(&both[0], &comfyui_image("euler_normal_64x64", "image.png")) > 2
    );

    let mut p = case_json("flux-schnell_euler_simple_64x64")["workflow_api"]
        .as_object()
        .unwrap()
        .clone();
    let model = p["3"]["inputs"]["model"].clone();
    p.insert(
        "40".into(),
        json!({"class_type": "ModelSamplingAuraFlow", "inputs": {"model": model, "shift": 1.0}}),
    );
    p["3"]["inputs"]["model"] = json!(["40", 0]);
    let ours = run_images(&mut executor, &folders, &p);
    let theirs = comfyui_image("flux-schnell_euler_simple_64x64", "image.png");
    assert!(common::max_pixel_diff(&ours[0], &theirs) <= 2);
    // A larger shift moves the schedule, and the image with it.
    p["40"]["inputs"]["shift"] = json!(3.0);
    let shifted = run_images(&mut executor, &folders, &p);
    assert!(common::max_pixel_diff(&shifted[0], &theirs) > 2);
}

/// Z-Image Turbo graphs as ComfyUI's template builds them (UNETLoader, CLIPLoader lumina2,
/// ModelSamplingAuraFlow shift 3, ConditioningZeroOut, EmptySD3LatentImage, KSampler at cfg
/// 1). ComfyUI records no Z-Image run (its reference commit predates Z-Image), so: with
/// euler / simple the graph computes what diffusers' ZImagePipeline computes (the same shifted
/// σ, noise, chat-template Qwen3 states and model time 1 − σ; ComfyUI truncates to 8 bits
/// where diffusers rounds), which its recorded image checks; and ComfyUI's other samplers
/// (res_multistep, the template's) run over the same networks to an image.
#[test]
fn z_image_graphs_run_comfyuis_samplers() {
    let folders = folders("graph-zimage");
    let mut executor = Executor::<B>::default();
    let graph = |sampler: &str| {
        json!({
            "1": {"class_type": "UNETLoader", "inputs": {
                "unet_name": "z_image_turbo-tiny.safetensors", "weight_dtype": "default"}},
            "2": {"class_type": "CLIPLoader", "inputs": {
                "clip_name": "qwen3-tiny.safetensors", "type": "lumina2", "device": "default"}},
            "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
            "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
            "5": {"class_type": "CLIPTextEncode", "inputs": {
                "text": "a photo of a cat sitting on a red sofa", "clip": ["2", 0]}},
            "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
            "7": {"class_type": "EmptySD3LatentImage", "inputs": {
                "width": 64, "height": 64, "batch_size": 1}},
            "10": {"class_type": "KSampler", "inputs": {
                "seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": sampler, "scheduler": "simple",
                "denoise": 1.0, "model": ["4", 0], "positive": ["5", 0], "negative": ["6", 0],
                "latent_image": ["7", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["3", 0]}},
            "9": {"class_type": "SaveImage", "inputs": {
                "filename_prefix": "zimage", "images": ["8", 0]}}
        })
        .as_object()
        .unwrap()
        .clone()
    };
    let euler = run_images(&mut executor, &folders, &graph("euler"));
    let diffusers = image::open(fixtures().join("zimage/cases/z-image-turbo_64x64/image.png"))
        .unwrap()
        .to_rgb8();
    let worst = common::max_pixel_diff(&euler[0], &diffusers);
    assert!(
        worst <= 2,
        "euler differs from diffusers' image by {worst}/255"
    );
    for sampler in ["res_multistep", "dpmpp_2m", "uni_pc"] {
        let image = &run_images(&mut executor, &folders, &graph(sampler))[0];
        assert_eq!(image.dimensions(), (64, 64), "{sampler}");
        // A different solver over the same 4 steps lands elsewhere.
        assert!(common::max_pixel_diff(image, &euler[0]) > 0, "{sampler}");
    }
}

/// ComfyUI's own images of graphs with CLIPSetLastLayer, CLIPTextEncodeSDXL, every
/// LatentUpscale(By) and ImageScale(By) method, ModelSamplingDiscrete (v-prediction, zero
/// terminal SNR), CLIPTextEncodeFlux and T5TokenizerOptions, and the ancestral and SDE
/// samplers on a flow model, prompts with "embedding:" words, naming a textual-inversion
/// embedding or none (tests/fixtures/comfyui_nodes/make_node_fixtures.py): every SaveImage
/// within 2/255.
#[test]
fn node_graphs_give_comfyuis_images() {
    // The manifests' models, and a models folder with the fixtures' embeddings.
    let models = temp_dir("node-graphs-models");
    std::os::unix::fs::symlink(
        fixtures().join("comfyui_nodes/embeddings"),
        models.join("embeddings"),
    )
    .unwrap();
    let folders = folders_with("node-graphs", Some(&models));
    assert_eq!(folders.embedding_names(), ["tiny_style"]);
    let input = fixtures().join("comfyui/img2img_dpmpp_2m_sgm-uniform_64x64_d0.6/input.png");
    std::fs::copy(&input, folders.dir("input").unwrap().join("input.png")).unwrap();
    let defs = node_defs(IMPLEMENTED, &folders.combo_lists());
    let mut executor = Executor::<B>::default();
    let cases = [
        "sdxl_clip-last-layer_text-encode-sdxl",
        "sdxl_latent-upscale",
        "image_scale",
        "sdxl_model-sampling-discrete",
        "flux-dev_text-encode-flux_t5-options",
        "flux-dev_ancestral-and-sde-samplers",
        "sdxl_embedding-words",
        "flux-dev_embedding-words",
        "sdxl_embeddings",
    ];
    for id in cases {
        let dir = fixtures().join("comfyui_nodes").join(id);
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let prompt = case["workflow_api"].as_object().unwrap().clone();
        let accepted = validate(&prompt, &defs, None)
            .unwrap_or_else(|e| panic!("{id}: {} {}", e.error, e.node_errors));
        let mut ignore = |_: GraphEvent<B>| Flow::Continue;
        let mut host = FolderHost {
            folders: &folders,
            device: Default::default(),
            on_event: &mut ignore,
        };
        let run = executor
            .run(&prompt, &accepted.outputs, &mut host)
            .unwrap_or_else(|e| panic!("{id}: node {} failed: {}", e.node_id, e.error));
        let recorded = case["images"].as_object().unwrap();
        assert_eq!(run.outputs.len(), recorded.len(), "{id}: outputs");
        for (node, files) in recorded {
            let saved = &run.outputs[node]["images"][0];
            let path = folders
                .dir("output")
                .unwrap()
                .join(saved["filename"].as_str().unwrap());
            let ours = image::open(&path).unwrap().to_rgb8();
            let theirs = common::comfyui::open_rgb(&dir.join(files[0].as_str().unwrap()));
            assert_eq!(ours.dimensions(), theirs.dimensions(), "{id}/{node}");
            let worst = common::max_pixel_diff(&ours, &theirs);
            println!("{id}/{node} {}: {worst}/255", files[0]);
            assert!(worst <= 2, "{id}/{node}: differs by {worst}/255");
        }
    }
}

/// DualCLIPLoader `sdxl` and VAELoader on the tiny checkpoint's own text encoders and VAE
/// as separate files (transformers and diffusers names, listed by an SDXL manifest) give
/// ComfyUI's image of the checkpoint graph: ComfyUI builds the same SDXLClipModel and VAE
/// from them.
#[test]
fn split_sdxl_text_encoders_and_vae_give_the_checkpoints_image() {
    let dir = temp_dir("graph-split-sdxl");
    let sdxl = fixtures().join("sdxl/diffusers");
    for (from, to) in [
        ("text_encoder/model.safetensors", "clip_l_tiny.safetensors"),
        (
            "text_encoder_2/model.safetensors",
            "clip_g_tiny.safetensors",
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            "sdxl_vae_tiny.safetensors",
        ),
    ] {
        std::os::unix::fs::symlink(sdxl.join(from), dir.join(to)).unwrap();
    }
    let demo = std::fs::read_to_string(repo().join("model_manifests/sdxl-tiny-demo.toml"))
        .unwrap()
        .replace("id = \"sdxl-tiny-demo\"", "id = \"sdxl-split\"")
        .replace("\"../assets/", &format!("\"{}/assets/", repo().display()))
        .replace(
            "[files]\n",
            "[files]\nclip_l = \"clip_l_tiny.safetensors\"\nclip_g = \"clip_g_tiny.safetensors\"\n\
             vae = \"sdxl_vae_tiny.safetensors\"\n",
        );
    std::fs::write(dir.join("sdxl-split.toml"), demo).unwrap();
    let registry = Registry::scan(std::slice::from_ref(&dir)).unwrap();
    let folders =
        ComfyFolders::new(&dir.join("comfyui"), &registry, &LoraLibrary::default()).unwrap();
    let mut p = case_json("euler_normal_64x64")["workflow_api"]
        .as_object()
        .unwrap()
        .clone();
    p.insert(
        "20".into(),
        json!({"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l_tiny.safetensors",
            "clip_name2": "clip_g_tiny.safetensors", "type": "sdxl", "device": "default"}}),
    );
    p.insert(
        "21".into(),
        json!({"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae_tiny.safetensors"}}),
    );
    for node in ["6", "7"] {
        p[node]["inputs"]["clip"] = json!(["20", 0]);
    }
    p["8"]["inputs"]["vae"] = json!(["21", 0]);
    let mut executor = Executor::<B>::default();
    let ours = run_images(&mut executor, &folders, &p);
    let theirs = comfyui_image("euler_normal_64x64", "image.png");
    assert!(common::max_pixel_diff(&ours[0], &theirs) <= 2);
}

/// LoadImage's `IS_CHANGED` is the file's content: an image uploaded again under the same
/// name runs the graph again from LoadImage; the same bytes again reuse the cache.
#[test]
fn load_image_reruns_when_its_file_changes() {
    let folders = folders("graph-load-image");
    let id = "img2img_dpmpp_2m_sgm-uniform_64x64_d0.6";
    let input = folders.dir("input").unwrap().join("input.png");
    let original = fixtures().join("comfyui").join(id).join("input.png");
    std::fs::copy(&original, &input).unwrap();
    let prompt = case_json(id)["workflow_api"].as_object().unwrap().clone();
    let defs = node_defs(IMPLEMENTED, &folders.combo_lists());
    let accepted = validate(&prompt, &defs, None).unwrap();
    let mut executor = Executor::<B>::default();
    let run = |executor: &mut Executor<B>| {
        let mut ignore = |_: GraphEvent<B>| Flow::Continue;
        let mut host = FolderHost {
            folders: &folders,
            device: Default::default(),
            on_event: &mut ignore,
        };
        let run = executor.run(&prompt, &accepted.outputs, &mut host).unwrap();
        let saved = &run.outputs["9"]["images"][0]["filename"];
        let path = folders.dir("output").unwrap().join(saved.as_str().unwrap());
        (run.cached, image::open(path).unwrap().to_rgb8())
    };
    let (_, first) = run(&mut executor);
    assert!(common::max_pixel_diff(&first, &comfyui_image(id, "image.png")) <= 2);
    let flipped = image::imageops::flip_horizontal(&image::open(&original).unwrap().to_rgb8());
    flipped.save(&input).unwrap();
    let (cached, second) = run(&mut executor);
    assert!(!cached.contains(&"11".to_string()), "{cached:?}");
    assert!(cached.contains(&"4".to_string()), "{cached:?}");
    assert!(common::max_pixel_diff(&first, &second) > 2);
    std::fs::copy(&original, &input).unwrap();
    let (_, third) = run(&mut executor);
    assert_eq!(common::max_pixel_diff(&first, &third), 0);
    let (cached, _) = run(&mut executor);
    assert_eq!(cached.len(), prompt.len());
}
