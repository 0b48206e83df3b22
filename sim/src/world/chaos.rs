//! Chaos: the plan's clock steps (forward and back) and crashes of instances (their requests in
//! flight cut off, the instance restarted with a fresh service), each at its planned time.

use std::sync::Arc;
use std::time::Duration;

use super::instance::instance_service;
use super::{World, lock};
use crate::plan::Chaos;
use crate::store::sim_us;
use crate::trace::Event;

impl World {
    pub(super) async fn chaos(self: Arc<Self>, mut events: Vec<crate::plan::ChaosAt>) {
        events.sort_by_key(|e| e.at_ms);
        let start = madsim::time::Instant::now();
        for event in events {
            let at = Duration::from_millis(event.at_ms);
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                madsim::time::sleep(wait).await;
            }
            match event.chaos {
                Chaos::ClockStep { instance, delta_ms } => {
                    let instances = lock(&self.instances);
                    let clock = &instances[instance % instances.len()].clock;
                    clock.step(delta_ms);
                    let offset = clock.offset_ms().unsigned_abs().saturating_add(500);
                    drop(instances);
                    let mut skew = lock(&self.skew_max_ms);
                    *skew = (*skew).max(offset);
                    drop(skew);
                    self.count(|s| {
                        if delta_ms < 0 {
                            s.clock_steps_back += 1
                        } else {
                            s.clock_steps_forward += 1
                        }
                    });
                    self.store.note(Event {
                        at_us: sim_us(),
                        instance: Some(instance),
                        text: format!("chaos: the clock steps {delta_ms:+} ms"),
                        ..Event::default()
                    });
                }
                Chaos::Crash { instance: index } => {
                    let mut instances = lock(&self.instances);
                    let count = instances.len();
                    let instance = &mut instances[index % count];
                    for handle in instance.inflight.drain(..) {
                        handle.abort();
                    }
                    let clock = instance.clock.clone();
                    instance.service =
                        instance_service(&self.store, clock, self.service_config, &self.failure);
                    drop(instances);
                    self.count(|s| s.crashes += 1);
                    self.store.note(Event {
                        at_us: sim_us(),
                        instance: Some(index % count),
                        text: "chaos: crash and restart".to_owned(),
                        ..Event::default()
                    });
                }
            }
        }
    }
}
