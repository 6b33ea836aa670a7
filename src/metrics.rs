//! What `/metrics` reports, kept with prometheus-client and written in its OpenMetrics text
//! format (which Prometheus scrapes): queue depth and jobs by status, histograms of step time,
//! queue wait and job duration by model, images written, and a build-info gauge.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::queue::JobStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobEndLabels {
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    device: String,
    dtype: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    queue_depth: Gauge,
    jobs: Family<StatusLabel, Gauge>,
    step_seconds: Histograms<ModelLabel>,
    queue_wait_seconds: Histograms<ModelLabel>,
    job_duration_seconds: Histograms<JobEndLabels>,
    images_written: Counter,
}

/// 5 ms … 41 s: a step of a tiny model on CPU to a large one on a slow GPU.
fn step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// 50 ms … 27 min.
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

impl Metrics {
    pub fn new(version: &str, device: &str, dtype: &str) -> Self {
        let mut registry = Registry::with_prefix("hanga");
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Jobs waiting to run", queue_depth.clone());
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register("jobs", "Jobs known to the server, by status", jobs.clone());
        let step_seconds = Histograms::new_with_constructor(step_buckets as fn() -> Histogram);
        registry.register(
            "step_seconds",
            "Time of one denoising step, by model",
            step_seconds.clone(),
        );
        let queue_wait_seconds = Histograms::new_with_constructor(job_buckets as fn() -> Histogram);
        registry.register(
            "queue_wait_seconds",
            "Time from acceptance to start, by model",
            queue_wait_seconds.clone(),
        );
        let job_duration_seconds =
            Histograms::new_with_constructor(job_buckets as fn() -> Histogram);
        registry.register(
            "job_duration_seconds",
            "Time from start to end of a job, by model and final status",
            job_duration_seconds.clone(),
        );
        let images_written = Counter::default();
        registry.register(
            "images_written",
            "Images written since start",
            images_written.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: version.into(),
                device: device.into(),
                dtype: dtype.into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels tell the version, device and float type",
            build,
        );
        Self {
            registry,
            queue_depth,
            jobs,
            step_seconds,
            queue_wait_seconds,
            job_duration_seconds,
            images_written,
        }
    }

    pub fn step(&self, model: &str, elapsed: Duration) {
        self.step_seconds
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn job_started(&self, model: &str, waited: Duration) {
        self.queue_wait_seconds
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn job_finished(&self, model: &str, status: JobStatus, took: Duration) {
        self.job_duration_seconds
            .get_or_create(&JobEndLabels {
                model: model.into(),
                status: status.name().into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn image_written(&self) {
        self.images_written.inc();
    }

    /// The OpenMetrics text, with the queue as it is now.
    pub fn render(&self, jobs_by_status: &HashMap<JobStatus, usize>, waiting: usize) -> String {
        self.queue_depth.set(waiting as i64);
        for status in JobStatus::ALL {
            self.jobs
                .get_or_create(&StatusLabel {
                    status: status.name().into(),
                })
                .set(*jobs_by_status.get(&status).unwrap_or(&0) as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}
