//! The runner: one OS thread that owns the device and the loaded pipeline, takes jobs from the
//! queue one at a time, and publishes their progress. It never touches HTTP.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use burn::prelude::Backend;

use crate::Error;
use crate::graph::execute::Executor;
use crate::graph::folders::{ComfyFolders, FolderHost, GraphEvent};
use crate::metrics::Metrics;
use crate::models::safety_checker::{SafetyChecker, Verdict};
use crate::output::nsfw_filter::{NsfwFilter, hide};
use crate::output::png::read_parameters;
use crate::output::preview::{LatentRgb, SDXL_LATENT_RGB, jpeg, latent_preview};
use crate::pipelines::safety::{check_images, load_checker};
use crate::pipelines::{Flow, Pipeline};
use crate::queue::{
    ComfyEvents, Events, Job, JobEvent, JobStatus, NsfwVerdict, Queue, SafetyCheck, now_ms,
};
use crate::registry::{LoraLibrary, Registry};
use crate::store::{ImageMeta, Store};
use crate::weights::LoraFile;

pub struct RunnerConfig {
    /// Least time between two previews of a job.
    pub preview_interval: Duration,
    /// ComfyUI's `--preview-method latent2rgb`: each sampler step of a graph sends its
    /// preview as a binary frame (off by default, as in ComfyUI).
    pub comfyui_previews: bool,
}

/// What the runner shares with the HTTP side.
pub struct Shared {
    pub registry: Registry,
    /// The LoRA directories, in the order their ids win.
    pub lora_dirs: Vec<PathBuf>,
    /// What the last scan of `lora_dirs` found (`POST /api/loras/rescan` scans again).
    pub loras: RwLock<LoraLibrary>,
    pub queue: Arc<Queue>,
    pub store: Arc<Store>,
    pub events: Arc<Events>,
    /// The id of the model whose pipeline is loaded now, if any.
    pub loaded: std::sync::Mutex<Option<String>>,
    pub metrics: Metrics,
    /// The files ComfyUI graphs name, and its input / output / temp folders.
    pub comfy_folders: RwLock<ComfyFolders>,
    /// ComfyUI WebSocket messages of running graphs.
    pub comfy_events: ComfyEvents,
    /// ComfyUI's `/free`: drop loaded models and cached graph outputs before the next job.
    pub free_requested: AtomicBool,
}

impl Shared {
    /// Scans the LoRA directories again, so files added or removed since show up.
    pub fn rescan_loras(&self) {
        let library = LoraLibrary::scan(&self.lora_dirs);
        let mut folders = self.comfy_folders.write().expect("folders lock");
        match ComfyFolders::new(folders.root(), &self.registry, &library) {
            Ok(rescanned) => *folders = rescanned,
            Err(e) => tracing::warn!("cannot rescan the ComfyUI folders: {e}"),
        }
        *self.loras.write().expect("loras lock") = library;
    }
}

pub fn spawn<B: Backend>(
    shared: Arc<Shared>,
    device: B::Device,
    config: RunnerConfig,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("hanga-runner".into())
        .spawn(move || {
            let mut pipeline: Option<(String, Pipeline<B>)> = None;
            let mut executor = Executor::<B>::default();
            let mut checker: Option<SafetyChecker<B>> = None;
            loop {
                let (job, cancel) = shared.queue.next_job();
                if shared.free_requested.swap(false, Ordering::SeqCst) {
                    pipeline = None;
                    checker = None;
                    *shared.loaded.lock().expect("loaded lock") = None;
                    executor.clear();
                }
                shared.comfy_events.status(shared.queue.remaining());
                let mut models = Models {
                    pipeline: &mut pipeline,
                    executor: &mut executor,
                    checker: &mut checker,
                };
                let (finished, event) =
                    run_job(&shared, &device, &config, &mut models, job, &cancel);
                // Record the end before announcing it, so a client reacting to the event
                // reads the finished job (ComfyUI writes history before its last messages).
                let job_id = finished.job_id.clone();
                let client = finished.workflow.as_ref().map(|w| w.client_id.clone());
                shared.queue.finish(finished);
                shared.events.publish(&job_id, event);
                if let Some(client) = client {
                    shared.comfy_events.status(shared.queue.remaining());
                    shared.comfy_events.send(
                        client.as_deref(),
                        "executing",
                        serde_json::json!({"node": null, "prompt_id": job_id}),
                    );
                }
            }
        })
        .expect("spawn runner thread")
}

/// What the runner keeps loaded between jobs: the native API's pipeline, the graph executor
/// with its cached node outputs, and the safety checker once a job needed it.
struct Models<'a, B: Backend> {
    pipeline: &'a mut Option<(String, Pipeline<B>)>,
    executor: &'a mut Executor<B>,
    checker: &'a mut Option<SafetyChecker<B>>,
}

/// The safety checker, loaded on first use.
fn safety_checker<'a, B: Backend>(
    shared: &Shared,
    device: &B::Device,
    slot: &'a mut Option<SafetyChecker<B>>,
) -> Result<&'a SafetyChecker<B>, Error> {
    if slot.is_none() {
        let manifest = shared.registry.checker().ok_or_else(|| {
            Error::request(
                "no safety checker is set up: add a manifest with family = \"safety-checker\"",
            )
        })?;
        let start = Instant::now();
        *slot = Some(load_checker(manifest, device)?);
        tracing::info!(checker = %manifest.id, load_ms = millis(start.elapsed()), "safety checker loaded");
    }
    Ok(slot.as_ref().expect("loaded above"))
}

/// Runs one job to its end and returns it with its terminal event; a failure (bad weights, a
/// panic in a kernel) fails this job only.
fn run_job<B: Backend>(
    shared: &Shared,
    device: &B::Device,
    config: &RunnerConfig,
    models: &mut Models<B>,
    mut job: Job,
    cancel: &AtomicBool,
) -> (Job, JobEvent) {
    tracing::info!(job_id = %job.job_id, model = %job.model, "job started");
    let started_at = job.started_at.unwrap_or_else(now_ms);
    shared.metrics.job_started(
        &job.model,
        Duration::from_millis(started_at.saturating_sub(job.created_at)),
    );
    // One API's networks at a time: the graph cache and the native pipeline share none, so
    // the other side's are released before this job loads its own, rather than held twice.
    // (A check job's checker is small beside either, and kept.)
    if job.workflow.is_some() {
        if models.pipeline.take().is_some() {
            *shared.loaded.lock().expect("loaded lock") = None;
        }
    } else if job.check.is_none() {
        models.executor.clear();
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        if job.check.is_some() {
            run_check(shared, device, models.checker, &mut job)
        } else if job.workflow.is_some() {
            run_workflow(shared, device, config, models.executor, &mut job, cancel)
        } else {
            generate(shared, device, config, models, &mut job, cancel)
        }
    }))
    .unwrap_or_else(|panic| {
        // The pipeline may be half-updated: drop it so the next job loads it afresh.
        *models.pipeline = None;
        *models.checker = None;
        models.executor.clear();
        *shared.loaded.lock().expect("loaded lock") = None;
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runner panicked".into());
        Err(Error::config(format!("internal error: {msg}")))
    });
    job.finished_at = Some(now_ms());
    let event = match result {
        Ok(()) => {
            job.status = JobStatus::Completed;
            JobEvent::Completed {
                images: job.images.clone(),
            }
        }
        Err(Error::Cancelled) => {
            job.status = JobStatus::Cancelled;
            JobEvent::Cancelled
        }
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, "job failed: {e}");
            job.status = JobStatus::Failed;
            job.error = Some(e.to_string());
            JobEvent::Failed {
                error: e.to_string(),
            }
        }
    };
    tracing::info!(job_id = %job.job_id, status = job.status.name(), "job finished");
    shared.metrics.job_finished(
        &job.model,
        job.status,
        Duration::from_millis(now_ms().saturating_sub(started_at)),
    );
    (job, event)
}

fn generate<B: Backend>(
    shared: &Shared,
    device: &B::Device,
    config: &RunnerConfig,
    models: &mut Models<B>,
    job: &mut Job,
    cancel: &AtomicBool,
) -> Result<(), Error> {
    let checker = match job.nsfw_filter {
        true => Some(safety_checker(shared, device, models.checker)?),
        false => None,
    };
    let pipeline = &mut *models.pipeline;
    if pipeline.as_ref().is_none_or(|(id, _)| *id != job.model) {
        *pipeline = None;
        *shared.loaded.lock().expect("loaded lock") = None;
        let manifest = shared.registry.get(&job.model)?;
        let start = Instant::now();
        let loaded = Pipeline::load(manifest, device)?;
        job.timings.model_load_ms = Some(millis(start.elapsed()));
        tracing::info!(
            model = %job.model,
            load_ms = job.timings.model_load_ms,
            weights = %describe_weight_bytes(&loaded.weight_bytes()),
            "model loaded"
        );
        *pipeline = Some((job.model.clone(), loaded));
        *shared.loaded.lock().expect("loaded lock") = Some(job.model.clone());
    }
    let (_, pipeline) = pipeline.as_mut().expect("loaded above");
    let files = job
        .loras
        .iter()
        .map(|l| {
            let path = shared
                .loras
                .read()
                .expect("loras lock")
                .get(&l.id)
                .map(|entry| entry.path.clone())
                .ok_or_else(|| Error::request(format!("unknown LoRA `{}`", l.id)))?;
            Ok((LoraFile::open(&path)?, l.weight))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let loras: Vec<(&LoraFile, f32)> = files.iter().map(|(f, w)| (f, *w)).collect();
    let run = Run {
        config,
        checker,
        device,
    };
    if loras.is_empty() {
        return generate_images(shared, &run, pipeline, job, cancel);
    }
    // One merge serves all images; the weights come back whatever the images' outcome.
    let start = Instant::now();
    let merged = pipeline.merge_loras(&loras)?;
    let merging = start.elapsed();
    let result = generate_images(shared, &run, pipeline, job, cancel);
    let start = Instant::now();
    pipeline.unmerge_loras(merged);
    job.timings.lora_merge_ms = Some(millis(merging + start.elapsed()));
    result
}

/// What a generate job's images go through besides the pipeline.
struct Run<'a, B: Backend> {
    config: &'a RunnerConfig,
    /// The safety checker, for a job with `nsfw_filter`.
    checker: Option<&'a SafetyChecker<B>>,
    device: &'a B::Device,
}

/// Generates, saves and announces each image of `job`; with a checker, a flagged image is
/// stored black, as diffusers' `run_safety_checker` returns it.
fn generate_images<B: Backend>(
    shared: &Shared,
    run: &Run<B>,
    pipeline: &mut Pipeline<B>,
    job: &mut Job,
    cancel: &AtomicBool,
) -> Result<(), Error> {
    let start = Instant::now();
    let base = job
        .params
        .clone()
        .ok_or_else(|| Error::config("a generate job without parameters"))?;
    let family = shared.registry.get(&job.model)?.family;
    let per_image = base.steps_run(family) as u32;
    let total = per_image * job.num_images;
    let init = match &base.init_image {
        Some(init) => Some(shared.store.read_input(&init.path)?.1),
        None => None,
    };
    let latent_rgb = pipeline.latent_rgb();
    job.images.clear();
    for index in 0..job.num_images {
        let mut params = base.clone();
        params.seed = params.seed.wrapping_add(index as u64);
        let mut previews = Previews::new(run.config.preview_interval);
        let mut last_step = Instant::now();
        let image = pipeline.generate(&params, init.as_ref(), &mut |p| {
            if cancel.load(Ordering::SeqCst) {
                return Flow::Cancel;
            }
            let step = index * per_image + p.step as u32;
            shared.metrics.step(&job.model, last_step.elapsed());
            last_step = Instant::now();
            let preview = previews.next(p.denoised, latent_rgb, step == total);
            shared.queue.progress(&job.job_id, step, total);
            shared.events.publish(
                &job.job_id,
                JobEvent::Processing {
                    step,
                    total_steps: total,
                    preview,
                },
            );
            Flow::Continue
        })?;
        let nsfw = match run.checker {
            Some(checker) => Some(check_images(checker, &[&image], run.device)?[0].is_nsfw),
            None => None,
        };
        let image = match nsfw {
            Some(true) => hide(&image, NsfwFilter::Black),
            _ => image,
        };
        let meta = ImageMeta::generated(&params, &job.model, nsfw);
        let record = shared.store.save_image(job, index, &image, meta)?;
        shared.metrics.image_written();
        shared.events.announce_image(&record);
        job.images.push(record.filename);
    }
    job.step = total;
    job.total_steps = total;
    job.timings.generate_ms = Some(millis(start.elapsed()));
    Ok(())
}

/// An NSFW check job: the checker's verdict on its image and, for `nsfw/filter`, a copy in
/// the gallery, hidden where flagged (marked either way).
fn run_check<B: Backend>(
    shared: &Shared,
    device: &B::Device,
    checker: &mut Option<SafetyChecker<B>>,
    job: &mut Job,
) -> Result<(), Error> {
    let start = Instant::now();
    let check = job.check.clone().expect("a check job");
    let (bytes, image) = shared.store.read_input(&check.image)?;
    let checker = safety_checker(shared, device, checker)?;
    let verdict = check_images(checker, &[&image], device)?.remove(0);
    if let Some(filter) = check.filter {
        let copy = match verdict.is_nsfw {
            true => hide(&image, filter),
            false => image,
        };
        // The copy keeps what the original says of itself (a gallery image's prompt).
        let original = check
            .source
            .as_deref()
            .and_then(|name| shared.store.image(name).ok().flatten());
        let meta = ImageMeta {
            parameters: read_parameters(&bytes).unwrap_or_default(),
            prompt: original
                .as_ref()
                .map(|r| r.prompt.clone())
                .unwrap_or_default(),
            seed: original.as_ref().map_or(0, |r| r.seed),
            nsfw: Some(verdict.is_nsfw),
        };
        let record = shared.store.save_image(job, 0, &copy, meta)?;
        shared.events.announce_image(&record);
        job.images = vec![record.filename];
    }
    job.check = Some(SafetyCheck {
        verdict: Some(verdict_view(&verdict)),
        ..check
    });
    (job.step, job.total_steps) = (1, 1);
    job.timings.generate_ms = Some(millis(start.elapsed()));
    Ok(())
}

/// The checker's verdict as jobs record it: `confidence` is the highest concept score.
fn verdict_view(verdict: &Verdict) -> NsfwVerdict {
    let labels = verdict
        .bad_concepts
        .iter()
        .map(|i| format!("concept_{i}"))
        .chain(
            verdict
                .special_care
                .iter()
                .map(|i| format!("special_care_{i}")),
        )
        .collect();
    NsfwVerdict {
        is_nsfw: verdict.is_nsfw,
        confidence: verdict
            .concept_scores
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max),
        labels,
        concept_scores: verdict.concept_scores.clone(),
        special_scores: verdict.special_scores.clone(),
    }
}

/// Step previews of a run, at most one per `interval` (and always the last step's).
struct Previews {
    interval: Duration,
    last: Option<Instant>,
}

impl Previews {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// A `data:image/jpeg;base64,...` preview of `denoised` when one is due.
    fn next<B: Backend>(
        &mut self,
        denoised: &burn::prelude::Tensor<B, 4>,
        latent_rgb: &LatentRgb,
        last_step: bool,
    ) -> Option<String> {
        if !(self.last.is_none_or(|t| t.elapsed() >= self.interval) || last_step) {
            return None;
        }
        self.last = Some(Instant::now());
        let jpeg = jpeg(&latent_preview(denoised, latent_rgb), 80);
        Some(format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(jpeg)
        ))
    }
}

/// Runs a ComfyUI prompt: ComfyUI's WebSocket messages to its client, the native job events
/// (steps and previews) for SSE, the UI outputs and status messages into the job's history.
fn run_workflow<B: Backend>(
    shared: &Shared,
    device: &B::Device,
    config: &RunnerConfig,
    executor: &mut Executor<B>,
    job: &mut Job,
    cancel: &AtomicBool,
) -> Result<(), Error> {
    let start = Instant::now();
    let workflow = job.workflow.clone().expect("a graph job");
    let prompt_id = job.job_id.clone();
    let client = workflow.client_id.as_deref();
    let events = &shared.comfy_events;
    let mut messages: Vec<serde_json::Value> = Vec::new();
    let mut record = |kind: &str, data: serde_json::Value, to_everyone: bool| {
        events.send(if to_everyone { None } else { client }, kind, data.clone());
        messages.push(serde_json::json!([kind, data]));
    };
    record(
        "execution_start",
        serde_json::json!({"prompt_id": prompt_id, "timestamp": now_ms()}),
        false,
    );
    // A copy, so that a LoRA rescan does not wait for the prompt.
    let folders = shared.comfy_folders.read().expect("folders lock").clone();
    let mut previews = Previews::new(config.preview_interval);
    let mut last_step = Instant::now();
    let mut progress = NodeProgress::new(&prompt_id);
    let result = {
        let mut on_event = |event: GraphEvent<B>| {
            match event {
                GraphEvent::Cached(nodes) => {
                    record(
                        "execution_cached",
                        serde_json::json!({"nodes": nodes, "prompt_id": prompt_id,
                                           "timestamp": now_ms()}),
                        false,
                    );
                }
                GraphEvent::Executing(node) => {
                    if let Some(state) = progress.finish_running() {
                        events.send(client, "progress_state", state);
                    }
                    events.send(
                        client,
                        "progress_state",
                        progress.set(node, 0.0, 1.0, "running"),
                    );
                    events.send(
                        client,
                        "executing",
                        serde_json::json!({"node": node, "display_node": node,
                                           "prompt_id": prompt_id}),
                    );
                }
                GraphEvent::ImageFrame {
                    node,
                    value,
                    max,
                    png,
                } => {
                    events.send(
                        client,
                        "progress",
                        serde_json::json!({"value": value, "max": max, "prompt_id": prompt_id,
                                           "node": node}),
                    );
                    events.send_binary(client, preview_frame(PNG_FRAME, &png));
                }
                GraphEvent::Executed(node, ui) => events.send(
                    client,
                    "executed",
                    serde_json::json!({"node": node, "display_node": node, "output": ui,
                                       "prompt_id": prompt_id}),
                ),
                GraphEvent::Progress {
                    node,
                    value,
                    max,
                    denoised,
                } => {
                    if cancel.load(Ordering::SeqCst) {
                        return Flow::Cancel;
                    }
                    shared.metrics.step(&job.model, last_step.elapsed());
                    last_step = Instant::now();
                    events.send(
                        client,
                        "progress",
                        serde_json::json!({"value": value, "max": max, "prompt_id": prompt_id,
                                           "node": node}),
                    );
                    events.send(
                        client,
                        "progress_state",
                        progress.set(node, value as f64, max as f64, "running"),
                    );
                    if config.comfyui_previews {
                        let image = latent_preview(denoised, &SDXL_LATENT_RGB);
                        events.send_binary(client, preview_frame(JPEG_FRAME, &jpeg(&image, 95)));
                    }
                    let preview = previews.next(denoised, &SDXL_LATENT_RGB, value == max);
                    shared.queue.progress(&prompt_id, value as u32, max as u32);
                    shared.events.publish(
                        &prompt_id,
                        JobEvent::Processing {
                            step: value as u32,
                            total_steps: max as u32,
                            preview,
                        },
                    );
                }
            }
            Flow::Continue
        };
        let mut host = FolderHost {
            folders: &folders,
            device: device.clone(),
            on_event: &mut on_event,
        };
        executor.run(&workflow.prompt, &workflow.outputs, &mut host)
    };
    let outcome = match result {
        Ok(execution) => {
            if let Some(state) = progress.finish_running() {
                events.send(client, "progress_state", state);
            }
            record(
                "execution_success",
                serde_json::json!({"prompt_id": prompt_id, "timestamp": now_ms()}),
                false,
            );
            add_to_gallery(shared, &folders, job, &execution.outputs);
            job.workflow.as_mut().expect("a graph job").ui_outputs = execution.outputs;
            Ok(())
        }
        Err(failure) => {
            let executed = failure.executed.clone();
            if matches!(failure.error, Error::Cancelled) {
                // ComfyUI sends the interruption to every socket.
                record(
                    "execution_interrupted",
                    serde_json::json!({"prompt_id": prompt_id, "node_id": failure.node_id,
                                       "node_type": failure.node_type, "executed": executed,
                                       "timestamp": now_ms()}),
                    true,
                );
            } else {
                record(
                    "execution_error",
                    serde_json::json!({"prompt_id": prompt_id, "node_id": failure.node_id,
                                       "node_type": failure.node_type, "executed": executed,
                                       "exception_message": failure.error.to_string(),
                                       "exception_type": "hanga.Error",
                                       "traceback": [], "current_inputs": {},
                                       "current_outputs": [], "timestamp": now_ms()}),
                    false,
                );
            }
            Err(failure.error)
        }
    };
    job.workflow.as_mut().expect("a graph job").messages = messages;
    job.timings.generate_ms = Some(millis(start.elapsed()));
    outcome
}

/// ComfyUI's `ProgressRegistry` as `WebUIProgressHandler` reports it: every node that has
/// started, in order, with its value, max and state (`comfy_execution/progress.py`).
struct NodeProgress {
    prompt_id: String,
    nodes: Vec<(String, f64, f64, &'static str)>,
}

impl NodeProgress {
    fn new(prompt_id: &str) -> Self {
        Self {
            prompt_id: prompt_id.to_owned(),
            nodes: Vec::new(),
        }
    }

    /// Sets a node's progress and returns the `progress_state` message data.
    fn set(&mut self, node: &str, value: f64, max: f64, state: &'static str) -> serde_json::Value {
        match self.nodes.iter_mut().find(|n| n.0 == node) {
            Some(entry) => *entry = (node.to_owned(), value, max, state),
            None => self.nodes.push((node.to_owned(), value, max, state)),
        }
        self.message()
    }

    /// `finish_progress` of the running node, if one runs: its value becomes its max.
    fn finish_running(&mut self) -> Option<serde_json::Value> {
        let entry = self.nodes.iter_mut().find(|n| n.3 == "running")?;
        entry.1 = entry.2;
        entry.3 = "finished";
        Some(self.message())
    }

    fn message(&self) -> serde_json::Value {
        let nodes: serde_json::Map<String, serde_json::Value> = self
            .nodes
            .iter()
            .map(|(id, value, max, state)| {
                (
                    id.clone(),
                    serde_json::json!({"value": value, "max": max, "state": state,
                                       "node_id": id, "prompt_id": self.prompt_id,
                                       "display_node_id": id, "parent_node_id": null,
                                       "real_node_id": id}),
                )
            })
            .collect();
        serde_json::json!({"prompt_id": self.prompt_id, "nodes": nodes})
    }
}

/// The image formats of ComfyUI's PREVIEW_IMAGE frames.
const JPEG_FRAME: u32 = 1;
const PNG_FRAME: u32 = 2;

/// A binary PREVIEW_IMAGE frame (`protocol.BinaryEventTypes.PREVIEW_IMAGE` = 1): the event and
/// the image format as big-endian u32s, then the encoded image (`server.send_image`).
/// Lists a graph's saved images (type "output") in the native gallery, named
/// `<prompt_id>_<node>_<n>.png`, with the graph's model, prompt text and seed.
fn add_to_gallery(
    shared: &Shared,
    folders: &ComfyFolders,
    job: &mut Job,
    outputs: &serde_json::Map<String, serde_json::Value>,
) {
    let prompt = &job.workflow.as_ref().expect("a graph job").prompt;
    let (model, text, seed) = crate::graph::outputs::gallery_summary(prompt);
    let output_dir = folders.dir("output").expect("the output folder");
    for (node, ui) in outputs {
        let saved = ui["images"].as_array().into_iter().flatten();
        for (n, image) in saved.filter(|i| i["type"] == "output").enumerate() {
            let path = output_dir
                .join(image["subfolder"].as_str().unwrap_or_default())
                .join(image["filename"].as_str().unwrap_or_default());
            let node_name: String = node
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let indexed = image::image_dimensions(&path)
                .map_err(|e| Error::request(e.to_string()))
                .and_then(|(width, height)| {
                    let record = crate::store::ImageRecord {
                        id: 0,
                        filename: format!("{}_{node_name}_{n}.png", job.job_id),
                        width,
                        height,
                        job_id: job.job_id.clone(),
                        model: model.clone(),
                        prompt: text.clone(),
                        seed,
                        created_at: now_ms(),
                        source: None,
                        nsfw: None,
                    };
                    shared.store.index_file(&path, record)
                });
            match indexed {
                Ok(record) => {
                    shared.events.announce_image(&record);
                    job.images.push(record.filename);
                }
                Err(e) => tracing::warn!("{}: not in the gallery: {e}", path.display()),
            }
        }
    }
}

fn preview_frame(format: u32, image: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + image.len());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&format.to_be_bytes());
    frame.extend_from_slice(image);
    frame
}

/// "transformer 11.90 GB, t5 0 (released), vae 0.17 GB": what each network holds on the
/// device.
fn describe_weight_bytes(parts: &[(&str, u64)]) -> String {
    let parts: Vec<String> = parts
        .iter()
        .map(|(name, bytes)| match bytes {
            0 => format!("{name} not loaded"),
            b => format!("{name} {:.3} GB", *b as f64 / 1e9),
        })
        .collect();
    parts.join(", ")
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}
