//! The one way a request becomes a queued job, whichever face it came through: a generate
//! request (the native API, the gateway's chat and workflow routes), validated once by
//! `validation.rs`; a ComfyUI graph (ComfyUI's `/prompt`, the gateway's workflow templates),
//! validated once against the node definitions. Each face turns the outcome into its own
//! answers.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::validation::{ValidationErrors, validate};
use crate::graph::definitions::{NodeDef, node_defs};
use crate::graph::nodes::IMPLEMENTED;
use crate::graph::validate::{Rejection, validate as validate_graph};
use crate::pipelines::InitImage;
use crate::queue::{Job, JobStatus, QueueError, Workflow, new_job_id};
use crate::runner::Shared;

pub enum SubmitError {
    /// Fields missing or invalid, FastAPI-style.
    Invalid(ValidationErrors),
    /// The queue is full.
    Full,
    Internal(String),
}

/// Validates a generate body and queues its job; returns the job and its queue position.
pub fn submit_generate(state: &AppState, body: &Value) -> Result<(Job, usize), SubmitError> {
    let validated = validate(
        body,
        &state.shared.registry,
        &state.shared.loras.read().expect("loras lock"),
        state.default_model.as_deref(),
    )
    .map_err(SubmitError::Invalid)?;
    let job_id = new_job_id();
    let mut params = validated.params;
    if let Some((bytes, strength)) = validated.init_image {
        // Kept under uploads/ until the job ends, so a job the server restarts on finds it.
        let path = state
            .shared
            .store
            .save_upload(&job_id, &bytes)
            .map_err(|e| SubmitError::Internal(e.to_string()))?;
        params.init_image = Some(InitImage { path, strength });
    }
    let job = Job {
        total_steps: params.steps_run(validated.family) as u32 * validated.num_images,
        params: Some(params),
        num_images: validated.num_images,
        loras: validated.loras,
        nsfw_filter: validated.nsfw_filter,
        ..Job::new(job_id, validated.model, validated.priority)
    };
    let (job, position) = state.shared.queue.submit(job.clone()).map_err(|e| {
        state.shared.store.remove_upload(&job);
        match e {
            QueueError::Full => SubmitError::Full,
            e => SubmitError::Internal(format!("{e:?}")),
        }
    })?;
    tracing::info!(job_id = %job.job_id, position, "job accepted");
    Ok((job, position))
}

/// The node definitions with today's file lists (what graphs are checked against).
pub fn graph_node_defs(shared: &Shared) -> Vec<NodeDef> {
    let lists = shared
        .comfy_folders
        .read()
        .expect("folders lock")
        .combo_lists();
    node_defs(IMPLEMENTED, &lists)
}

/// A ComfyUI prompt to queue, with what `POST /prompt` may say besides the graph.
pub struct GraphSubmission {
    pub prompt_id: String,
    /// The API-format graph: node id → `{class_type, inputs}`.
    pub prompt: Map<String, Value>,
    pub extra_data: Map<String, Value>,
    pub client_id: Option<String>,
    /// The client's `number`, or null to number it by acceptance order.
    pub number: Value,
    pub front: bool,
    /// `partial_execution_targets`: the output nodes to run, when not all.
    pub targets: Option<Vec<String>>,
}

pub enum GraphSubmitError {
    /// ComfyUI's `{error, node_errors}`.
    Invalid(Box<Rejection>),
    Full,
    Internal(String),
}

/// Validates a graph and queues its job; returns the job and the `node_errors` of outputs that
/// were dropped (ComfyUI answers them beside an accepted prompt).
pub fn submit_graph(
    shared: &Shared,
    graph: GraphSubmission,
) -> Result<(Job, Value), GraphSubmitError> {
    let accepted = validate_graph(
        &graph.prompt,
        &graph_node_defs(shared),
        graph.targets.as_deref(),
    )
    .map_err(GraphSubmitError::Invalid)?;
    let job = Job {
        workflow: Some(Workflow {
            prompt: graph.prompt,
            extra_data: Value::Object(graph.extra_data),
            outputs: accepted.outputs,
            number: graph.number,
            front: graph.front,
            client_id: graph.client_id,
            ui_outputs: Map::new(),
            messages: Vec::new(),
        }),
        ..Job::new(graph.prompt_id, "comfyui".into(), 0)
    };
    let (job, _) = shared.queue.submit(job).map_err(|e| match e {
        QueueError::Full => GraphSubmitError::Full,
        e => GraphSubmitError::Internal(format!("{e:?}")),
    })?;
    tracing::info!(job_id = %job.job_id, "graph accepted");
    Ok((job, accepted.node_errors))
}

/// Waits until job `job_id` has completed, at most `wait`, for faces whose request answers
/// with the result (the gateway's NSFW checks, OpenAI's and A1111's images); otherwise why
/// not: its error, its end (cancelled), or that it has not ended yet.
pub async fn completed_job(state: &AppState, job_id: &str, wait: Duration) -> Result<Job, String> {
    let job = job_end(state, job_id, wait).await.ok_or_else(|| {
        format!(
            "job `{job_id}` did not end within {} s; it goes on",
            wait.as_secs()
        )
    })?;
    match job.status {
        JobStatus::Completed => Ok(job),
        status => Err(job
            .error
            .clone()
            .unwrap_or_else(|| format!("job `{job_id}` was {}", status.name()))),
    }
}

/// The job as it ended, once it has (None: not within `wait`).
async fn job_end(state: &AppState, job_id: &str, wait: Duration) -> Option<Job> {
    let mut events = state.shared.events.subscribe(job_id, None).live;
    let ended = async {
        loop {
            // Checked after subscribing, so an end between the two is not missed: the runner
            // records a job's end before announcing it.
            if let Some((job, _)) = state.shared.queue.get(job_id)
                && job.status.is_finished()
            {
                return job;
            }
            if let Err(RecvError::Closed) = events.recv().await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::time::timeout(wait, ended).await.ok()
}
