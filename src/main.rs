//! The `hanga` command: `hanga serve` (the HTTP server), `hanga generate` (one image, from
//! the command line), `hanga keys` (API keys) and `hanga bench` (network timings on random
//! weights).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use hanga::auth::{KeyFile, Rate, Scope};
use hanga::backend::{DeviceKind, Precision};
use hanga::bench::{BenchOptions, Size};
use hanga::output::png::{a1111_parameters, encode_png};
use hanga::pipelines::{
    DEFAULT_STRENGTH, Flow, GenerationRequest, InitImage, MIN_STRENGTH, Pipeline, image_size,
};
use hanga::registry::Registry;
use hanga::server::ServeOptions;
use hanga::text::LongPrompt;
use hanga::{Error, with_backend};

#[derive(Parser)]
#[command(
    name = "hanga",
    version,
    about = "Text-to-image generation on burn: SDXL and friends, served over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (Swagger UI at /docs).
    Serve(ServeArgs),
    /// Generate one image and write it as PNG (with A1111-style `parameters` metadata).
    Generate(GenerateArgs),
    /// Time full-size networks on random weights (no model files needed).
    Bench(BenchArgs),
    /// API keys: create, list, revoke (also while `hanga serve` runs: it re-reads them
    /// within a second).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once: only its hash is kept).
    Create {
        /// What the key is for (shown by `keys list`).
        #[arg(long)]
        name: String,
        /// A request budget, refilled evenly: N/second, N/minute, N/hour or N/day (e.g.
        /// 1000/hour). None: no limit.
        #[arg(long)]
        rate: Option<Rate>,
        /// generate (queue and cancel jobs), read (jobs, streams, images, models), admin
        /// (everything, and metrics, rescans).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "generate,read"
        )]
        scopes: Vec<Scope>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// List the keys (never their secrets).
    List {
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Revoke a key, by its id (or its name, where one key has it).
    Revoke {
        key: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Args)]
struct DataDirArg {
    /// The data directory of the `hanga serve` the keys are for.
    #[arg(long, env = "HANGA_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "HANGA_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "HANGA_PORT", default_value_t = 8000)]
    port: u16,
    /// Images (`outputs/`) and the job and image index live here.
    #[arg(long, env = "HANGA_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// LoRA files (default: `<data-dir>/loras`).
    #[arg(long, env = "HANGA_LORAS")]
    loras: Option<PathBuf>,
    /// Cache of gallery thumbnails.
    #[arg(long, env = "HANGA_THUMBNAILS_DIR", default_value = "thumbnails")]
    thumbnails_dir: PathBuf,
    /// Workflow templates, `*.toml` / `*.json` (default: `<data-dir>/templates`), beside the
    /// built-in ones.
    #[arg(long, env = "HANGA_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// Extra directories of model manifests (`model_manifests/` is always read if present).
    #[arg(long = "manifests", env = "HANGA_MANIFESTS", value_delimiter = ',')]
    manifests: Vec<PathBuf>,
    /// ComfyUI `models/` folders (checkpoints/, diffusion_models/, text_encoders/, vae/,
    /// loras/): their files become models, each read from its tensors; a `<stem>.toml`
    /// beside a file adds what tensors cannot tell.
    #[arg(long = "models-dir", env = "HANGA_MODELS_DIR", value_delimiter = ',')]
    models_dirs: Vec<PathBuf>,
    /// cpu, or a GPU backend this binary was built with (cuda, wgpu).
    #[arg(long, env = "HANGA_DEVICE")]
    device: Option<DeviceKind>,
    /// f32 | bf16: the float type of weights and computation (default: bf16 on a GPU, f32 on
    /// the CPU).
    #[arg(long = "dtype", env = "HANGA_DTYPE")]
    precision: Option<Precision>,
    /// The model used when a request names none (default: the first manifest by id).
    #[arg(long, env = "HANGA_DEFAULT_MODEL")]
    default_model: Option<String>,
    /// text | json
    #[arg(long, env = "HANGA_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Allow browser requests from this origin (CORS is off without it).
    #[arg(long, env = "HANGA_CORS_ORIGIN")]
    cors_origin: Option<String>,
    /// The address clients reach this server at (e.g. `https://images.example.com` behind a
    /// proxy), for absolute image URLs (OpenAI's `response_format: url`); default: the Host
    /// each request was sent to.
    #[arg(long, env = "HANGA_PUBLIC_URL")]
    public_url: Option<String>,
    /// Jobs that may wait at once; more get 429.
    #[arg(long, env = "HANGA_QUEUE_CAPACITY", default_value_t = 1000)]
    queue_capacity: usize,
    /// Least milliseconds between two previews of a job on its SSE stream.
    #[arg(long, env = "HANGA_PREVIEW_INTERVAL_MS", default_value_t = 250)]
    preview_interval_ms: u64,
    /// The port of the ComfyUI API (same --host; 0 = any free port), so ComfyUI's clients
    /// work with their defaults.
    #[arg(long, env = "HANGA_COMFYUI_PORT", default_value_t = 8188)]
    comfyui_port: u16,
    /// Do not serve the ComfyUI API.
    #[arg(long, env = "HANGA_NO_COMFYUI")]
    no_comfyui: bool,
    /// ComfyUI's previews on its WebSocket: none (ComfyUI's default; clients that take every
    /// binary frame for an output image need it) | latent2rgb | auto (= latent2rgb).
    #[arg(long, env = "HANGA_PREVIEW_METHOD", default_value = "none",
          value_parser = ["none", "auto", "latent2rgb"])]
    preview_method: String,
    /// Serve without API keys even on an address other machines reach (without it, such an
    /// address needs a key from `hanga keys create`; loopback needs none until one exists).
    #[arg(long, env = "HANGA_NO_AUTH")]
    no_auth: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Extra directories of model manifests (`model_manifests/` is always read if present).
    #[arg(long = "manifests", env = "HANGA_MANIFESTS", value_delimiter = ',')]
    manifests: Vec<PathBuf>,
    /// ComfyUI `models/` folders (checkpoints/, diffusion_models/, text_encoders/, vae/,
    /// loras/): their files become models, each read from its tensors; a `<stem>.toml`
    /// beside a file adds what tensors cannot tell.
    #[arg(long = "models-dir", env = "HANGA_MODELS_DIR", value_delimiter = ',')]
    models_dirs: Vec<PathBuf>,
    /// Model id (a manifest's `id`, or a models folder file's stem).
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    guidance_scale: Option<f32>,
    /// euler | euler_ancestral | dpmpp_2m
    #[arg(long)]
    sampler: Option<String>,
    /// normal | karras
    #[arg(long)]
    scheduler: Option<String>,
    /// Random when absent; the PNG records the seed used.
    #[arg(long)]
    seed: Option<u64>,
    /// chunk (75-token chunks, as A1111/ComfyUI) | truncate (cut at 77, as diffusers)
    #[arg(long)]
    long_prompt: Option<LongPrompt>,
    /// Image to image from this PNG, JPEG or WebP file (as diffusers' img2img pipelines):
    /// width and height default to its size, down to the model's multiple.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// With --init-image: how far the image is noised, 0.01 to 1 (default 0.3).
    #[arg(long, requires = "init_image")]
    strength: Option<f64>,
    /// cpu, or a GPU backend this binary was built with (cuda, wgpu).
    #[arg(long, env = "HANGA_DEVICE")]
    device: Option<DeviceKind>,
    /// f32 | bf16: the float type of weights and computation (default: bf16 on a GPU, f32 on
    /// the CPU).
    #[arg(long = "dtype", env = "HANGA_DTYPE")]
    precision: Option<Precision>,
    /// Output PNG.
    #[arg(short, long, default_value = "out.png")]
    output: PathBuf,
}

/// Times full-size networks with random weights (no model files): the SDXL UNet at 1024² with
/// CFG, the FLUX.1 dev transformer, the SDXL and Flux VAE decoders.
#[derive(Args)]
struct BenchArgs {
    #[arg(long, env = "HANGA_DEVICE")]
    device: Option<DeviceKind>,
    #[arg(long = "dtype", env = "HANGA_DTYPE")]
    precision: Option<Precision>,
    /// `small`: reduced widths at 256², for a CPU or lavapipe.
    #[arg(long, value_enum, default_value = "full")]
    size: Size,
    /// Timed forwards per network; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed forwards first (autotune, kernel compilation).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Only these networks (comma-separated names from `--list`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the rows as JSON here (what benches/gpu/compare.py reads).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the cases (diffusers class, config, input sizes) as JSON and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Generate(args) => generate(args),
        Command::Bench(args) => bench(args),
        Command::Keys(command) => keys(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The manifests of `model_manifests/` (when present) and `manifests`, then the models of
/// `models_dirs`.
fn registry(manifests: &[PathBuf], models_dirs: &[PathBuf]) -> Result<Registry, Error> {
    let mut dirs = Vec::new();
    let default = PathBuf::from("model_manifests");
    if default.is_dir() && !manifests.contains(&default) {
        dirs.push(default);
    }
    dirs.extend(manifests.iter().cloned());
    let mut registry = Registry::scan(&dirs)?;
    for dir in models_dirs {
        registry.add_models_dir(dir)?;
    }
    Ok(registry)
}

/// The device asked for, or the best one that can start here; an error when it cannot.
fn device(asked: Option<DeviceKind>) -> Result<DeviceKind, Error> {
    let kind = asked.unwrap_or_else(DeviceKind::preferred);
    kind.check()?;
    Ok(kind)
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn serve(args: ServeArgs) -> Result<(), Error> {
    let json = match args.log_format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            return Err(Error::config(format!(
                "--log-format must be text or json, not `{other}`"
            )));
        }
    };
    init_logs(json);
    let device = device(args.device)?;
    let options = ServeOptions {
        host: args.host,
        port: args.port,
        loras_dir: args.loras.unwrap_or_else(|| args.data_dir.join("loras")),
        templates_dir: args
            .templates_dir
            .unwrap_or_else(|| args.data_dir.join("templates")),
        data_dir: args.data_dir,
        thumbnails_dir: args.thumbnails_dir,
        registry: registry(&args.manifests, &args.models_dirs)?,
        device,
        precision: Precision::resolve(args.precision, device)?,
        default_model: args.default_model,
        queue_capacity: args.queue_capacity,
        preview_interval: Duration::from_millis(args.preview_interval_ms),
        cors_origin: args.cors_origin,
        public_url: args.public_url,
        max_body_bytes: 1 << 20,
        comfyui_port: (!args.no_comfyui).then_some(args.comfyui_port),
        comfyui_previews: args.preview_method != "none",
        no_auth: args.no_auth,
    };
    tokio::runtime::Runtime::new()?.block_on(hanga::server::serve(options))
}

fn generate(args: GenerateArgs) -> Result<(), Error> {
    let registry = registry(&args.manifests, &args.models_dirs)?;
    let manifest = registry.get(&args.model)?;
    let init = match &args.init_image {
        Some(path) => Some(
            image::open(path)
                .map_err(|e| Error::request(format!("{}: {e}", path.display())))?
                .to_rgb8(),
        ),
        None => None,
    };
    let fit = init
        .as_ref()
        .map(|image| image_size(manifest.family, image.dimensions()));
    let request = GenerationRequest {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        width: args.width.or(fit.map(|f| f.0)),
        height: args.height.or(fit.map(|f| f.1)),
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        sampler: args.sampler,
        scheduler: args.scheduler,
        seed: args.seed,
        long_prompt: args.long_prompt,
    };
    let mut params = request.resolve(manifest)?;
    if let Some(path) = &args.init_image {
        let strength = args.strength.unwrap_or(DEFAULT_STRENGTH);
        if !(MIN_STRENGTH..=1.0).contains(&strength) {
            return Err(Error::request(format!(
                "--strength {strength} is not between {MIN_STRENGTH} and 1"
            )));
        }
        params.init_image = Some(InitImage {
            path: path.clone(),
            strength,
        });
    }
    let device_kind = device(args.device)?;
    let precision = Precision::resolve(args.precision, device_kind)?;
    eprintln!("loading {} on {device_kind} in {precision}…", manifest.id);
    let started = Instant::now();
    let image = with_backend!(device_kind, |B, device| {
        hanga::backend::set_precision::<B>(&device, precision)?;
        let mut pipeline = Pipeline::<B>::load(manifest, &device)?;
        eprintln!("loaded in {:.1}s", started.elapsed().as_secs_f32());
        let sampling = Instant::now();
        pipeline.generate(&params, init.as_ref(), &mut |p| {
            progress_bar(p.step, p.total_steps, sampling.elapsed().as_secs_f32());
            Flow::Continue
        })?
    });
    eprintln!();
    let file = std::fs::File::create(&args.output)
        .map_err(|e| Error::config(format!("cannot write {}: {e}", args.output.display())))?;
    encode_png(
        &image,
        &a1111_parameters(&params, &manifest.id),
        std::io::BufWriter::new(file),
    )?;
    println!("{} (seed {})", args.output.display(), params.seed);
    Ok(())
}

fn bench(args: BenchArgs) -> Result<(), Error> {
    if args.list {
        let cases = serde_json::to_string_pretty(&hanga::bench::cases(args.size))
            .map_err(|e| Error::config(e.to_string()))?;
        println!("{cases}");
        return Ok(());
    }
    let device = device(args.device)?;
    let options = BenchOptions {
        device,
        precision: Precision::resolve(args.precision, device)?,
        size: args.size,
        runs: args.runs.max(1),
        warmup: args.warmup,
        only: args.only,
    };
    let rows = hanga::bench::run(&options)?;
    print!("{}", hanga::bench::table(&options, &rows));
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "device": device.to_string(),
            "dtype": options.precision.name(),
            "runs": options.runs,
            "rows": rows,
        });
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&report).expect("plain data"),
        )
        .map_err(|e| Error::config(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn keys(command: KeysCommand) -> Result<(), Error> {
    match command {
        KeysCommand::Create {
            name,
            rate,
            scopes,
            data,
        } => {
            let (secret, key) =
                KeyFile::in_data_dir(&data.data_dir).create(&name, &scopes, rate)?;
            eprintln!(
                "created {} ({}): scopes {}, {}. The key is shown this once; only its hash is kept.",
                key.id,
                key.name,
                list(&key.scopes),
                key.rate
                    .map_or("no rate limit".into(), |r| format!("rate {r}")),
            );
            println!("{secret}");
        }
        KeysCommand::List { data } => {
            let keys = KeyFile::in_data_dir(&data.data_dir).read()?;
            println!(
                "{:<12} {:<20} {:<10} {:<22} {:<12} {:>10} status",
                "id", "name", "prefix", "scopes", "rate", "created"
            );
            for key in keys {
                let status = key
                    .revoked
                    .map_or("active".to_owned(), |t| format!("revoked at {t}"));
                println!(
                    "{:<12} {:<20} {:<10} {:<22} {:<12} {:>10} {status}",
                    key.id,
                    key.name,
                    key.prefix,
                    list(&key.scopes),
                    key.rate.map_or("-".into(), |r| r.to_string()),
                    key.created,
                );
            }
        }
        KeysCommand::Revoke { key, data } => {
            let key = KeyFile::in_data_dir(&data.data_dir).revoke(&key)?;
            eprintln!("revoked {} ({})", key.id, key.name);
        }
    }
    Ok(())
}

fn list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn progress_bar(step: usize, total: usize, seconds: f32) {
    const WIDTH: usize = 30;
    let filled = step * WIDTH / total.max(1);
    eprint!(
        "\r[{}{}] {step}/{total} steps, {:.2}s/step",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        seconds / step as f32
    );
    let _ = std::io::stderr().flush();
}
