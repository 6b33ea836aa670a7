//! Images and jobs on disk: PNG files in `<data>/outputs`, a sled index beside them,
//! thumbnails in their own cache directory.
//!
//! Write order keeps the index honest: a PNG is written to a temporary name, fsynced and
//! renamed before its index entry is inserted and flushed, so a crash leaves at worst a file
//! without an entry (cleaned at start-up), never an entry without its file. File names are made
//! here (`<job id>_<index>.png`); names from URLs are only ever looked up, never joined to a
//! path before they are found in the index.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::output::png::{a1111_parameters, encode_png};
use crate::pipelines::GenerationParams;
use crate::queue::Job;

/// A gallery entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Monotonic id (sled `generate_id`): the gallery's order, cursor and SSE event id.
    pub id: u64,
    pub filename: String,
    pub width: u32,
    pub height: u32,
    pub job_id: String,
    pub model: String,
    pub prompt: String,
    pub seed: u64,
    /// Unix time in milliseconds.
    pub created_at: u64,
    /// Where a file written outside `outputs/` lives (ComfyUI's SaveImage), relative to the
    /// data directory; `None`: `outputs/<filename>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The safety checker's flag, where it looked at the image: `Some(true)` means it was
    /// flagged and what is stored is the hidden version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsfw: Option<bool>,
}

/// What a stored image says about itself: its PNG `parameters` text and its gallery fields.
pub struct ImageMeta {
    /// A1111's `parameters` text chunk.
    pub parameters: String,
    pub prompt: String,
    pub seed: u64,
    pub nsfw: Option<bool>,
}

impl ImageMeta {
    /// A generated image's: A1111's text for its parameters.
    pub fn generated(params: &GenerationParams, model: &str, nsfw: Option<bool>) -> Self {
        Self {
            parameters: a1111_parameters(params, model),
            prompt: params.prompt.clone(),
            seed: params.seed,
            nsfw,
        }
    }
}

pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    /// id (big-endian u64) → ImageRecord
    images: sled::Tree,
    /// filename → id
    names: sled::Tree,
    /// API key id → its rate-limit bucket level (`auth/limits.rs`)
    rate_levels: sled::Tree,
    /// id (big-endian u64) → a gateway chat message and its answer (JSON)
    chat: sled::Tree,
    data_dir: PathBuf,
    outputs: PathBuf,
    thumbnails: PathBuf,
}

const THUMB_SIZE: u32 = 256;

fn db_err(e: sled::Error) -> Error {
    Error::Io(std::io::Error::other(e))
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Io(std::io::Error::other(e))
}

impl Store {
    pub fn open(data_dir: &Path, thumbnails: &Path) -> Result<Self, Error> {
        let outputs = data_dir.join("outputs");
        fs::create_dir_all(&outputs)?;
        fs::create_dir_all(thumbnails)?;
        let db = sled::open(data_dir.join("index")).map_err(db_err)?;
        let store = Self {
            jobs: db.open_tree("jobs").map_err(db_err)?,
            images: db.open_tree("images").map_err(db_err)?,
            names: db.open_tree("names").map_err(db_err)?,
            rate_levels: db.open_tree("rate_levels").map_err(db_err)?,
            chat: db.open_tree("chat").map_err(db_err)?,
            db,
            data_dir: data_dir.to_owned(),
            outputs,
            thumbnails: thumbnails.to_owned(),
        };
        store.reconcile()?;
        Ok(store)
    }

    /// Start-up repair after a crash: drop half-written files and index entries whose file is
    /// gone.
    fn reconcile(&self) -> Result<(), Error> {
        for entry in fs::read_dir(&self.outputs)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        for record in self.images_after(0)? {
            if !self.image_path(&record).is_file() {
                tracing::warn!(filename = %record.filename, "index entry without its file: removed");
                self.remove_index(&record)?;
            }
        }
        Ok(())
    }

    /// Counts this start among the server's starts (1 the first time) and persists the count:
    /// SSE event ids are numbered per server life so that none is issued twice.
    pub fn count_start(&self) -> Result<u32, Error> {
        let life = self
            .db
            .update_and_fetch("server_starts", |old| {
                let n = old.map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
                Some(n.wrapping_add(1).to_be_bytes().to_vec())
            })
            .map_err(db_err)?
            .map_or(1, |b| {
                u32::from_be_bytes(b.as_ref().try_into().unwrap_or_default())
            });
        self.db.flush().map_err(db_err)?;
        Ok(life)
    }

    /// Saves a key's rate-limit bucket level (requests left, at epoch milliseconds), flushed
    /// before the request is answered so that a crash right after it keeps it.
    pub fn put_rate_level(
        &self,
        key_id: &str,
        remaining: u32,
        at_millis: u64,
    ) -> Result<(), Error> {
        let mut value = remaining.to_be_bytes().to_vec();
        value.extend_from_slice(&at_millis.to_be_bytes());
        self.rate_levels
            .insert(key_id.as_bytes(), value)
            .map_err(db_err)?;
        self.rate_levels.flush().map_err(db_err)?;
        Ok(())
    }

    /// A key's last saved bucket level: (requests left, at epoch milliseconds).
    pub fn rate_level(&self, key_id: &str) -> Result<Option<(u32, u64)>, Error> {
        let Some(value) = self.rate_levels.get(key_id.as_bytes()).map_err(db_err)? else {
            return Ok(None);
        };
        let (remaining, at) = value.split_at(4.min(value.len()));
        Ok(match (remaining.try_into(), at.try_into()) {
            (Ok(r), Ok(a)) => Some((u32::from_be_bytes(r), u64::from_be_bytes(a))),
            _ => None,
        })
    }

    /// A new id for a chat message, increasing.
    pub fn next_chat_id(&self) -> Result<u64, Error> {
        self.db.generate_id().map_err(db_err)
    }

    /// Keeps a chat message (the gateway's JSON record) under `id`.
    pub fn put_chat(&self, id: u64, record: &serde_json::Value) -> Result<(), Error> {
        self.chat
            .insert(
                id.to_be_bytes(),
                serde_json::to_vec(record).map_err(json_err)?,
            )
            .map_err(db_err)?;
        self.chat.flush().map_err(db_err)?;
        Ok(())
    }

    /// The chat messages, newest first.
    pub fn chat_messages(&self) -> Result<Vec<serde_json::Value>, Error> {
        self.chat
            .iter()
            .rev()
            .map(|entry| {
                let (_, value) = entry.map_err(db_err)?;
                serde_json::from_slice(&value).map_err(json_err)
            })
            .collect()
    }

    pub fn put_job(&self, job: &Job) -> Result<(), Error> {
        self.jobs
            .insert(
                job.job_id.as_bytes(),
                serde_json::to_vec(job).map_err(json_err)?,
            )
            .map_err(db_err)?;
        self.jobs.flush().map_err(db_err)?;
        Ok(())
    }

    pub fn delete_job(&self, job_id: &str) -> Result<(), Error> {
        self.jobs.remove(job_id.as_bytes()).map_err(db_err)?;
        self.jobs.flush().map_err(db_err)?;
        Ok(())
    }

    pub fn jobs(&self) -> Result<Vec<Job>, Error> {
        self.jobs
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v.map_err(db_err)?).map_err(json_err))
            .collect()
    }

    /// Writes image `index` of `job` and indexes it. Re-running an interrupted job rewrites the
    /// same file name and replaces its entry, so a job's images exist once.
    pub fn save_image(
        &self,
        job: &Job,
        index: u32,
        image: &image::RgbImage,
        meta: ImageMeta,
    ) -> Result<ImageRecord, Error> {
        let filename = format!("{}_{index}.png", job.job_id);
        let path = self.outputs.join(&filename);
        let tmp = self.outputs.join(format!("{filename}.tmp"));
        {
            let file = File::create(&tmp)?;
            let mut writer = BufWriter::new(file);
            encode_png(image, &meta.parameters, &mut writer)?;
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.outputs)?.sync_all()?;
        self.index(ImageRecord {
            id: 0,
            filename,
            width: image.width(),
            height: image.height(),
            job_id: job.job_id.clone(),
            model: job.model.clone(),
            prompt: meta.prompt,
            seed: meta.seed,
            created_at: crate::queue::now_ms(),
            source: None,
            nsfw: meta.nsfw,
        })
    }

    /// Keeps an uploaded image for a job under `uploads/`, written as the gallery's files are
    /// (temporary name, fsync, rename); returns its path relative to the data directory.
    pub fn save_upload(&self, job_id: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
        let dir = self.data_dir.join("uploads");
        fs::create_dir_all(&dir)?;
        let name = format!("{job_id}.upload");
        let tmp = dir.join(format!("{name}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, dir.join(&name))?;
        Ok(PathBuf::from("uploads").join(name))
    }

    /// An image a job was given (`path` relative to the data directory: an upload, or a
    /// gallery file): its bytes, and its pixels as RGB (alpha dropped, as PIL's
    /// `convert("RGB")` drops it).
    pub fn read_input(&self, path: &Path) -> Result<(Vec<u8>, image::RgbImage), Error> {
        let bytes = fs::read(self.data_dir.join(path)).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("the job's input image {}: {e}", path.display()),
            ))
        })?;
        let pixels = image::load_from_memory(&bytes)
            .map_err(|e| Error::request(format!("not an image: {e}")))?
            .to_rgb8();
        Ok((bytes, pixels))
    }

    /// Deletes `job`'s upload, once the job has ended.
    pub fn remove_upload(&self, job: &Job) {
        if let Some(path) = job.upload() {
            let _ = fs::remove_file(self.data_dir.join(path));
        }
    }

    /// The data directory, which relative paths in jobs start from.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Indexes an image file written elsewhere under the data directory (ComfyUI's
    /// SaveImage output), so the gallery lists it; `record.filename` is its gallery name.
    pub fn index_file(&self, path: &Path, record: ImageRecord) -> Result<ImageRecord, Error> {
        let source = path.strip_prefix(&self.data_dir).unwrap_or(path).to_owned();
        self.index(ImageRecord {
            source: Some(source),
            ..record
        })
    }

    /// Adds `record` under a new id, replacing an entry of the same name (a re-run job).
    fn index(&self, record: ImageRecord) -> Result<ImageRecord, Error> {
        if let Some(old) = self.image(&record.filename)? {
            self.remove_index(&old)?;
            let _ = fs::remove_file(self.thumbnails.join(thumb_name(&record.filename)));
        }
        let record = ImageRecord {
            // sled ids start at 0; gallery ids start at 1 so that "after 0" means "all".
            id: self.db.generate_id().map_err(db_err)? + 1,
            ..record
        };
        self.images
            .insert(
                record.id.to_be_bytes(),
                serde_json::to_vec(&record).map_err(json_err)?,
            )
            .map_err(db_err)?;
        self.names
            .insert(record.filename.as_bytes(), &record.id.to_be_bytes())
            .map_err(db_err)?;
        self.db.flush().map_err(db_err)?;
        Ok(record)
    }

    fn remove_index(&self, record: &ImageRecord) -> Result<(), Error> {
        self.images
            .remove(record.id.to_be_bytes())
            .map_err(db_err)?;
        self.names
            .remove(record.filename.as_bytes())
            .map_err(db_err)?;
        self.db.flush().map_err(db_err)?;
        Ok(())
    }

    /// Newest first, starting below `before` (an image id), at most `limit`.
    pub fn list_images(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<ImageRecord>, Error> {
        let range = match before {
            Some(id) => self.images.range(..id.to_be_bytes()),
            None => self.images.range::<[u8; 8], _>(..),
        };
        range
            .rev()
            .take(limit)
            .map(|kv| serde_json::from_slice(&kv.map_err(db_err)?.1).map_err(json_err))
            .collect()
    }

    /// Oldest first, every image with an id above `after` (gallery SSE replay).
    pub fn images_after(&self, after: u64) -> Result<Vec<ImageRecord>, Error> {
        self.images
            .range((after + 1).to_be_bytes()..)
            .map(|kv| serde_json::from_slice(&kv.map_err(db_err)?.1).map_err(json_err))
            .collect()
    }

    /// The record of an indexed file name; `None` for anything else, whatever it contains.
    pub fn image(&self, filename: &str) -> Result<Option<ImageRecord>, Error> {
        let Some(id) = self.names.get(filename.as_bytes()).map_err(db_err)? else {
            return Ok(None);
        };
        let Some(value) = self.images.get(&id).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(&value).map(Some).map_err(json_err)
    }

    /// The file of an indexed image.
    pub fn read_image(&self, filename: &str) -> Result<Vec<u8>, Error> {
        let record = self.image(filename)?.ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "image `{filename}` is not in the gallery"
            )))
        })?;
        Ok(fs::read(self.image_path(&record))?)
    }

    /// Path of an indexed image.
    pub fn image_path(&self, record: &ImageRecord) -> PathBuf {
        match &record.source {
            Some(source) => self.data_dir.join(source),
            None => self.outputs.join(&record.filename),
        }
    }

    pub fn delete_image(&self, record: &ImageRecord) -> Result<(), Error> {
        self.remove_index(record)?;
        let _ = fs::remove_file(self.thumbnails.join(thumb_name(&record.filename)));
        fs::remove_file(self.image_path(record))?;
        Ok(())
    }

    /// The JPEG thumbnail of an indexed image (at most 256 px on the long side), made with
    /// fast_image_resize on first request and cached.
    pub fn thumbnail(&self, record: &ImageRecord) -> Result<PathBuf, Error> {
        let path = self.thumbnails.join(thumb_name(&record.filename));
        if path.is_file() {
            return Ok(path);
        }
        let source = image::open(self.image_path(record))
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
            .to_rgb8();
        let scale = THUMB_SIZE as f32 / source.width().max(source.height()) as f32;
        let (w, h) = if scale < 1.0 {
            (
                ((source.width() as f32 * scale).round() as u32).max(1),
                ((source.height() as f32 * scale).round() as u32).max(1),
            )
        } else {
            (source.width(), source.height())
        };
        let mut thumb = image::RgbImage::new(w, h);
        fast_image_resize::Resizer::new()
            .resize(&source, &mut thumb, None)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("jpg.tmp");
        {
            let mut out = BufWriter::new(File::create(&tmp)?);
            out.write_all(&crate::output::preview::jpeg(&thumb, 85))?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

fn thumb_name(filename: &str) -> String {
    format!("{}.jpg", filename.trim_end_matches(".png"))
}
