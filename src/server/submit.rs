//! The one way a generate request becomes a queued job, whichever face it came through (the
//! native API, the gateway's chat and workflow routes): validated once by `validation.rs`,
//! made a [`Job`], submitted. Each face turns the outcome into its own answers.

use serde_json::Value;

use super::AppState;
use super::validation::{ValidationErrors, validate};
use crate::queue::{Job, QueueError, new_job_id};

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
    let job = Job {
        total_steps: validated.params.steps as u32 * validated.num_images,
        params: Some(validated.params),
        num_images: validated.num_images,
        loras: validated.loras,
        nsfw_filter: validated.nsfw_filter,
        ..Job::new(new_job_id(), validated.model, validated.priority)
    };
    let (job, position) = state.shared.queue.submit(job).map_err(|e| match e {
        QueueError::Full => SubmitError::Full,
        e => SubmitError::Internal(format!("{e:?}")),
    })?;
    tracing::info!(job_id = %job.job_id, position, "job accepted");
    Ok((job, position))
}
