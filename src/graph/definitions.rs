//! Node definitions as ComfyUI's `/object_info` reports them (`assets/comfyui/nodes.json`: the
//! interface of ComfyUI's node classes, with our own descriptions), with the file and sampler
//! lists of this server filled in.

use serde_json::{Value, json};

use crate::sampling::comfy::{KSamplerName, SchedulerName};

/// The lists behind combo inputs: file names per ComfyUI models folder, and the input
/// folder's images.
#[derive(Clone, Debug, Default)]
pub struct ComboLists {
    /// (ComfyUI folder name, file names), e.g. ("checkpoints", ["sd_xl_tiny.safetensors"]).
    pub folders: Vec<(String, Vec<String>)>,
    pub input_images: Vec<String>,
}

impl ComboLists {
    fn files(&self, folder: &str) -> Vec<String> {
        self.folders
            .iter()
            .find(|(name, _)| name == folder)
            .map(|(_, files)| files.clone())
            .unwrap_or_default()
    }

    /// The options of a combo placeholder in nodes.json (`$files:<folder>`, `$samplers`, ...).
    fn resolve(&self, placeholder: &str) -> Option<Vec<String>> {
        Some(match placeholder {
            "$samplers" => KSamplerName::ALL
                .iter()
                .map(|s| s.name().to_owned())
                .collect(),
            "$schedulers" => SchedulerName::ALL
                .iter()
                .map(|s| s.name().to_owned())
                .collect(),
            "$files:input" => self.input_images.clone(),
            other => self.files(other.strip_prefix("$files:")?),
        })
    }
}

/// What one input accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum InputType {
    Int,
    Float,
    String,
    Boolean,
    Combo(Vec<String>),
    /// A value another node makes: MODEL, CLIP, LATENT, ...
    Link(String),
}

impl InputType {
    pub fn name(&self) -> String {
        match self {
            InputType::Int => "INT".into(),
            InputType::Float => "FLOAT".into(),
            InputType::String => "STRING".into(),
            InputType::Boolean => "BOOLEAN".into(),
            InputType::Combo(_) => "COMBO".into(),
            InputType::Link(t) => t.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct InputDef {
    pub name: String,
    pub required: bool,
    pub kind: InputType,
    /// The options object (default, min, max, ...), `{}` when there is none.
    pub options: Value,
}

impl InputDef {
    /// `(input_type, extra_info)` as ComfyUI's errors quote it.
    pub fn config(&self) -> Value {
        let kind = match &self.kind {
            InputType::Combo(options) => json!(options),
            other => json!(other.name()),
        };
        json!([kind, self.options])
    }
}

#[derive(Clone, Debug)]
pub struct NodeDef {
    pub name: String,
    pub inputs: Vec<InputDef>,
    pub outputs: Vec<String>,
    pub output_node: bool,
    /// The `/object_info` entry.
    pub info: Value,
}

/// Every node class this server runs, resolved against `lists`.
pub fn node_defs(implemented: &[&str], lists: &ComboLists) -> Vec<NodeDef> {
    // Parsed once; the file lists change, the interface does not.
    static NODES: std::sync::LazyLock<Vec<Value>> = std::sync::LazyLock::new(|| {
        serde_json::from_str(include_str!("../../assets/comfyui/nodes.json"))
            .expect("nodes.json is valid JSON")
    });
    NODES
        .iter()
        .filter(|n| implemented.contains(&n["name"].as_str().unwrap_or_default()))
        .map(|raw| resolve_node(raw.clone(), lists))
        .collect()
}

fn resolve_node(mut raw: Value, lists: &ComboLists) -> NodeDef {
    let mut inputs = Vec::new();
    for section in ["required", "optional"] {
        let Some(map) = raw["input"][section].as_object_mut() else {
            continue;
        };
        for (name, spec) in map.iter_mut() {
            let head = spec[0].clone();
            let kind = match &head {
                Value::String(s) if s.starts_with('$') => {
                    let options = lists.resolve(s).unwrap_or_default();
                    spec[0] = json!(options);
                    InputType::Combo(options)
                }
                Value::String(s) => match s.as_str() {
                    "INT" => InputType::Int,
                    "FLOAT" => InputType::Float,
                    "STRING" => InputType::String,
                    "BOOLEAN" => InputType::Boolean,
                    other => InputType::Link(other.to_owned()),
                },
                Value::Array(options) => InputType::Combo(
                    options
                        .iter()
                        .filter_map(|o| o.as_str().map(str::to_owned))
                        .collect(),
                ),
                _ => InputType::Link(head.to_string()),
            };
            inputs.push(InputDef {
                name: name.clone(),
                required: section == "required",
                kind,
                options: spec.get(1).cloned().unwrap_or_else(|| json!({})),
            });
        }
    }
    // nodes.json marks V3 nodes for our own bookkeeping; /object_info has no such key.
    if let Some(obj) = raw.as_object_mut() {
        obj.remove("v3");
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    NodeDef {
        name: raw["name"].as_str().unwrap_or_default().to_owned(),
        inputs,
        outputs: strings(&raw["output"]),
        output_node: raw["output_node"].as_bool().unwrap_or(false),
        info: raw,
    }
}
