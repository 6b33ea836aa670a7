//! `/view` and `/upload/image` (ComfyUI `server.py` `view_image`, `image_upload`): files of
//! the input, output and temp folders, never a path outside them.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use poem::http::{StatusCode, header};
use poem::web::{Data, Json, Multipart, Query};
use poem::{IntoResponse, Response, handler};
use serde::Deserialize;
use serde_json::json;

use super::{ComfyState, bare};
use crate::graph::outputs::is_inside;

#[derive(Deserialize)]
pub struct ViewQuery {
    filename: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    subfolder: Option<String>,
    preview: Option<String>,
    channel: Option<String>,
}

/// A file name's ` [output]` / ` [input]` / ` [temp]` annotation (`annotated_filepath`).
fn annotated(name: &str) -> (&str, Option<&str>) {
    for kind in ["output", "input", "temp"] {
        if let Some(base) = name.strip_suffix(&format!(" [{kind}]")) {
            return (base, Some(kind));
        }
    }
    (name, None)
}

fn content_type(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        _ => "application/octet-stream",
    }
}

#[handler]
pub async fn view(state: Data<&Arc<ComfyState>>, Query(q): Query<ViewQuery>) -> Response {
    let Some(filename) = q.filename.as_deref() else {
        return bare(StatusCode::NOT_FOUND);
    };
    let (name, annotation) = annotated(filename);
    if name.is_empty() || name.starts_with('/') || name.contains("..") || name.contains('\0') {
        return bare(StatusCode::BAD_REQUEST);
    }
    let kind = annotation.or(q.kind.as_deref()).unwrap_or("output");
    let Some(dir) = state
        .shared
        .comfy_folders
        .read()
        .expect("folders lock")
        .dir(kind)
    else {
        return bare(StatusCode::BAD_REQUEST);
    };
    let subfolder = q.subfolder.as_deref().unwrap_or("");
    if !is_inside(subfolder) || subfolder.contains('\0') {
        return bare(StatusCode::FORBIDDEN);
    }
    let path: PathBuf = dir.join(subfolder).join(name);
    if !is_inside(name) || !path.is_file() {
        return bare(StatusCode::NOT_FOUND);
    }
    let Ok(bytes) = std::fs::read(&path) else {
        return bare(StatusCode::NOT_FOUND);
    };
    if let Some(preview) = &q.preview {
        return match converted_preview(&bytes, preview) {
            Some((bytes, mime)) => image_response(bytes, mime, name),
            None => bare(StatusCode::BAD_REQUEST),
        };
    }
    match q.channel.as_deref().unwrap_or("rgba") {
        "rgba" => image_response(bytes, content_type(name), name),
        channel @ ("rgb" | "a") => {
            let Ok(image) = image::load_from_memory(&bytes) else {
                return bare(StatusCode::BAD_REQUEST);
            };
            let out = if channel == "rgb" {
                image::DynamicImage::ImageRgb8(image.to_rgb8())
            } else {
                // The alpha as an RGBA image whose colour is zero (ComfyUI `view_image`).
                let mut rgba = image.to_rgba8();
                for p in rgba.pixels_mut() {
                    *p = image::Rgba([0, 0, 0, p[3]]);
                }
                image::DynamicImage::ImageRgba8(rgba)
            };
            let mut png = Vec::new();
            if out
                .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                .is_err()
            {
                return bare(StatusCode::INTERNAL_SERVER_ERROR);
            }
            image_response(png, "image/png", name)
        }
        _ => bare(StatusCode::BAD_REQUEST),
    }
}

/// `preview=<webp|jpeg>;<quality>`: the image re-encoded (WebP is lossless in this build).
fn converted_preview(bytes: &[u8], preview: &str) -> Option<(Vec<u8>, &'static str)> {
    let mut parts = preview.split(';');
    let format = parts.next().unwrap_or("webp");
    let quality: u8 = parts.next().and_then(|q| q.parse().ok()).unwrap_or(90);
    let image = image::load_from_memory(bytes).ok()?;
    let mut out = Vec::new();
    if format == "jpeg" && !image.color().has_alpha() {
        let encoder =
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.min(100));
        image.to_rgb8().write_with_encoder(encoder).ok()?;
        Some((out, "image/jpeg"))
    } else {
        image
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::WebP)
            .ok()?;
        Some((out, "image/webp"))
    }
}

fn image_response(bytes: Vec<u8>, mime: &'static str, name: &str) -> Response {
    let disposition = format!("filename=\"{}\"", name.replace('"', ""));
    bytes
        .with_content_type(mime)
        .with_header(header::CONTENT_DISPOSITION, disposition)
        .into_response()
}

/// `POST /upload/image` (multipart: `image`, `overwrite`, `type`, `subfolder`): a name that
/// exists gets ` (1)`, ` (2)`… unless the bytes are the same, which reuses it.
#[handler]
pub async fn upload_image(state: Data<&Arc<ComfyState>>, mut form: Multipart) -> Response {
    let mut file: Option<(String, Vec<u8>)> = None;
    let (mut overwrite, mut kind, mut subfolder) = (false, "input".to_owned(), String::new());
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return bare(StatusCode::BAD_REQUEST),
        };
        match field.name().unwrap_or_default() {
            "image" => {
                let Some(name) = field.file_name().map(str::to_owned) else {
                    return bare(StatusCode::BAD_REQUEST);
                };
                match field.bytes().await {
                    Ok(bytes) if bytes.len() <= super::MAX_UPLOAD_BYTES => {
                        file = Some((name, bytes))
                    }
                    Ok(_) => return bare(StatusCode::PAYLOAD_TOO_LARGE),
                    Err(_) => return bare(StatusCode::PAYLOAD_TOO_LARGE),
                }
            }
            "overwrite" => {
                overwrite = matches!(field.text().await.as_deref(), Ok("true" | "1"));
            }
            "type" => kind = field.text().await.unwrap_or_default(),
            "subfolder" => subfolder = field.text().await.unwrap_or_default(),
            _ => {}
        }
    }
    let Some((name, bytes)) = file else {
        return bare(StatusCode::BAD_REQUEST);
    };
    let name = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() || name.starts_with('.') || !is_inside(&subfolder) {
        return bare(StatusCode::BAD_REQUEST);
    }
    let Some(dir) = state
        .shared
        .comfy_folders
        .read()
        .expect("folders lock")
        .dir(&kind)
    else {
        return bare(StatusCode::BAD_REQUEST);
    };
    let folder = dir.join(&subfolder);
    if std::fs::create_dir_all(&folder).is_err() {
        return bare(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_owned(), format!(".{e}")),
        None => (name.clone(), String::new()),
    };
    let mut final_name = name.clone();
    let mut n = 1;
    while !overwrite && folder.join(&final_name).exists() {
        if std::fs::read(folder.join(&final_name)).is_ok_and(|old| old == bytes) {
            break;
        }
        final_name = format!("{stem} ({n}){ext}");
        n += 1;
    }
    if std::fs::write(folder.join(&final_name), &bytes).is_err() {
        return bare(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Json(json!({"name": final_name, "subfolder": subfolder, "type": kind})).into_response()
}
