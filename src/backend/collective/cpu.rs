//! Ranks as threads of one process. Each rank publishes its buffer, then every rank sums all of
//! them itself in rank order 0, 1, …, N−1, so the result does not depend on which thread arrives
//! first, and every rank holds the same bits (as a ring all-reduce would give them).

use std::sync::{Barrier, Mutex};

use super::Collective;

pub struct ThreadCollective {
    /// Each rank's published partial values for the current operation.
    slots: Vec<Mutex<Vec<f32>>>,
    barrier: Barrier,
}

impl ThreadCollective {
    pub fn new(world_size: usize) -> ThreadCollective {
        assert!(world_size > 0, "a collective needs at least one rank");
        ThreadCollective {
            slots: (0..world_size).map(|_| Mutex::new(Vec::new())).collect(),
            barrier: Barrier::new(world_size),
        }
    }
}

impl Collective for ThreadCollective {
    fn world_size(&self) -> usize {
        self.slots.len()
    }

    fn all_reduce_sum(&self, rank: usize, values: &mut [f32]) {
        if self.slots.len() == 1 {
            return;
        }
        // A rank that panicked poisons only its own slot's lock; its partner ranks then fail too
        // rather than sum garbage.
        {
            let mut slot = self.slots[rank].lock().expect("another rank failed during an all-reduce");
            slot.clear();
            slot.extend_from_slice(values);
        }
        self.barrier.wait();
        values.fill(0.0);
        for slot in &self.slots {
            let partial = slot.lock().expect("another rank failed during an all-reduce");
            assert_eq!(partial.len(), values.len(), "ranks reduce buffers of the same length");
            for (sum, &x) in values.iter_mut().zip(partial.iter()) {
                *sum += x;
            }
        }
        // Nobody overwrites a slot for the next operation before every rank has read this one.
        self.barrier.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_the_sum_in_rank_order() {
        for world in [1, 2, 3, 4] {
            let collective = ThreadCollective::new(world);
            // Values whose float sum depends on the order: rank r holds 10^(8r) · (−1)^r.
            let partial = |rank: usize, i: usize| {
                (if rank.is_multiple_of(2) { 1.0 } else { -1.0 }) * 1e8f32.powi(rank as i32) + i as f32
            };
            let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..world)
                    .map(|rank| {
                        let collective = &collective;
                        scope.spawn(move || {
                            let mut last = Vec::new();
                            // Several operations back to back: slots are reused safely.
                            for round in 0..5 {
                                let mut values: Vec<f32> = (0..7).map(|i| partial(rank, i) + round as f32).collect();
                                collective.all_reduce_sum(rank, &mut values);
                                last = values;
                            }
                            last
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let expected: Vec<f32> =
                (0..7).map(|i| (0..world).fold(0.0f32, |sum, rank| sum + (partial(rank, i) + 4.0))).collect();
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got, &expected, "world {world}, rank {rank}");
            }
        }
    }
}
