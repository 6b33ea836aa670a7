//! Running a validated prompt: the output nodes' ancestors in dependency order, each node's
//! outputs cached between prompts under a signature of its inputs (ComfyUI's
//! `execution.py` with its default cache: a node whose class, literal inputs and ancestors
//! are unchanged is not run again, and is reported in `execution_cached`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use burn::prelude::Backend;
use serde_json::{Map, Value};

use super::nodes::{self, Host, NodeValue};
use super::validate::link_source;
use crate::Error;

/// What happened to one prompt.
pub struct Execution {
    /// Nodes whose cached outputs were reused, in execution order.
    pub cached: Vec<String>,
    /// The UI output of each output node (`{"images": [...]}`), cached ones included.
    pub outputs: Map<String, Value>,
}

/// A node failed: ComfyUI's `execution_error` fields.
#[derive(Debug)]
pub struct NodeFailure {
    pub node_id: String,
    pub node_type: String,
    pub executed: Vec<String>,
    pub error: Error,
}

struct Cached<B: Backend> {
    signature: u64,
    values: Vec<NodeValue<B>>,
    ui: Option<Value>,
}

/// The executor of the runner thread; its cache lives as long as the server.
pub struct Executor<B: Backend> {
    cache: HashMap<String, Cached<B>>,
}

impl<B: Backend> Default for Executor<B> {
    fn default() -> Self {
        Self {
            cache: HashMap::new(),
        }
    }
}

impl<B: Backend> Executor<B> {
    /// Drops every cached output (`/free` with `unload_models`).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    pub fn run(
        &mut self,
        prompt: &Map<String, Value>,
        outputs: &[String],
        host: &mut dyn Host<B>,
    ) -> Result<Execution, NodeFailure> {
        let order = execution_order(prompt, outputs);
        let mut signatures: HashMap<String, u64> = HashMap::new();
        for id in &order {
            let node = &prompt[id.as_str()];
            let class = node["class_type"].as_str().unwrap_or_default();
            let changed = nodes::is_changed(class, &node["inputs"], host);
            let signature = signature(prompt, id, &signatures, changed);
            signatures.insert(id.clone(), signature);
        }
        // ComfyUI's `clean_unused`: only what this prompt can reuse stays, so a model whose
        // node changed is released before its successor loads.
        self.cache
            .retain(|id, c| signatures.get(id) == Some(&c.signature));
        let cached: Vec<String> = order
            .iter()
            .filter(|id| {
                self.cache
                    .get(*id)
                    .is_some_and(|c| c.signature == signatures[*id])
            })
            .cloned()
            .collect();
        host.cached(&cached);
        let mut execution = Execution {
            cached,
            outputs: Map::new(),
        };
        let mut executed = Vec::new();
        for id in &order {
            let node = &prompt[id];
            let class = node["class_type"].as_str().unwrap_or_default().to_owned();
            if execution.cached.contains(id) {
                if let Some(ui) = &self.cache[id].ui {
                    execution.outputs.insert(id.clone(), ui.clone());
                    host.executed(id, ui);
                }
                continue;
            }
            let fail = |error: Error, executed: &[String]| NodeFailure {
                node_id: id.clone(),
                node_type: class.clone(),
                executed: executed.to_vec(),
                error,
            };
            host.executing(id);
            let inputs = node["inputs"].as_object().cloned().unwrap_or_default();
            let mut resolved: HashMap<String, NodeValue<B>> = HashMap::new();
            let mut literals = Map::new();
            for (name, value) in &inputs {
                match link_source(value) {
                    Some(source) if value.as_array().is_some() => {
                        let slot = value[1].as_u64().unwrap_or(0) as usize;
                        let upstream = self
                            .cache
                            .get(&source)
                            .and_then(|c| c.values.get(slot))
                            .cloned()
                            .ok_or_else(|| {
                                fail(
                                    Error::request(format!("input {name} has no value")),
                                    &executed,
                                )
                            })?;
                        resolved.insert(name.clone(), upstream);
                    }
                    _ => {
                        let value = match value {
                            Value::Object(o) if o.contains_key("__value__") => {
                                o["__value__"].clone()
                            }
                            v => v.clone(),
                        };
                        literals.insert(name.clone(), value);
                    }
                }
            }
            let run = nodes::run(&class, id, resolved, &literals, prompt, host)
                .map_err(|e| fail(e, &executed))?;
            executed.push(id.clone());
            if let Some(ui) = &run.ui {
                execution.outputs.insert(id.clone(), ui.clone());
                host.executed(id, ui);
            }
            self.cache.insert(
                id.clone(),
                Cached {
                    signature: signatures[id],
                    values: run.values,
                    ui: run.ui,
                },
            );
        }
        Ok(execution)
    }
}

/// The ancestors of `outputs` (and the outputs), each after its inputs. Validation has
/// refused cycles.
fn execution_order(prompt: &Map<String, Value>, outputs: &[String]) -> Vec<String> {
    fn visit(
        prompt: &Map<String, Value>,
        id: &str,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !done.insert(id.to_owned()) {
            return;
        }
        if let Some(inputs) = prompt.get(id).and_then(|n| n["inputs"].as_object()) {
            for value in inputs.values() {
                if let Some(source) = link_source(value).filter(|_| value.is_array()) {
                    visit(prompt, &source, done, order);
                }
            }
        }
        order.push(id.to_owned());
    }
    let mut done = HashSet::new();
    let mut order = Vec::new();
    for output in outputs {
        visit(prompt, output, &mut done, &mut order);
    }
    order
}

/// A node's class, its `IS_CHANGED` value and literal inputs, with each link replaced by its
/// source's signature and slot.
fn signature(
    prompt: &Map<String, Value>,
    id: &str,
    known: &HashMap<String, u64>,
    changed: Option<u64>,
) -> u64 {
    let node = &prompt[id];
    let mut hasher = DefaultHasher::new();
    node["class_type"]
        .as_str()
        .unwrap_or_default()
        .hash(&mut hasher);
    changed.hash(&mut hasher);
    if let Some(inputs) = node["inputs"].as_object() {
        for (name, value) in inputs {
            name.hash(&mut hasher);
            match link_source(value).filter(|_| value.is_array()) {
                Some(source) => {
                    known.get(&source).hash(&mut hasher);
                    value[1].to_string().hash(&mut hasher);
                }
                None => value.to_string().hash(&mut hasher),
            }
        }
    }
    hasher.finish()
}
