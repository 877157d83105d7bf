//! The event bus: every state change the agent makes is published here, numbered, and kept in
//! a short ring so a client that reconnects can ask for what it missed (`?since=SEQ`).

use crate::clock::now_ms;
use corral_model::event::{Event, EventEnvelope};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

const RING: usize = 1024;

pub struct EventBus {
    tx: broadcast::Sender<EventEnvelope>,
    ring: Mutex<(u64, VecDeque<EventEnvelope>)>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(RING);
        EventBus {
            tx,
            ring: Mutex::new((0, VecDeque::with_capacity(RING))),
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.0 += 1;
        let env = EventEnvelope {
            seq: ring.0,
            time_ms: now_ms(),
            event,
        };
        if ring.1.len() == RING {
            ring.1.pop_front();
        }
        ring.1.push_back(env.clone());
        // Sent under the lock so subscribers see events in sequence order.
        let _ = self.tx.send(env);
    }

    /// Events after `since` still in the ring, and a receiver for the ones to come.
    pub fn subscribe(
        &self,
        since: Option<u64>,
    ) -> (Vec<EventEnvelope>, broadcast::Receiver<EventEnvelope>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let backlog = match since {
            Some(s) => ring.1.iter().filter(|e| e.seq > s).cloned().collect(),
            None => Vec::new(),
        };
        (backlog, self.tx.subscribe())
    }
}
