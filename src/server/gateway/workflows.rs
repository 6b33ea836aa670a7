//! The gateway's workflow routes: `workflows/templates` lists the templates (built in, and the
//! templates directory's), `workflows/execute` fills one (named, or posted whole) and queues
//! it: a generate template through the same submission as `POST /api/generate`, a ComfyUI
//! graph through the same as ComfyUI's `/prompt`.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{Map, Value, json};

use super::views::{Envelope, Failure, Text};
use super::{Tag, bad_request, envelope, failure, invalid_generate_details};
use crate::queue::{Job, JobStatus};
use crate::server::AppState;
use crate::server::submit::{
    GraphSubmission, GraphSubmitError, SubmitError, submit_generate, submit_graph,
};
use crate::templates::{self, Body, Template};

pub struct WorkflowsApi(pub Arc<AppState>);

#[derive(Object)]
pub struct TemplateView {
    pub id: String,
    pub name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// `generate` (a `POST /api/generate` body) or `comfyui` (an API-format graph).
    pub kind: String,
    /// Shipped with hanga; otherwise read from the templates directory.
    pub builtin: bool,
    /// The JSON Schema of the template's parameters.
    pub parameters: Value,
    /// The body it fills: `{{name}}` stands for parameter `name`.
    pub body: Value,
}

#[derive(Object)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

#[derive(Object)]
pub struct ExecuteRequest {
    /// A template's id (`GET /v1/api/workflows/templates`).
    pub template_id: Option<Text>,
    /// Or a template posted whole, in the templates directory's JSON form: `id`, `name`,
    /// `parameters` (`{"seed": {"type": "integer", "default": 0}}`) and a `generate` body or
    /// a ComfyUI `workflow` graph holding `{{name}}` placeholders.
    pub template: Option<Value>,
    /// The parameters' values; a parameter left out takes its default.
    pub parameters: Option<BTreeMap<String, Value>>,
}

#[derive(Object)]
pub struct Executed {
    /// The job: `generation/status/{prompt_id}`, `/api/jobs/{prompt_id}`.
    pub prompt_id: String,
    pub status: JobStatus,
    pub template_id: String,
    /// `generate` or `comfyui`.
    pub kind: String,
    /// What was queued: the filled generate body or graph.
    pub queued: Value,
}

gateway_response!(TemplatesResponse, TemplateList);
gateway_response!(ExecuteResponse, Executed,
    NotFound = 404: "`TEMPLATE_NOT_FOUND`.",
    Unprocessable = 422: "`INVALID_PARAMETERS` (details: each parameter and why), `INVALID_TEMPLATE` (a posted template that does not read), `INVALID_PROMPT` (the filled generate body, with FastAPI's detail list) or `INVALID_WORKFLOW` (the filled graph, with ComfyUI's error and node_errors).",
    Busy = 429: "`QUEUE_FULL`.",
    Internal = 500: "`GENERATION_FAILED`: the job could not be queued.");

fn view(template: &Template) -> TemplateView {
    TemplateView {
        id: template.id.clone(),
        name: template.name.clone(),
        description: template.description.clone(),
        kind: template.body.kind().into(),
        builtin: template.builtin,
        parameters: template.schema(),
        body: Value::Object(template.body.map().clone()),
    }
}

fn unprocessable(code: &str, message: impl Into<String>, details: Value) -> ExecuteResponse {
    ExecuteResponse::Unprocessable(failure(code, message, Some(details)))
}

#[OpenApi(prefix_path = "/v1/api/workflows", tag = "Tag::Gateway")]
impl WorkflowsApi {
    /// The workflow templates: built in, and those of the templates directory (read afresh,
    /// so a file added there shows at once).
    #[oai(path = "/templates", method = "get")]
    async fn templates(&self) -> TemplatesResponse {
        let templates = templates::load(&self.0.templates_dir)
            .iter()
            .map(view)
            .collect();
        TemplatesResponse::Ok(envelope(TemplateList { templates }))
    }

    /// Fill a template's parameters and queue it.
    #[oai(path = "/execute", method = "post")]
    async fn execute(&self, body: Json<ExecuteRequest>) -> ExecuteResponse {
        let state = &self.0;
        let request = body.0;
        let template = match (request.template_id, request.template) {
            (Some(id), None) => {
                let all = templates::load(&state.templates_dir);
                match all.into_iter().find(|t| t.id == id.0) {
                    Some(t) => t,
                    None => {
                        return ExecuteResponse::NotFound(failure(
                            "TEMPLATE_NOT_FOUND",
                            format!(
                                "no template `{}`; GET /v1/api/workflows/templates lists them",
                                id.0
                            ),
                            None,
                        ));
                    }
                }
            }
            (None, Some(posted)) => match Template::parse(&posted.to_string(), true) {
                Ok(t) => t,
                Err(why) => {
                    return unprocessable(
                        "INVALID_TEMPLATE",
                        format!("template: {why}"),
                        Value::Null,
                    );
                }
            },
            _ => {
                return ExecuteResponse::BadRequest(failure(
                    "INVALID_REQUEST",
                    "send `template_id` or `template`, one of them",
                    None,
                ));
            }
        };
        let values: Map<String, Value> =
            request.parameters.unwrap_or_default().into_iter().collect();
        let filled = match template.fill(&values) {
            Ok(filled) => filled,
            Err(errors) => {
                let details: Vec<Value> = errors
                    .iter()
                    .map(|(parameter, msg)| json!({"parameter": parameter, "msg": msg}))
                    .collect();
                return unprocessable(
                    "INVALID_PARAMETERS",
                    format!("the parameters do not fit template `{}`", template.id),
                    json!(details),
                );
            }
        };
        let kind = filled.kind().to_owned();
        let queued = Value::Object(filled.map().clone());
        let job: Job = match filled {
            Body::Generate(generate) => match submit_generate(state, &Value::Object(generate)) {
                Ok((job, _)) => job,
                Err(SubmitError::Invalid(errors)) => {
                    return unprocessable(
                        "INVALID_PROMPT",
                        "the filled template is not a valid generate request",
                        invalid_generate_details(&queued, &errors),
                    );
                }
                Err(SubmitError::Full) => return queue_full(),
                Err(SubmitError::Internal(e)) => {
                    return ExecuteResponse::Internal(failure("GENERATION_FAILED", e, None));
                }
            },
            Body::Workflow(graph) => {
                let submission = GraphSubmission {
                    prompt_id: uuid::Uuid::new_v4().to_string(),
                    prompt: graph,
                    extra_data: Map::new(),
                    client_id: None,
                    number: Value::Null,
                    front: false,
                    targets: None,
                };
                match submit_graph(&state.shared, submission) {
                    Ok((job, _)) => job,
                    Err(GraphSubmitError::Invalid(rejection)) => {
                        return unprocessable(
                            "INVALID_WORKFLOW",
                            "the filled graph does not validate",
                            json!({"error": rejection.error, "node_errors": rejection.node_errors,
                                   "workflow": queued}),
                        );
                    }
                    Err(GraphSubmitError::Full) => return queue_full(),
                    Err(GraphSubmitError::Internal(e)) => {
                        return ExecuteResponse::Internal(failure("GENERATION_FAILED", e, None));
                    }
                }
            }
        };
        ExecuteResponse::Ok(envelope(Executed {
            prompt_id: job.job_id,
            status: job.status,
            template_id: template.id,
            kind,
            queued,
        }))
    }
}

fn queue_full() -> ExecuteResponse {
    ExecuteResponse::Busy(failure(
        "QUEUE_FULL",
        "the queue is full; retry later",
        None,
    ))
}
