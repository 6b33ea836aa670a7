//! The `hanga` command: `hanga generate` (one image, from the command line).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use hanga::backend::DeviceKind;
use hanga::output::png::{a1111_parameters, encode_png};
use hanga::pipelines::{Flow, GenerationRequest, Pipeline};
use hanga::registry::Registry;
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
    /// Generate one image and write it as PNG (with A1111-style `parameters` metadata).
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// Extra directories of model manifests (`model_manifests/` is always read if present).
    #[arg(long = "manifests", env = "HANGA_MANIFESTS", value_delimiter = ',')]
    manifests: Vec<PathBuf>,
    /// Model id (a manifest's `id`).
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
    /// cpu, or a GPU backend this binary was built with (cuda, wgpu).
    #[arg(long, env = "HANGA_DEVICE")]
    device: Option<DeviceKind>,
    /// Output PNG.
    #[arg(short, long, default_value = "out.png")]
    output: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn manifest_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let default = PathBuf::from("model_manifests");
    if default.is_dir() && !extra.contains(&default) {
        dirs.push(default);
    }
    dirs.extend(extra.iter().cloned());
    dirs
}

fn generate(args: GenerateArgs) -> Result<(), Error> {
    let registry = Registry::scan(&manifest_dirs(&args.manifests))?;
    let manifest = registry.get(&args.model)?;
    let request = GenerationRequest {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        sampler: args.sampler,
        scheduler: args.scheduler,
        seed: args.seed,
        long_prompt: args.long_prompt,
    };
    let params = request.resolve(manifest)?;
    let device_kind = args.device.unwrap_or_else(DeviceKind::preferred);
    eprintln!("loading {} on {device_kind}…", manifest.id);
    let started = Instant::now();
    let image = with_backend!(device_kind, |B, device| {
        let pipeline = Pipeline::<B>::load(manifest, &device)?;
        eprintln!("loaded in {:.1}s", started.elapsed().as_secs_f32());
        let sampling = Instant::now();
        pipeline.generate(&params, &mut |p| {
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
