//! Job events for SSE: a bounded replay log per job plus a broadcast channel, so a client that
//! reconnects with `Last-Event-ID` receives what it missed (or a snapshot when the log no
//! longer reaches back that far).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::store::ImageRecord;

/// What an SSE client receives (contract: ../shared/design.md "SSE").
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobEvent {
    Queued {
        position: usize,
    },
    Processing {
        step: u32,
        total_steps: u32,
        /// `data:image/jpeg;base64,...`, throttled.
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
    },
    Completed {
        images: Vec<String>,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEvent::Completed { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled
        )
    }
}

/// An event and its id within its job's stream: `life << 32` plus 1, 2, 3, … where `life`
/// counts the server's starts (persisted in the store), so an id is never issued twice, even
/// across a restart, and ids keep increasing within every stream a client follows.
pub type Numbered = (u64, JobEvent);

const LOG_LEN: usize = 64;
/// Logs of finished jobs kept for late reconnects; older ones are dropped (their streams then
/// start with a snapshot from the job record).
const FINISHED_LOGS: usize = 256;

struct JobLog {
    next_id: u64,
    log: VecDeque<Numbered>,
    tx: broadcast::Sender<Numbered>,
}

impl JobLog {
    fn new(first_id: u64) -> Self {
        Self {
            next_id: first_id,
            log: VecDeque::new(),
            tx: broadcast::channel(LOG_LEN).0,
        }
    }
}

/// What a subscriber gets: the events after its `Last-Event-ID` that are still in the log
/// (`None` if some were already dropped: send a snapshot instead), then the live ones.
pub struct Subscription {
    pub missed: Option<Vec<Numbered>>,
    pub live: broadcast::Receiver<Numbered>,
    /// The id of the last event published before `live` started.
    pub last_id: u64,
}

pub struct Events {
    /// The first id of this server life's streams (`life << 32`, plus one).
    first_id: u64,
    jobs: Mutex<HashMap<String, JobLog>>,
    finished: Mutex<VecDeque<String>>,
    gallery: Mutex<Option<broadcast::Sender<ImageRecord>>>,
}

impl Events {
    /// Events of the server's `life`-th start (see [`Numbered`]).
    pub fn new(life: u32) -> Self {
        Self {
            first_id: (u64::from(life) << 32) + 1,
            jobs: Default::default(),
            finished: Default::default(),
            gallery: Default::default(),
        }
    }

    pub fn publish(&self, job_id: &str, event: JobEvent) {
        let mut jobs = self.jobs.lock().expect("events lock");
        let first_id = self.first_id;
        let log = jobs
            .entry(job_id.to_owned())
            .or_insert_with(|| JobLog::new(first_id));
        let numbered = (log.next_id, event);
        log.next_id += 1;
        if log.log.len() == LOG_LEN {
            log.log.pop_front();
        }
        log.log.push_back(numbered.clone());
        let terminal = numbered.1.is_terminal();
        // No receivers is fine: nobody is watching this job.
        let _ = log.tx.send(numbered);
        if terminal {
            // Previews are for watching a run; a finished job's replay does without them.
            for (_, event) in log.log.iter_mut() {
                if let JobEvent::Processing { preview, .. } = event {
                    *preview = None;
                }
            }
            let mut finished = self.finished.lock().expect("events lock");
            finished.push_back(job_id.to_owned());
            if finished.len() > FINISHED_LOGS
                && let Some(old) = finished.pop_front()
            {
                jobs.remove(&old);
            }
        }
    }

    /// Publishes a queued job's position unless it is the position it last announced.
    pub fn publish_position(&self, job_id: &str, position: usize) {
        let unchanged = self
            .jobs
            .lock()
            .expect("events lock")
            .get(job_id)
            .and_then(|l| l.log.back())
            .is_some_and(|(_, last)| *last == JobEvent::Queued { position });
        if !unchanged {
            self.publish(job_id, JobEvent::Queued { position });
        }
    }

    pub fn subscribe(&self, job_id: &str, after: Option<u64>) -> Subscription {
        let mut jobs = self.jobs.lock().expect("events lock");
        let existed = jobs.contains_key(job_id);
        let first_id = self.first_id;
        let log = jobs
            .entry(job_id.to_owned())
            .or_insert_with(|| JobLog::new(first_id));
        let live = log.tx.subscribe();
        // Replay only from a log that was there and still holds every event after `after`;
        // an id from before a restart or from a dropped log gets a snapshot instead.
        let missed = after.filter(|_| existed).and_then(|after| {
            let oldest = log.log.front().map_or(log.next_id, |(id, _)| *id);
            (after < log.next_id && after + 1 >= oldest).then(|| {
                log.log
                    .iter()
                    .filter(|(id, _)| *id > after)
                    .cloned()
                    .collect()
            })
        });
        Subscription {
            missed,
            live,
            last_id: log.next_id - 1,
        }
    }

    /// The newest preview still in a job's log (`data:image/jpeg;base64,...`).
    pub fn last_preview(&self, job_id: &str) -> Option<String> {
        let jobs = self.jobs.lock().expect("events lock");
        jobs.get(job_id)?
            .log
            .iter()
            .rev()
            .find_map(|(_, event)| match event {
                JobEvent::Processing { preview, .. } => preview.clone(),
                _ => None,
            })
    }

    pub fn announce_image(&self, record: &ImageRecord) {
        if let Some(tx) = self.gallery.lock().expect("events lock").as_ref() {
            let _ = tx.send(record.clone());
        }
    }

    pub fn subscribe_gallery(&self) -> broadcast::Receiver<ImageRecord> {
        self.gallery
            .lock()
            .expect("events lock")
            .get_or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processing(step: u32) -> JobEvent {
        JobEvent::Processing {
            step,
            total_steps: 3,
            preview: Some("data:".into()),
        }
    }

    #[test]
    fn replays_what_was_missed_or_asks_for_a_snapshot() {
        let events = Events::new(0);
        events.publish("a", JobEvent::Queued { position: 0 });
        events.publish("a", processing(1));
        events.publish("a", processing(2));
        let sub = events.subscribe("a", Some(1));
        assert_eq!(
            sub.missed.unwrap().iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(sub.last_id, 3);
        // An id this log never issued: snapshot.
        assert!(events.subscribe("a", Some(9)).missed.is_none());
        assert!(events.subscribe("a", None).missed.is_none());
    }

    #[test]
    fn ids_of_a_later_life_are_new_and_larger() {
        let before = Events::new(1);
        before.publish("a", JobEvent::Queued { position: 0 });
        before.publish("a", processing(1));
        let old_last = before.subscribe("a", None).last_id;
        let after = Events::new(2);
        after.publish("a", JobEvent::Queued { position: 0 });
        let sub = after.subscribe("a", Some(old_last));
        assert!(
            sub.missed.is_none(),
            "an id of the last life gets a snapshot"
        );
        assert!(sub.last_id > old_last, "{} > {old_last}", sub.last_id);
        assert_eq!(sub.last_id, (2 << 32) + 1);
    }

    #[test]
    fn finished_jobs_keep_no_previews_and_old_logs_go() {
        let events = Events::new(0);
        events.publish("a", processing(1));
        events.publish("a", JobEvent::Completed { images: vec![] });
        let missed = events.subscribe("a", Some(0)).missed.unwrap();
        assert_eq!(
            missed[0].1,
            JobEvent::Processing {
                step: 1,
                total_steps: 3,
                preview: None
            }
        );
        for i in 0..FINISHED_LOGS {
            events.publish(&format!("j{i}"), JobEvent::Cancelled);
        }
        assert!(
            events.subscribe("a", Some(0)).missed.is_none(),
            "the oldest finished log was dropped"
        );
    }

    #[test]
    fn positions_are_announced_once() {
        let events = Events::new(0);
        events.publish_position("a", 2);
        events.publish_position("a", 2);
        events.publish_position("a", 1);
        let missed = events.subscribe("a", Some(0)).missed.unwrap();
        assert_eq!(missed.len(), 2);
    }
}
