//! Request validation with FastAPI's error shape: 422 `{"detail": [{"type", "loc", "msg",
//! "input"}]}`, one entry per bad field, and the JSON Schema of each model's parameters for
//! /api/info (the same limits, so clients can validate before sending).

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::pipelines::{
    DEFAULT_STRENGTH, FamilyOptions, GenerationParams, GenerationRequest, MIN_STRENGTH, image_size,
    size_multiple,
};
use crate::queue::JobLora;
use crate::registry::{Family, LoraLibrary, Manifest, Registry};
use crate::sampling::{SamplerKind, ScheduleKind};
use crate::text::LongPrompt;

#[derive(Clone, Debug, serde::Serialize, poem_openapi::Object)]
pub struct ValidationItem {
    /// Where the error is, e.g. `["body", "width"]`.
    pub loc: Vec<String>,
    pub msg: String,
    /// Machine-readable kind (`missing`, `int_type`, `less_than_equal`, `value_error`, …).
    #[serde(rename = "type")]
    #[oai(rename = "type")]
    pub kind: String,
    /// The offending value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

#[derive(Clone, Debug, serde::Serialize, poem_openapi::Object)]
pub struct ValidationErrors {
    pub detail: Vec<ValidationItem>,
}

impl ValidationErrors {
    /// One error without an input value.
    pub fn one(loc: Vec<String>, msg: String, kind: &str) -> Self {
        Self {
            detail: vec![ValidationItem {
                loc,
                msg,
                kind: kind.into(),
                input: None,
            }],
        }
    }
}

pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 2048;
pub const MAX_STEPS: u32 = 150;
pub const MAX_GUIDANCE: f64 = 30.0;
pub const MAX_IMAGES: u32 = 8;
pub const MAX_PROMPT_CHARS: usize = 10_000;

/// Why an NSFW filter cannot be had, and how to get one.
pub const NO_CHECKER: &str = "this server has no safety checker: add a manifest with \
     family = \"safety-checker\" for CompVis/stable-diffusion-safety-checker (README: NSFW checks)";

/// A validated generation request.
pub struct Validated {
    pub model: String,
    pub family: Family,
    /// `init_image` is still None: the submission stores [`Self::init_image`] and names it.
    pub params: GenerationParams,
    /// An image-to-image request's image (the decoded bytes as sent) and strength.
    pub init_image: Option<(Vec<u8>, f64)>,
    pub num_images: u32,
    pub priority: i32,
    pub loras: Vec<JobLora>,
    pub nsfw_filter: bool,
}

struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<ValidationItem>,
}

impl<'a> Fields<'a> {
    fn error(&mut self, field: &str, kind: &str, msg: impl Into<String>, input: Option<&Value>) {
        self.errors.push(ValidationItem {
            loc: vec!["body".into(), field.into()],
            msg: msg.into(),
            kind: kind.into(),
            input: input.cloned(),
        });
    }

    fn value(&self, field: &str) -> Option<&'a Value> {
        self.body.get(field).filter(|v| !v.is_null())
    }

    fn string(&mut self, field: &str) -> Option<String> {
        let v = self.value(field)?;
        match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.error(
                    field,
                    "string_type",
                    "Input should be a valid string",
                    Some(v),
                );
                None
            }
        }
    }

    /// An integer within `min..=max`.
    fn integer(&mut self, field: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.value(field)?;
        let Some(n) = v.as_i64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }) else {
            let (kind, msg) = if v.as_u64().is_some() {
                (
                    "less_than_equal",
                    format!("Input should be less than or equal to {max}"),
                )
            } else {
                ("int_type", "Input should be a valid integer".to_owned())
            };
            self.error(field, kind, msg, Some(v));
            return None;
        };
        if n < min {
            self.error(
                field,
                "greater_than_equal",
                format!("Input should be greater than or equal to {min}"),
                Some(v),
            );
            return None;
        }
        if n > max {
            self.error(
                field,
                "less_than_equal",
                format!("Input should be less than or equal to {max}"),
                Some(v),
            );
            return None;
        }
        Some(n)
    }

    fn number(&mut self, field: &str, min: f64, max: f64) -> Option<f64> {
        let v = self.value(field)?;
        let Some(n) = v.as_f64() else {
            self.error(
                field,
                "float_type",
                "Input should be a valid number",
                Some(v),
            );
            return None;
        };
        if !(min..=max).contains(&n) {
            self.error(
                field,
                "value_error",
                format!("Input should be between {min} and {max}"),
                Some(v),
            );
            return None;
        }
        Some(n)
    }

    fn one_of<T: std::str::FromStr<Err = String>>(&mut self, field: &str) -> Option<T> {
        let s = self.string(field)?;
        match s.parse() {
            Ok(v) => Some(v),
            Err(msg) => {
                let input = self.value(field);
                self.error(field, "enum", msg, input);
                None
            }
        }
    }
}

const KNOWN_FIELDS: [&str; 17] = [
    "prompt",
    "negative_prompt",
    "model",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "sampler",
    "scheduler",
    "seed",
    "long_prompt",
    "num_images",
    "loras",
    "priority",
    "nsfw_filter",
    "init_image",
    "strength",
];

/// A base64 image (a `data:image/...;base64,` prefix is accepted) → its bytes and size, once
/// it is known to decode as a PNG, JPEG or WebP image.
pub fn base64_image(text: &str) -> Result<(Vec<u8>, (u32, u32)), String> {
    let encoded = text.split_once(";base64,").map_or(text, |(_, b)| b);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let size = image::guess_format(&bytes)
        .ok()
        .and_then(|_| image::load_from_memory(&bytes).ok())
        .map(|image| (image.width(), image.height()))
        .ok_or("not a PNG, JPEG or WebP image")?;
    Ok((bytes, size))
}

/// Checks a generate body against the model it names; every problem is reported at once.
pub fn validate(
    body: &Value,
    registry: &Registry,
    library: &LoraLibrary,
    default_model: Option<&str>,
) -> Result<Validated, ValidationErrors> {
    let Some(object) = body.as_object() else {
        return Err(ValidationErrors {
            detail: vec![ValidationItem {
                loc: vec!["body".into()],
                msg: "Input should be a JSON object".into(),
                kind: "model_attributes_type".into(),
                input: Some(body.clone()),
            }],
        });
    };
    let mut f = Fields {
        body: object,
        errors: Vec::new(),
    };
    for key in object
        .keys()
        .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
    {
        let input = object.get(key);
        f.errors.push(ValidationItem {
            loc: vec!["body".into(), key.clone()],
            msg: "Extra inputs are not permitted".into(),
            kind: "extra_forbidden".into(),
            input: input.cloned(),
        });
    }

    let prompt = match f.value("prompt") {
        None => {
            f.error("prompt", "missing", "Field required", None);
            None
        }
        Some(_) => f.string("prompt"),
    };
    if let Some(p) = &prompt
        && p.chars().count() > MAX_PROMPT_CHARS
    {
        f.error(
            "prompt",
            "string_too_long",
            format!("String should have at most {MAX_PROMPT_CHARS} characters"),
            None,
        );
    }
    let negative_prompt = f.string("negative_prompt");

    let model_id = f
        .string("model")
        .or_else(|| default_model.map(str::to_owned));
    let manifest: Option<&Manifest> = match &model_id {
        None => {
            f.error(
                "model",
                "missing",
                "Field required (the server has no default model)",
                None,
            );
            None
        }
        Some(id) => match registry.get(id) {
            Ok(m) => Some(m),
            Err(e) => {
                let input = f.value("model");
                f.error(
                    "model",
                    "value_error",
                    e.to_string(),
                    input.or(Some(&Value::String(id.clone()))),
                );
                None
            }
        },
    };
    let family = manifest.map_or(Family::Sdxl, |m| m.family);
    let multiple = size_multiple(family) as i64;
    let size = |f: &mut Fields, field: &str| {
        let v = f.integer(field, MIN_SIZE as i64, MAX_SIZE as i64)?;
        if v % multiple != 0 {
            let input = f.value(field);
            f.error(
                field,
                "multiple_of",
                format!("Input should be a multiple of {multiple}"),
                input,
            );
            return None;
        }
        Some(v as usize)
    };
    let mut width = size(&mut f, "width");
    let mut height = size(&mut f, "height");
    let init_image = f
        .string("init_image")
        .and_then(|text| match base64_image(&text) {
            Ok(image) => Some(image),
            Err(why) => {
                f.error(
                    "init_image",
                    "value_error",
                    format!("init_image is {why}"),
                    None,
                );
                None
            }
        });
    let strength = f.number("strength", MIN_STRENGTH, 1.0);
    if let Some((_, (w, h))) = &init_image {
        // The image's size where the request gives none.
        let (fit_w, fit_h) = image_size(family, (*w, *h));
        width = width.or(Some(fit_w));
        height = height.or(Some(fit_h));
        let (fw, fh) = (width.unwrap_or(0) as u32, height.unwrap_or(0) as u32);
        if !(MIN_SIZE..=MAX_SIZE).contains(&fw) || !(MIN_SIZE..=MAX_SIZE).contains(&fh) {
            f.error(
                "init_image",
                "value_error",
                format!(
                    "the image is {w}x{h}; give width and height from {MIN_SIZE} to {MAX_SIZE}, \
                     or an image within that"
                ),
                None,
            );
        }
    }
    let steps = f.integer("steps", 1, MAX_STEPS as i64).map(|v| v as usize);
    let guidance_scale = f
        .number("guidance_scale", 0.0, MAX_GUIDANCE)
        .map(|v| v as f32);
    let sampler: Option<SamplerKind> = f.one_of("sampler");
    let scheduler: Option<ScheduleKind> = f.one_of("scheduler");
    // A1111 seeds go to 2^32; torch accepts any u64.
    let seed = f.integer("seed", 0, i64::MAX).map(|v| v as u64);
    let long_prompt: Option<LongPrompt> = f.one_of("long_prompt");
    let num_images = f.integer("num_images", 1, MAX_IMAGES as i64).unwrap_or(1) as u32;
    let priority = f.integer("priority", -1000, 1000).unwrap_or(0) as i32;
    let nsfw_filter = match f.value("nsfw_filter") {
        None => false,
        Some(Value::Bool(on)) => *on,
        Some(v) => {
            f.error(
                "nsfw_filter",
                "bool_type",
                "Input should be a valid boolean",
                Some(v),
            );
            false
        }
    };
    if nsfw_filter && registry.checker().is_none() {
        f.error(
            "nsfw_filter",
            "value_error",
            NO_CHECKER,
            Some(&Value::Bool(true)),
        );
    }
    let mut loras = Vec::new();
    let mut triggers = Vec::new();
    if let Some(list) = f.value("loras") {
        match list.as_array() {
            None => f.error(
                "loras",
                "list_type",
                "Input should be a valid list",
                Some(list),
            ),
            // A family without LoRAs gets one error for the field (check_family_fields).
            Some(_) if manifest.is_some_and(|m| !FamilyOptions::of(m.family).loras) => {}
            Some(list) => {
                for (i, lora) in list.iter().enumerate() {
                    match check_lora(lora, library, manifest.map(|m| m.family)) {
                        Ok((job_lora, words)) => {
                            if job_lora.trigger_weight != 0.0 && !words.is_empty() {
                                triggers.push(format!(
                                    "({}:{})",
                                    words.join(", "),
                                    job_lora.trigger_weight
                                ));
                            }
                            loras.push(job_lora);
                        }
                        Err((field, msg)) => f.errors.push(ValidationItem {
                            loc: vec!["body".into(), "loras".into(), i.to_string(), field.into()],
                            msg,
                            kind: "value_error".into(),
                            input: Some(lora.clone()),
                        }),
                    }
                }
            }
        }
    }

    if let Some(manifest) = manifest {
        check_family_fields(&mut f, manifest.family, sampler, scheduler);
    }

    let (Some(manifest), Some(prompt), true) = (manifest, prompt, f.errors.is_empty()) else {
        return Err(ValidationErrors { detail: f.errors });
    };
    // trigger_weight appends the LoRA's trigger words with that emphasis: "…, (words:0.5)".
    let prompt = std::iter::once(prompt)
        .chain(triggers)
        .collect::<Vec<_>>()
        .join(", ");
    let request = GenerationRequest {
        prompt,
        negative_prompt,
        width,
        height,
        steps,
        guidance_scale,
        sampler: sampler.map(|s| s.name().to_owned()),
        scheduler: scheduler.map(|s| s.name().to_owned()),
        seed,
        long_prompt,
    };
    let params = request
        .resolve(manifest)
        .map_err(|e| ValidationErrors::one(vec!["body".into()], e.to_string(), "value_error"))?;
    // Without an image, strength means nothing (as A1111's txt2img ignores
    // denoising_strength): clients that fill every field with its default send it.
    let init_image = init_image.map(|(bytes, _)| (bytes, strength.unwrap_or(DEFAULT_STRENGTH)));
    Ok(Validated {
        model: manifest.id.clone(),
        family: manifest.family,
        params,
        init_image,
        num_images,
        priority,
        loras,
        nsfw_filter,
    })
}

/// Fields the model's family does not take, and samplers it cannot run, are errors (the
/// family's schema in /api/info does not list them).
fn check_family_fields(
    f: &mut Fields,
    family: Family,
    sampler: Option<SamplerKind>,
    scheduler: Option<ScheduleKind>,
) {
    let options = FamilyOptions::of(family);
    for (field, taken) in [
        ("guidance_scale", options.guidance),
        ("negative_prompt", options.negative_prompt),
        ("long_prompt", options.long_prompt),
    ] {
        // Even `null`: the family's schema has no such property.
        if !taken && f.body.contains_key(field) {
            let input = f.value(field);
            let msg = format!("{} models take no `{field}`", family.name());
            f.error(field, "extra_forbidden", msg, input);
        }
    }
    if !options.loras
        && f.value("loras")
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
    {
        let input = f.value("loras");
        let msg = format!(
            "this build applies LoRAs to SDXL models only, not {}",
            family.name()
        );
        f.error("loras", "extra_forbidden", msg, input);
    }
    if let Some(why) = sampler.and_then(|s| options.refuse_sampler(family, s)) {
        let input = f.value("sampler");
        f.error("sampler", "enum", why, input);
    }
    if let Some(why) = scheduler.and_then(|s| options.refuse_scheduler(family, s)) {
        let input = f.value("scheduler");
        f.error("scheduler", "enum", why, input);
    }
}

/// One `loras` entry: a known, readable LoRA for the model's family, with its trigger words.
fn check_lora(
    lora: &Value,
    library: &LoraLibrary,
    family: Option<Family>,
) -> Result<(JobLora, Vec<String>), (&'static str, String)> {
    let id = lora
        .get("id")
        .and_then(Value::as_str)
        .ok_or(("id", "Field required: a LoRA id from /api/info".to_owned()))?;
    let entry = library.get(id).ok_or_else(|| {
        let known: Vec<_> = library.entries().map(|e| e.id.as_str()).collect();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        ("id", format!("unknown LoRA `{id}`; known: {known}"))
    })?;
    if let (Some(fits), Some(family)) = (entry.family, family)
        && fits != family
    {
        return Err((
            "id",
            format!("LoRA `{id}` is for {}, not {}", fits.name(), family.name()),
        ));
    }
    if let Some(error) = &entry.error {
        return Err(("id", format!("LoRA `{id}` cannot be used: {error}")));
    }
    let number = |field: &'static str, default: f64| match lora.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().filter(|w| (-10.0..=10.0).contains(w)).ok_or((
            field,
            format!("`{field}` should be a number between -10 and 10"),
        )),
    };
    let weight = number("weight", 1.0)? as f32;
    let trigger_weight = number("trigger_weight", 0.0)? as f32;
    Ok((
        JobLora {
            id: id.to_owned(),
            weight,
            trigger_weight,
        },
        entry.trigger_words.clone(),
    ))
}

/// What a request that leaves every field out gets from `manifest` (seed 0); None where the
/// manifest's defaults do not resolve.
pub fn model_defaults(manifest: &Manifest) -> Option<GenerationParams> {
    GenerationRequest {
        prompt: String::new(),
        seed: Some(0),
        ..Default::default()
    }
    .resolve(manifest)
    .ok()
}

/// The JSON Schema of a model's generate parameters, with that model's defaults and limits and
/// the LoRAs it can take now: exactly what [`validate`] accepts (but for `null`, which it also
/// takes for every optional field and reads as absent).
pub fn parameter_schema(manifest: &Manifest, library: &LoraLibrary, checker: bool) -> Value {
    let defaults = model_defaults(manifest);
    let d = |f: fn(&GenerationParams) -> Value| defaults.as_ref().map(f).unwrap_or(Value::Null);
    let multiple = size_multiple(manifest.family);
    let names = |all: &[&str]| all.iter().map(|s| Value::from(*s)).collect::<Vec<_>>();
    let options = FamilyOptions::of(manifest.family);
    let mut properties = json!({
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "model": {"type": "string", "const": manifest.id},
        "width": {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": multiple, "default": d(|p| p.width.into())},
        "height": {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": multiple, "default": d(|p| p.height.into())},
        "steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS, "default": d(|p| p.steps.into())},
        "sampler": {"type": "string", "enum": names(&options.samplers.iter().map(|s| s.name()).collect::<Vec<_>>()), "default": d(|p| p.sampler.name().into())},
        "scheduler": {"type": "string", "enum": names(&options.schedulers.iter().map(|s| s.name()).collect::<Vec<_>>()), "default": d(|p| p.scheduler.name().into())},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": i64::MAX, "description": "null or absent: random; image i uses seed + i"},
        "num_images": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGES, "default": 1},
        "priority": {"type": "integer", "minimum": -1000, "maximum": 1000, "default": 0,
            "description": "higher runs first; equal priorities run in submission order"},
    });
    if checker {
        properties["nsfw_filter"] = json!({"type": "boolean", "default": false,
            "description": "run the safety checker on each image; a flagged one is stored black and marked `nsfw` in the gallery"});
    }
    let optional = [
        (
            options.negative_prompt,
            "negative_prompt",
            json!({"type": ["string", "null"], "default": null,
            "description": "absent or null: no negative prompt; \"\" is encoded like any prompt"}),
        ),
        (
            options.guidance,
            "guidance_scale",
            json!({"type": "number", "minimum": 0, "maximum": MAX_GUIDANCE, "default": d(|p| p.guidance_scale.into())}),
        ),
        (
            options.long_prompt,
            "long_prompt",
            json!({"type": "string", "enum": ["chunk", "truncate"], "default": "chunk"}),
        ),
        (
            true,
            "init_image",
            json!({"type": ["string", "null"], "contentEncoding": "base64",
            "description": "image-to-image: a PNG, JPEG or WebP image as base64 (a data: URL is accepted); \
                width and height default to its size, down to a multiple of the model's; another size resizes it (Lanczos)"}),
        ),
        (
            true,
            "strength",
            json!({"type": "number", "minimum": MIN_STRENGTH, "maximum": 1, "default": DEFAULT_STRENGTH,
            "description": "with init_image: how far the image is noised; the last int(steps × strength) steps run (at least one); ignored without init_image"}),
        ),
    ];
    for (offered, name, schema) in optional {
        if offered {
            properties[name] = schema;
        }
    }
    // An empty list is fine for every family (clients send one).
    properties["loras"] = lora_list_schema(manifest.family, options.loras, library);
    json!({
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": false,
        "properties": properties,
    })
}

/// `loras`: entries naming a LoRA of `family` that can be used now (none: an empty list).
fn lora_list_schema(family: Family, applies_loras: bool, library: &LoraLibrary) -> Value {
    let none = |why: &str| json!({"type": "array", "maxItems": 0, "description": why});
    if !applies_loras {
        return none("this build applies LoRAs to SDXL models only");
    }
    let usable: Vec<&str> = library
        .entries()
        .filter(|e| e.error.is_none() && e.family.is_none_or(|f| f == family))
        .map(|e| e.id.as_str())
        .collect();
    if usable.is_empty() {
        return none("no LoRA for this model is installed");
    }
    let strength =
        |default: f64| json!({"type": "number", "minimum": -10, "maximum": 10, "default": default});
    json!({"type": "array", "items": {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "string", "enum": usable},
            "weight": strength(1.0),
            "trigger_weight": strength(0.0),
        },
    }})
}
