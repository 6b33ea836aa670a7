//! Workflow templates: named generate requests and ComfyUI graphs with declared parameters,
//! read from the templates directory (TOML or JSON files, one template each) beside a few
//! built in (`assets/templates/`). A template's body holds `{{name}}` placeholders: a string
//! that is exactly one placeholder takes the parameter's typed value, and a placeholder inside
//! a longer string takes its text. Filling checks the values against the declarations; the
//! filled body is then validated and queued as any generate request or ComfyUI prompt is.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The templates that ship with hanga.
const BUILTIN: [(&str, &str); 3] = [
    (
        "portrait.toml",
        include_str!("../../assets/templates/portrait.toml"),
    ),
    (
        "landscape.toml",
        include_str!("../../assets/templates/landscape.toml"),
    ),
    (
        "comfyui-txt2img.json",
        include_str!("../../assets/templates/comfyui-txt2img.json"),
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    String,
    Integer,
    Number,
    Boolean,
}

/// A declared parameter. Without a default it is required.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    #[serde(rename = "type")]
    pub kind: ParameterType,
    pub default: Option<Value>,
    pub description: Option<String>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
}

/// What a template fills in.
#[derive(Clone, Debug)]
pub enum Body {
    /// A `POST /api/generate` body.
    Generate(Map<String, Value>),
    /// A ComfyUI API-format graph.
    Workflow(Map<String, Value>),
}

#[derive(Clone, Debug)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub parameters: BTreeMap<String, Parameter>,
    pub body: Body,
    /// Shipped with hanga rather than read from the templates directory.
    pub builtin: bool,
}

/// A template as written: exactly one of `generate` and `workflow`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    id: String,
    name: String,
    description: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Parameter>,
    generate: Option<Map<String, Value>>,
    workflow: Option<Map<String, Value>>,
}

/// A value that does not fit its parameter: (parameter, why).
pub type ParameterError = (String, String);

/// The `{{name}}` placeholders of a string, in order, with their byte ranges.
fn placeholders(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find("{{").map(|i| from + i) {
        let Some(end) = text[start + 2..].find("}}").map(|i| start + 2 + i) else {
            break;
        };
        let name = &text[start + 2..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.push((start..end + 2, name));
        }
        from = end + 2;
    }
    found
}

/// Every placeholder name in a JSON value.
fn names_in<'a>(value: &'a Value, names: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => names.extend(placeholders(s).into_iter().map(|(_, n)| n)),
        Value::Array(items) => items.iter().for_each(|v| names_in(v, names)),
        Value::Object(map) => map.values().for_each(|v| names_in(v, names)),
        _ => {}
    }
}

/// `value` with its placeholders filled from `values`.
fn substitute(value: &Value, values: &Map<String, Value>) -> Value {
    match value {
        Value::String(s) => {
            let found = placeholders(s);
            if let [(range, name)] = found.as_slice()
                && *range == (0..s.len())
            {
                return values[*name].clone();
            }
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for (range, name) in found {
                out.push_str(&s[last..range.start]);
                match &values[name] {
                    Value::String(text) => out.push_str(text),
                    other => out.push_str(&other.to_string()),
                }
                last = range.end;
            }
            out.push_str(&s[last..]);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, values)).collect()),
        Value::Object(map) => Value::Object(substitute_map(map, values)),
        other => other.clone(),
    }
}

fn substitute_map(map: &Map<String, Value>, values: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| (k.clone(), substitute(v, values)))
        .collect()
}

impl Parameter {
    /// `value` if it fits: its type, and the bounds of a number.
    fn check(&self, value: &Value) -> Result<Value, String> {
        let number = match (self.kind, value) {
            (ParameterType::String, Value::String(_))
            | (ParameterType::Boolean, Value::Bool(_)) => {
                return Ok(value.clone());
            }
            (ParameterType::Integer, Value::Number(n)) => match n.as_i64() {
                Some(i) => i as f64,
                None => return Err("should be a whole number".into()),
            },
            (ParameterType::Number, Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            (kind, _) => return Err(format!("should be of type {}", type_name(kind))),
        };
        if let Some(min) = self.minimum.filter(|&m| number < m) {
            return Err(format!("should be at least {min}"));
        }
        if let Some(max) = self.maximum.filter(|&m| number > m) {
            return Err(format!("should be at most {max}"));
        }
        Ok(value.clone())
    }
}

fn type_name(kind: ParameterType) -> &'static str {
    match kind {
        ParameterType::String => "string",
        ParameterType::Integer => "integer",
        ParameterType::Number => "number",
        ParameterType::Boolean => "boolean",
    }
}

impl Template {
    /// Reads a template (TOML, or JSON when `json`), checking that its body is one of the two
    /// kinds, that every placeholder is declared and every declaration used, and that the
    /// defaults fit their declarations.
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        let file: TemplateFile = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        let body = match (file.generate, file.workflow) {
            (Some(generate), None) => Body::Generate(generate),
            (None, Some(workflow)) => Body::Workflow(workflow),
            _ => return Err("a template has either `generate` or `workflow`".into()),
        };
        let mut used = Vec::new();
        body.map().values().for_each(|v| names_in(v, &mut used));
        if let Some(name) = used.iter().find(|n| !file.parameters.contains_key(**n)) {
            return Err(format!("`{{{{{name}}}}}` is not a declared parameter"));
        }
        if let Some(name) = file.parameters.keys().find(|p| !used.contains(&p.as_str())) {
            return Err(format!("parameter `{name}` is used nowhere"));
        }
        for (name, parameter) in &file.parameters {
            if let Some(default) = &parameter.default {
                parameter
                    .check(default)
                    .map_err(|why| format!("the default of `{name}` {why}"))?;
            }
        }
        Ok(Self {
            id: file.id,
            name: file.name,
            description: file.description,
            parameters: file.parameters,
            body,
            builtin: false,
        })
    }

    /// The JSON Schema of the parameters.
    pub fn schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .parameters
            .iter()
            .map(|(name, p)| {
                let mut schema = json!({"type": type_name(p.kind)});
                for (key, value) in [
                    ("default", p.default.clone()),
                    ("description", p.description.clone().map(Value::from)),
                    ("minimum", p.minimum.map(Value::from)),
                    ("maximum", p.maximum.map(Value::from)),
                ] {
                    if let Some(value) = value {
                        schema[key] = value;
                    }
                }
                (name.clone(), schema)
            })
            .collect();
        let required: Vec<&String> = self
            .parameters
            .iter()
            .filter(|(_, p)| p.default.is_none())
            .map(|(name, _)| name)
            .collect();
        json!({"type": "object", "properties": properties, "required": required,
               "additionalProperties": false})
    }

    /// The body with `values` (and the defaults) in place of its placeholders; every value
    /// that does not fit is reported.
    pub fn fill(&self, values: &Map<String, Value>) -> Result<Body, Vec<ParameterError>> {
        let mut errors: Vec<ParameterError> = values
            .keys()
            .filter(|k| !self.parameters.contains_key(*k))
            .map(|k| (k.clone(), "is not a parameter of this template".into()))
            .collect();
        let mut filled = Map::new();
        for (name, parameter) in &self.parameters {
            match values.get(name).or(parameter.default.as_ref()) {
                None => errors.push((name.clone(), "is required".into())),
                Some(value) => match parameter.check(value) {
                    Ok(value) => {
                        filled.insert(name.clone(), value);
                    }
                    Err(why) => errors.push((name.clone(), why)),
                },
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(match &self.body {
            Body::Generate(m) => Body::Generate(substitute_map(m, &filled)),
            Body::Workflow(m) => Body::Workflow(substitute_map(m, &filled)),
        })
    }
}

impl Body {
    pub fn map(&self) -> &Map<String, Value> {
        match self {
            Body::Generate(m) | Body::Workflow(m) => m,
        }
    }

    /// `generate` or `comfyui`.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Generate(_) => "generate",
            Body::Workflow(_) => "comfyui",
        }
    }
}

/// The built-in templates, then the `*.toml` and `*.json` files of `dir` (a file's template
/// replaces a built-in one of the same id). A file that does not read as a template is left
/// out with a warning naming it. Read afresh on each call, so templates added to the folder
/// show up without a restart.
pub fn load(dir: &Path) -> Vec<Template> {
    // The built-ins are checked by a test; one that does not read is left out like a file.
    let mut templates: BTreeMap<String, Template> = BUILTIN
        .iter()
        .filter_map(
            |(name, text)| match Template::parse(text, name.ends_with(".json")) {
                Ok(template) => Some(Template {
                    builtin: true,
                    ..template
                }),
                Err(e) => {
                    tracing::error!("built-in template {name}: {e}");
                    None
                }
            },
        )
        .map(|t| (t.id.clone(), t))
        .collect();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| Template::parse(&text, path.extension().is_some_and(|x| x == "json")));
        match parsed {
            Ok(template) => {
                templates.insert(template.id.clone(), template);
            }
            Err(e) => tracing::warn!("{}: not a template: {e}", path.display()),
        }
    }
    templates.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Result<Template, String> {
        Template::parse(text, false)
    }

    const PORTRAIT: &str = r#"
        id = "p"
        name = "P"
        [parameters.subject]
        type = "string"
        [parameters.steps]
        type = "integer"
        default = 20
        minimum = 1
        maximum = 150
        [generate]
        prompt = "portrait of {{subject}}, {{steps}} steps"
        steps = "{{steps}}"
    "#;

    #[test]
    fn placeholders_take_typed_values_or_text() {
        let t = template(PORTRAIT).unwrap();
        let values = json!({"subject": "a knight", "steps": 8});
        let Body::Generate(body) = t.fill(values.as_object().unwrap()).unwrap() else {
            panic!("a generate template")
        };
        assert_eq!(
            Value::Object(body),
            json!({"prompt": "portrait of a knight, 8 steps", "steps": 8})
        );
        let defaults = t
            .fill(json!({"subject": "x"}).as_object().unwrap())
            .unwrap();
        assert_eq!(defaults.map()["steps"], 20);
    }

    #[test]
    fn values_that_do_not_fit_are_all_reported() {
        let t = template(PORTRAIT).unwrap();
        let errors = t
            .fill(json!({"steps": 0, "style": "x"}).as_object().unwrap())
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["style", "steps", "subject"]);
        assert!(t.fill(json!({"subject": 3}).as_object().unwrap()).is_err());
        assert!(
            t.fill(json!({"subject": "a", "steps": 2.5}).as_object().unwrap())
                .is_err()
        );
    }

    #[test]
    fn templates_that_do_not_hold_together_are_refused() {
        let undeclared = "id = \"a\"\nname = \"A\"\n[generate]\nprompt = \"{{who}}\"\n";
        assert!(template(undeclared).unwrap_err().contains("who"));
        let unused = PORTRAIT.replace("{{subject}}", "someone");
        assert!(template(&unused).unwrap_err().contains("subject"));
        let bad_default = PORTRAIT.replace("default = 20", "default = 500");
        assert!(template(&bad_default).unwrap_err().contains("steps"));
        let both = format!("{PORTRAIT}\n[workflow]\n");
        assert!(template(&both).is_err());
    }

    #[test]
    fn the_builtin_templates_read() {
        let all = load(Path::new("/nonexistent"));
        assert_eq!(all.len(), BUILTIN.len());
        assert!(all.iter().all(|t| t.builtin));
        assert!(all.iter().any(|t| matches!(t.body, Body::Workflow(_))));
    }
}
