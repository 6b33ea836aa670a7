//! ComfyUI's output and temp folders: SaveImage's `<prefix>_<counter:05>_.png` names
//! (`folder_paths.get_save_image_path`) and its PNG text chunks (`prompt`, then one per
//! `extra_pnginfo` key, as `json.dumps` writes them).

use std::fs;
use std::path::{Component, Path};

use serde_json::{Map, Value, json};

use crate::Error;
use crate::output::png::encode_png_with_text;

/// Where a saved image went, as ComfyUI reports it in `executed` and history outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedImage {
    pub filename: String,
    pub subfolder: String,
    /// "output" or "temp".
    pub kind: &'static str,
}

impl SavedImage {
    pub fn to_json(&self) -> Value {
        json!({"filename": self.filename, "subfolder": self.subfolder, "type": self.kind})
    }
}

/// Writes `images` under `dir` as ComfyUI's SaveImage names them: the prefix may hold a
/// subfolder; the counter continues after the highest one already there.
pub fn save_images(
    dir: &Path,
    kind: &'static str,
    prefix: &str,
    images: &[image::RgbImage],
    prompt: Option<&Value>,
    extra_pnginfo: Option<&Map<String, Value>>,
) -> Result<Vec<SavedImage>, Error> {
    let (subfolder, base) = match prefix.rsplit_once('/') {
        Some((sub, base)) => (sub.to_owned(), base.to_owned()),
        None => (String::new(), prefix.to_owned()),
    };
    let folder = dir.join(&subfolder);
    if !is_inside(&subfolder) {
        return Err(Error::request(format!(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
            folder.display(),
            dir.display()
        )));
    }
    fs::create_dir_all(&folder)?;
    let mut counter = next_counter(&folder, &base)?;
    let mut chunks: Vec<(String, String)> = Vec::new();
    if let Some(prompt) = prompt {
        chunks.push(("prompt".into(), python_json(prompt)));
    }
    for (key, value) in extra_pnginfo.into_iter().flatten() {
        chunks.push((key.clone(), python_json(value)));
    }
    let chunk_refs: Vec<(&str, &str)> = chunks
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut saved = Vec::new();
    for image in images {
        let filename = format!("{base}_{counter:05}_.png");
        let path = folder.join(&filename);
        let tmp = folder.join(format!(".{filename}.tmp"));
        {
            let mut file = fs::File::create(&tmp)?;
            encode_png_with_text(image, &chunk_refs, &mut file)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        saved.push(SavedImage {
            filename,
            subfolder: subfolder.clone(),
            kind,
        });
        counter += 1;
    }
    Ok(saved)
}

/// A relative path with no `..`, root or prefix.
pub fn is_inside(relative: &str) -> bool {
    Path::new(relative)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// One more than the highest counter of `<base>_NNNNN_*` in `folder`, or 1.
fn next_counter(folder: &Path, base: &str) -> Result<u64, Error> {
    let mut highest = 0;
    for entry in fs::read_dir(folder)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('_')) else {
            continue;
        };
        if let Some(n) = rest.split('_').next().and_then(|d| d.parse::<u64>().ok()) {
            highest = highest.max(n);
        }
    }
    Ok(highest + 1)
}

/// `json.dumps(value)`: `", "` and `": "` separators, non-ASCII escaped.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_python_json(value, &mut out);
    out
}

fn write_python_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_string(k, out);
                out.push_str(": ");
                write_python_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_python_string(s, out),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e16 => {
                out.push_str(&format!("{f:.1}"))
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What the native gallery shows of a graph: its first model file (`ckpt_name`,
/// `unet_name`), prompt text (`text`, `text_g`, `t5xxl`) and seed (`seed`, `noise_seed`)
/// given as literals, in node id order; empty or 0 where there is none.
pub fn gallery_summary(prompt: &Map<String, Value>) -> (String, String, u64) {
    let mut ids: Vec<&String> = prompt.keys().collect();
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
    let first = |names: &[&str]| {
        ids.iter().find_map(|id| {
            let inputs = prompt[id.as_str()].get("inputs")?;
            names
                .iter()
                .find_map(|n| inputs.get(*n).filter(|v| !v.is_array()).cloned())
        })
    };
    let text = |names: &[&str]| {
        first(names)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    (
        text(&["ckpt_name", "unet_name"]),
        text(&["text", "text_g", "t5xxl"]),
        first(&["seed", "noise_seed"])
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
    )
}
