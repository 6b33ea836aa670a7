//! The job queue: higher `priority` first, FIFO within a priority, bounded, persisted through
//! the store so that a restart loses no accepted job (a job that was running is queued again).
//! The runner thread blocks on [`Queue::next_job`]; HTTP handlers submit, cancel and read.

mod comfy_events;
mod events;
mod job;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub use comfy_events::{ComfyEvents, ComfyFrame, ComfyMessage, status_data};
pub use events::{Events, JobEvent, Numbered, Subscription};
pub use job::{
    Job, JobLora, JobStatus, JobTimings, NsfwVerdict, SafetyCheck, Workflow, new_job_id, now_ms,
};

use crate::Error;
use crate::store::Store;

/// Why a submission or a cancel was refused.
#[derive(Debug)]
pub enum QueueError {
    Full,
    NotFound,
    AlreadyFinished(JobStatus),
    Store(Error),
}

impl From<Error> for QueueError {
    fn from(e: Error) -> Self {
        QueueError::Store(e)
    }
}

/// Ordering key: priority descending, then the place in line (a ComfyUI prompt's `number`,
/// else the acceptance order: ComfyUI's numbers count on from the same order), then
/// acceptance order.
type Key = (std::cmp::Reverse<i32>, Place, u64);

/// A place in line, ordered as floats are by `total_cmp`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Place(f64);

impl Eq for Place {}

impl PartialOrd for Place {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Place {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct State {
    waiting: BTreeSet<(Key, String)>,
    jobs: HashMap<String, Job>,
    running: Option<(String, Arc<AtomicBool>)>,
    next_seq: u64,
}

pub struct Queue {
    state: Mutex<State>,
    available: Condvar,
    store: Arc<Store>,
    events: Arc<Events>,
    capacity: usize,
}

fn key(job: &Job) -> (Key, String) {
    let place = job
        .workflow
        .as_ref()
        .and_then(|w| w.number.as_f64())
        .unwrap_or(job.seq as f64);
    (
        (std::cmp::Reverse(job.priority), Place(place), job.seq),
        job.job_id.clone(),
    )
}

impl Queue {
    /// Loads every job from the store; queued and interrupted (processing) jobs wait again.
    pub fn restore(store: Arc<Store>, events: Arc<Events>, capacity: usize) -> Result<Self, Error> {
        let mut state = State {
            waiting: BTreeSet::new(),
            jobs: HashMap::new(),
            running: None,
            next_seq: 0,
        };
        for mut job in store.jobs()? {
            state.next_seq = state.next_seq.max(job.seq + 1);
            if job.status == JobStatus::Processing {
                tracing::info!(job_id = %job.job_id, "job was running when the server stopped: queued again");
                job.status = JobStatus::Queued;
                job.step = 0;
                job.started_at = None;
                store.put_job(&job)?;
            }
            if job.status == JobStatus::Queued {
                state.waiting.insert(key(&job));
            }
            state.jobs.insert(job.job_id.clone(), job);
        }
        let queue = Self {
            state: Mutex::new(state),
            available: Condvar::new(),
            store,
            events,
            capacity,
        };
        queue.publish_positions(&queue.state.lock().expect("queue lock"));
        Ok(queue)
    }

    /// Accepts a job (persisting it first) and returns its position (0 = next to run).
    pub fn submit(&self, mut job: Job) -> Result<(Job, usize), QueueError> {
        let mut state = self.state.lock().expect("queue lock");
        if state.waiting.len() >= self.capacity {
            return Err(QueueError::Full);
        }
        job.seq = state.next_seq;
        job.status = JobStatus::Queued;
        if let Some(w) = job.workflow.as_mut().filter(|w| w.number.is_null()) {
            let n = job.seq as i64;
            w.number = serde_json::json!(if w.front { -n } else { n });
        }
        self.store.put_job(&job)?;
        state.next_seq += 1;
        state.waiting.insert(key(&job));
        state.jobs.insert(job.job_id.clone(), job.clone());
        let position = self.position(&state, &job.job_id).unwrap_or(0);
        self.publish_positions(&state);
        self.available.notify_one();
        Ok((job, position))
    }

    /// Blocks until a job waits, marks it processing and returns it with its cancel flag.
    pub fn next_job(&self) -> (Job, Arc<AtomicBool>) {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if let Some(first) = state.waiting.pop_first() {
                let id = first.1;
                let job = state.jobs.get_mut(&id).expect("waiting jobs are known");
                job.status = JobStatus::Processing;
                job.started_at = Some(now_ms());
                let job = job.clone();
                if let Err(e) = self.store.put_job(&job) {
                    tracing::error!(job_id = %id, "cannot persist job start: {e}");
                }
                let cancel = Arc::new(AtomicBool::new(false));
                state.running = Some((id, cancel.clone()));
                self.publish_positions(&state);
                return (job, cancel);
            }
            state = self.available.wait(state).expect("queue lock");
        }
    }

    /// Records the end of the running job (completed, failed or cancelled) and persists it.
    pub fn finish(&self, job: Job) {
        let mut state = self.state.lock().expect("queue lock");
        if let Err(e) = self.store.put_job(&job) {
            tracing::error!(job_id = %job.job_id, "cannot persist job end: {e}");
        }
        self.store.remove_upload(&job);
        state.running = None;
        state.jobs.insert(job.job_id.clone(), job);
    }

    /// Progress of the running job (in memory; persisted with the job's end).
    pub fn progress(&self, job_id: &str, step: u32, total_steps: u32) {
        if let Some(job) = self.state.lock().expect("queue lock").jobs.get_mut(job_id) {
            job.step = step;
            job.total_steps = total_steps;
        }
    }

    /// Cancels a queued job (it leaves the queue) or asks the running one to stop at its next
    /// step.
    pub fn cancel(&self, job_id: &str) -> Result<Job, QueueError> {
        let mut state = self.state.lock().expect("queue lock");
        let job = state.jobs.get(job_id).ok_or(QueueError::NotFound)?.clone();
        match job.status {
            JobStatus::Queued => {
                state.waiting.remove(&key(&job));
                let job = state.jobs.get_mut(job_id).expect("present");
                job.status = JobStatus::Cancelled;
                job.finished_at = Some(now_ms());
                let job = job.clone();
                self.store.put_job(&job)?;
                self.store.remove_upload(&job);
                self.events.publish(job_id, JobEvent::Cancelled);
                self.publish_positions(&state);
                Ok(job)
            }
            JobStatus::Processing => {
                if let Some((_, flag)) = state.running.as_ref().filter(|(id, _)| id == job_id) {
                    flag.store(true, Ordering::SeqCst);
                }
                Ok(job)
            }
            finished => Err(QueueError::AlreadyFinished(finished)),
        }
    }

    /// A job and its queue position (for queued jobs).
    pub fn get(&self, job_id: &str) -> Option<(Job, Option<usize>)> {
        let state = self.state.lock().expect("queue lock");
        let job = state.jobs.get(job_id)?.clone();
        let position = self.position(&state, job_id);
        Some((job, position))
    }

    /// Jobs newest first, optionally of one status, starting below `before` (a `seq`).
    pub fn list(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        before: Option<u64>,
    ) -> Vec<(Job, Option<usize>)> {
        let state = self.state.lock().expect("queue lock");
        let mut jobs: Vec<&Job> = state
            .jobs
            .values()
            .filter(|j| status.is_none_or(|s| j.status == s) && before.is_none_or(|b| j.seq < b))
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.seq));
        jobs.into_iter()
            .take(limit)
            .map(|j| (j.clone(), self.position(&state, &j.job_id)))
            .collect()
    }

    /// ComfyUI's `queue_remaining`: waiting jobs plus the running one.
    pub fn remaining(&self) -> usize {
        let state = self.state.lock().expect("queue lock");
        state.waiting.len() + state.running.is_some() as usize
    }

    /// The running job and the waiting ones in the order they will run.
    pub fn running_and_waiting(&self) -> (Option<Job>, Vec<Job>) {
        let state = self.state.lock().expect("queue lock");
        let running = state
            .running
            .as_ref()
            .and_then(|(id, _)| state.jobs.get(id).cloned());
        let waiting = state
            .waiting
            .iter()
            .filter_map(|(_, id)| state.jobs.get(id).cloned())
            .collect();
        (running, waiting)
    }

    /// Finished graph jobs in the order they were accepted (ComfyUI's history).
    pub fn finished_workflows(&self) -> Vec<Job> {
        let state = self.state.lock().expect("queue lock");
        let mut jobs: Vec<Job> = state
            .jobs
            .values()
            .filter(|j| j.workflow.is_some() && j.status.is_finished())
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.seq);
        jobs
    }

    /// Forgets a finished job (ComfyUI's `POST /history` delete): its record leaves the store.
    pub fn forget_finished(&self, job_id: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock().expect("queue lock");
        let job = state.jobs.get(job_id).ok_or(QueueError::NotFound)?;
        if !job.status.is_finished() {
            return Err(QueueError::AlreadyFinished(job.status));
        }
        self.store.delete_job(job_id)?;
        state.jobs.remove(job_id);
        Ok(())
    }

    /// The running job's id.
    pub fn running_id(&self) -> Option<String> {
        let state = self.state.lock().expect("queue lock");
        state.running.as_ref().map(|(id, _)| id.clone())
    }

    /// Number of jobs per status, and how many wait.
    pub fn counts(&self) -> (HashMap<JobStatus, usize>, usize) {
        let state = self.state.lock().expect("queue lock");
        let mut counts = HashMap::new();
        for job in state.jobs.values() {
            *counts.entry(job.status).or_insert(0) += 1;
        }
        (counts, state.waiting.len())
    }

    fn position(&self, state: &State, job_id: &str) -> Option<usize> {
        state.waiting.iter().position(|(_, id)| id == job_id)
    }

    /// Tells every waiting job its position (the event log drops repeats of the same value).
    fn publish_positions(&self, state: &State) {
        for (position, (_, id)) in state.waiting.iter().enumerate() {
            self.events.publish_position(id, position);
        }
    }
}
