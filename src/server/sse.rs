//! Building the SSE streams: replay or snapshot first, then live events, with ids so that a
//! client can resume (`Last-Event-ID`).

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::api::EventBox;
use super::schemas::{ImageView, JobStreamEvent, JobView};
use crate::Error;
use crate::queue::{Job, JobEvent, JobStatus, Numbered};

fn to_stream_event((id, event): Numbered) -> JobStreamEvent {
    let base = JobStreamEvent {
        event_id: id,
        ..Default::default()
    };
    match event {
        JobEvent::Queued { position } => JobStreamEvent {
            status: "queued".into(),
            position: Some(position as u32),
            ..base
        },
        JobEvent::Processing {
            step,
            total_steps,
            preview,
        } => JobStreamEvent {
            status: "processing".into(),
            step: Some(step),
            total_steps: Some(total_steps),
            preview,
            ..base
        },
        JobEvent::Completed { images } => JobStreamEvent {
            status: "completed".into(),
            images: Some(images),
            ..base
        },
        JobEvent::Failed { error } => JobStreamEvent {
            status: "failed".into(),
            error: Some(error),
            ..base
        },
        JobEvent::Cancelled => JobStreamEvent {
            status: "cancelled".into(),
            ..base
        },
    }
}

/// The job's current state as one event in the contract's shape, with the whole job attached.
fn snapshot(job: &Job, position: Option<usize>, id: u64) -> JobStreamEvent {
    let event = match job.status {
        JobStatus::Queued => JobEvent::Queued {
            position: position.unwrap_or(0),
        },
        JobStatus::Processing => JobEvent::Processing {
            step: job.step,
            total_steps: job.total_steps,
            preview: None,
        },
        JobStatus::Completed => JobEvent::Completed {
            images: job.images.clone(),
        },
        JobStatus::Failed => JobEvent::Failed {
            error: job.error.clone().unwrap_or_default(),
        },
        JobStatus::Cancelled => JobEvent::Cancelled,
    };
    JobStreamEvent {
        job: Some(JobView::new(job, position)),
        ..to_stream_event((id, event))
    }
}

/// Events of `job_id` after `after` (or a snapshot), then live ones until the terminal event.
/// `None` if there is no such job.
pub fn job_stream(
    state: &AppState,
    job_id: &str,
    after: Option<u64>,
) -> Option<EventBox<JobStreamEvent>> {
    let queue = &state.shared.queue;
    queue.get(job_id)?;
    let subscription = state.shared.events.subscribe(job_id, after);
    let (job, position) = queue.get(job_id)?;
    let (tx, rx) = mpsc::channel(64);
    let mut live = subscription.live;
    let first: Vec<JobStreamEvent> = match subscription.missed {
        Some(missed) => missed.into_iter().map(to_stream_event).collect(),
        None => vec![snapshot(&job, position, subscription.last_id)],
    };
    let mut last_sent = subscription.last_id;
    let mut finished = job.status.is_finished() || first.iter().any(|e| is_terminal(&e.status));
    tokio::spawn(async move {
        for event in first {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        while !finished {
            match live.recv().await {
                Ok(numbered) if numbered.0 > last_sent => {
                    last_sent = numbered.0;
                    finished = numbered.1.is_terminal();
                    if tx.send(to_stream_event(numbered)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A slow client missed events: it sees the next ones (previews are disposable).
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Some(Box::pin(ReceiverStream::new(rx)))
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Images made after image id `after` (from the index), then each new image as it is written.
pub fn gallery_stream(state: &AppState, after: Option<u64>) -> Result<EventBox<ImageView>, Error> {
    let mut live = state.shared.events.subscribe_gallery();
    let replay = match after {
        Some(after) => state.shared.store.images_after(after)?,
        None => Vec::new(),
    };
    let mut last_sent = replay.last().map_or(after.unwrap_or(0), |r| r.id);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for record in &replay {
            if tx.send(ImageView::from(record)).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(record) if record.id > last_sent => {
                    last_sent = record.id;
                    if tx.send(ImageView::from(&record)).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
