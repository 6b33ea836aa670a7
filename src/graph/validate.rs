//! Prompt validation with ComfyUI's error types and messages (`execution.py validate_prompt`
//! and `validate_inputs`; ../shared/reference/api-peers.md §1.3).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::definitions::{InputType, NodeDef};

/// A refused prompt: the body of ComfyUI's 400 answer.
#[derive(Debug)]
pub struct Rejection {
    pub error: Value,
    pub node_errors: Value,
}

/// An accepted prompt: the output nodes to run, and errors of outputs that were dropped.
#[derive(Debug)]
pub struct Accepted {
    pub outputs: Vec<String>,
    pub node_errors: Value,
}

fn reason(kind: &str, message: String, details: String, extra_info: Value) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": extra_info})
}

fn rejection(kind: &str, message: &str, details: String) -> Box<Rejection> {
    Box::new(Rejection {
        error: reason(kind, message.into(), details, json!({})),
        node_errors: json!({}),
    })
}

/// Checks `prompt` (the API-format graph) against `defs`; `targets` limits the outputs run
/// (`partial_execution_targets`).
pub fn validate(
    prompt: &Map<String, Value>,
    defs: &[NodeDef],
    targets: Option<&[String]>,
) -> Result<Accepted, Box<Rejection>> {
    let def_of = |class: &str| defs.iter().find(|d| d.name == class);
    for (id, node) in prompt {
        let Some(class) = node.get("class_type").and_then(Value::as_str) else {
            return Err(rejection(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                format!("Node ID '#{id}'"),
            ));
        };
        if def_of(class).is_none() {
            return Err(rejection(
                "invalid_prompt",
                &format!("Cannot execute because node {class} does not exist."),
                format!("Node ID '#{id}'"),
            ));
        }
    }
    let outputs: Vec<String> = prompt
        .iter()
        .filter(|(id, node)| {
            let class = node["class_type"].as_str().unwrap_or_default();
            def_of(class).is_some_and(|d| d.output_node)
                && targets.is_none_or(|t| t.iter().any(|t| t == *id))
        })
        .map(|(id, _)| id.clone())
        .collect();
    if outputs.is_empty() {
        return Err(rejection(
            "prompt_no_outputs",
            "Prompt has no outputs",
            String::new(),
        ));
    }

    let mut checker = Checker {
        prompt,
        defs,
        validated: HashMap::new(),
        visiting: HashSet::new(),
    };
    let mut good = Vec::new();
    let mut errors: Vec<(String, Value)> = Vec::new();
    let mut node_errors: Map<String, Value> = Map::new();
    for output in &outputs {
        checker.check(output);
        let invalid = checker.invalid_ancestors(output);
        if invalid.is_empty() {
            good.push(output.clone());
            continue;
        }
        for id in invalid {
            let reasons = checker.validated[&id].clone().unwrap_err();
            if reasons.is_empty() {
                continue;
            }
            for r in &reasons {
                errors.push((
                    r["message"].as_str().unwrap_or_default().to_owned(),
                    r["details"].as_str().unwrap_or_default().to_owned().into(),
                ));
            }
            let entry = node_errors.entry(id.clone()).or_insert_with(|| {
                json!({
                    "errors": reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[&id]["class_type"],
                })
            });
            entry["dependent_outputs"]
                .as_array_mut()
                .expect("an array")
                .push(json!(output));
        }
    }
    if good.is_empty() {
        let mut details: Vec<String> = errors
            .iter()
            .map(|(m, d)| format!("{m}: {}", d.as_str().unwrap_or_default()))
            .collect();
        details.dedup();
        return Err(Box::new(Rejection {
            error: reason(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation".into(),
                details.join("\n"),
                json!({}),
            ),
            node_errors: Value::Object(node_errors),
        }));
    }
    Ok(Accepted {
        outputs: good,
        node_errors: Value::Object(node_errors),
    })
}

struct Checker<'a> {
    prompt: &'a Map<String, Value>,
    defs: &'a [NodeDef],
    /// Ok, or the node's own reasons (empty when only an ancestor is at fault).
    validated: HashMap<String, Result<(), Vec<Value>>>,
    visiting: HashSet<String>,
}

impl Checker<'_> {
    /// The nodes among `id` and its ancestors that failed.
    fn invalid_ancestors(&self, id: &str) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut stack = vec![id.to_owned()];
        let mut out = Vec::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if matches!(self.validated.get(&id), Some(Err(_))) {
                out.push(id.clone());
            }
            if let Some(inputs) = self.prompt.get(&id).and_then(|n| n["inputs"].as_object()) {
                for value in inputs.values() {
                    if let Some(source) = link_source(value) {
                        stack.push(source);
                    }
                }
            }
        }
        out
    }

    fn check(&mut self, id: &str) -> bool {
        if let Some(result) = self.validated.get(id) {
            return result.is_ok();
        }
        if !self.visiting.insert(id.to_owned()) {
            // Reached again while its own inputs are being checked: a cycle.
            self.validated.insert(
                id.to_owned(),
                Err(vec![reason(
                    "dependency_cycle",
                    "Dependency cycle detected".into(),
                    format!("node {id} depends on itself through its inputs"),
                    json!({}),
                )]),
            );
            return false;
        }
        let node = &self.prompt[id];
        let class = node["class_type"].as_str().unwrap_or_default();
        let def = self
            .defs
            .iter()
            .find(|d| d.name == class)
            .expect("classes checked first")
            .clone();
        let empty = Map::new();
        let inputs = node["inputs"].as_object().unwrap_or(&empty);
        let mut errors = Vec::new();
        let mut valid = true;
        for input in &def.inputs {
            let x = &input.name;
            let Some(val) = inputs.get(x) else {
                if input.required {
                    errors.push(reason(
                        "required_input_missing",
                        "Required input is missing".into(),
                        x.clone(),
                        json!({"input_name": x}),
                    ));
                }
                continue;
            };
            let info = input.config();
            if let Value::Array(link) = val {
                if link.len() != 2 {
                    errors.push(reason(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]".into(),
                        x.clone(),
                        json!({"input_name": x, "input_config": info, "received_value": val}),
                    ));
                    continue;
                }
                let source = link_source(val).unwrap_or_default();
                let slot = link[1].as_u64().map(|s| s as usize);
                let received = self
                    .prompt
                    .get(&source)
                    .and_then(|n| n["class_type"].as_str())
                    .and_then(|c| self.defs.iter().find(|d| d.name == c))
                    .and_then(|d| slot.and_then(|s| d.outputs.get(s)).cloned());
                let Some(received) = received else {
                    valid = false;
                    errors.push(reason(
                        "exception_during_inner_validation",
                        "Exception when validating inner node".into(),
                        format!("'{source}'"),
                        json!({"input_name": x, "input_config": info,
                               "exception_message": format!("'{source}'"),
                               "exception_type": "KeyError", "traceback": [],
                               "linked_node": val}),
                    ));
                    continue;
                };
                if !types_match(&received, &input.kind.name()) {
                    errors.push(reason(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes".into(),
                        format!(
                            "{x}, received_type({received}) mismatch input_type({})",
                            input.kind.name()
                        ),
                        json!({"input_name": x, "input_config": info,
                               "received_type": received, "linked_node": val}),
                    ));
                    continue;
                }
                if !self.check(&source) {
                    valid = false;
                }
                continue;
            }
            let val = match val {
                Value::Object(o) if o.contains_key("__value__") => &o["__value__"],
                v => v,
            };
            if let Err(reason) = check_literal(x, input, val, &info, class) {
                errors.push(reason);
            }
        }
        self.visiting.remove(id);
        // A cycle found below may already have recorded this node.
        if let Some(Err(_)) = self.validated.get(id) {
            return false;
        }
        let result = if errors.is_empty() && valid {
            Ok(())
        } else {
            Err(errors)
        };
        let ok = result.is_ok();
        self.validated.insert(id.to_owned(), result);
        ok
    }
}

/// `[source_id, slot]` → source_id (ComfyUI ids are strings; numbers are accepted as written).
pub fn link_source(value: &Value) -> Option<String> {
    let link = value.as_array().filter(|l| l.len() == 2)?;
    match &link[0] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `validate_node_input`, non-strict: comma-separated unions match when they overlap; `*`
/// matches anything.
fn types_match(received: &str, expected: &str) -> bool {
    if received == expected || received == "*" || expected == "*" {
        return true;
    }
    let r: HashSet<&str> = received.split(',').map(str::trim).collect();
    expected.split(',').map(str::trim).any(|e| r.contains(e))
}

/// A literal input: ComfyUI's coercions (`int(val)`, `float(val)`, `str(val)`, `bool(val)`),
/// then min / max and the combo list.
fn check_literal(
    x: &str,
    input: &super::definitions::InputDef,
    val: &Value,
    info: &Value,
    class: &str,
) -> Result<(), Value> {
    let invalid = |ty: &str, ex: String| {
        reason(
            "invalid_input_type",
            format!("Failed to convert an input value to a {ty} value"),
            format!("{x}, {}, {ex}", python_repr(val)),
            json!({"input_name": x, "input_config": info, "received_value": val,
                   "exception_message": ex}),
        )
    };
    let number = match &input.kind {
        InputType::Int => Some(coerce_int(val).map_err(|e| invalid("INT", e))?),
        InputType::Float => Some(coerce_float(val).map_err(|e| invalid("FLOAT", e))?),
        _ => None,
    };
    if let Some(v) = number {
        let shown = match input.kind {
            InputType::Int => format!("{}", v as i128),
            _ => python_float_str(v),
        };
        if let Some(min) = input.options.get("min").and_then(Value::as_f64)
            && v < min
        {
            return Err(reason(
                "value_smaller_than_min",
                format!("Value {shown} smaller than min of {}", input.options["min"]),
                x.into(),
                json!({"input_name": x, "input_config": info, "received_value": val}),
            ));
        }
        if let Some(max) = input.options.get("max").and_then(Value::as_f64)
            && v > max
        {
            return Err(reason(
                "value_bigger_than_max",
                format!("Value {shown} bigger than max of {}", input.options["max"]),
                x.into(),
                json!({"input_name": x, "input_config": info, "received_value": val}),
            ));
        }
    }
    if let InputType::Combo(options) = &input.kind {
        let text = match val {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // LoadImage validates its file itself (`VALIDATE_INPUTS`), not against the list.
        if class == "LoadImage" && x == "image" {
            if !options.contains(&text) {
                return Err(reason(
                    "custom_validation_failed",
                    "Custom validation failed for node".into(),
                    format!("{x} - Invalid image file: {text}"),
                    json!({"input_name": x}),
                ));
            }
            return Ok(());
        }
        if !options.contains(&text) {
            let (list_info, config) = if options.len() > 20 {
                (format!("(list of length {})", options.len()), Value::Null)
            } else {
                (python_list(options), info.clone())
            };
            return Err(reason(
                "value_not_in_list",
                "Value not in list".into(),
                format!("{x}: '{text}' not in {list_info}"),
                json!({"input_name": x, "input_config": config, "received_value": val}),
            ));
        }
    }
    Ok(())
}

/// Python's `int(v)` for JSON values: numbers truncate toward zero, strings must be integers.
fn coerce_int(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(|i| i as f64)
            .or_else(|| n.as_u64().map(|u| u as f64))
            .or_else(|| n.as_f64().map(f64::trunc))
            .ok_or_else(|| "cannot convert float NaN to integer".into()),
        Value::Bool(b) => Ok(*b as u8 as f64),
        Value::String(s) => s
            .trim()
            .parse::<i128>()
            .map(|i| i as f64)
            .map_err(|_| format!("invalid literal for int() with base 10: {}", python_repr(v))),
        other => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            python_type(other)
        )),
    }
}

fn coerce_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        Value::Bool(b) => Ok(*b as u8 as f64),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("could not convert string to float: {}", python_repr(v))),
        other => Err(format!(
            "float() argument must be a string or a real number, not '{}'",
            python_type(other)
        )),
    }
}

/// Python's `bool(v)` of a JSON value (BOOLEAN inputs, and flags of ComfyUI's bodies).
pub fn python_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn python_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
        Value::String(_) => "str",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float",
    }
}

fn python_repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

fn python_float_str(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// `str(list_of_strings)`: `['a', 'b']`.
fn python_list(options: &[String]) -> String {
    let items: Vec<String> = options.iter().map(|o| format!("'{o}'")).collect();
    format!("[{}]", items.join(", "))
}
