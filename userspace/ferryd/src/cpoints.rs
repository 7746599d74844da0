//! Consistency points at the secondary: which points the remote log holds
//! (ferry-core's `ConsistencyTracker`), the points a stream's run reached
//! but the tracker could not take yet, and the form both are saved in.
//!
//! A stream's point is handed to the tracker once the stream's contiguous
//! run of verified records reaches it.  A point the tracker refuses for
//! room (`Full`) waits, with the points after it in the same stream, until
//! older points complete; a point it refuses for a gap or a conflict is
//! never held, and is counted.  The whole state is saved with the stream
//! positions after each interval, so that a restart neither loses a point
//! whose records were already applied and released nor counts one twice.

use std::collections::{BTreeMap, VecDeque};

use ferry_core::checkpoint::MAX_STREAMS;
use ferry_core::consistency::{ConsistencyError, ConsistencyTracker, HeldPoint, OpenPoint};
use ferry_core::record::{ConsistencyPayload, Label};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Points open at once (validated by some streams, not all).
const OPEN: usize = 64;

type Tracker = ConsistencyTracker<{ MAX_STREAMS as usize }, OPEN>;

/// A point as it is saved and reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// Group-wide id.
    pub cp_id: u64,
    /// The operator's label.
    pub label: String,
}

impl Point {
    fn of(cp_id: u64, label: &Label) -> Self {
        Self {
            cp_id,
            label: label.as_str().to_string(),
        }
    }

    fn label(&self) -> anyhow::Result<Label> {
        Label::new(self.label.as_bytes())
            .map_err(|e| anyhow::anyhow!("label {:?}: {e}", self.label))
    }
}

/// A point reached by a stream and not yet taken by the tracker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    dev_seq: u64,
    cp_id: u64,
    first_dev_seq: u64,
    label: String,
}

/// What `state.json` keeps of the points.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// Per device, the `dev_seq` of the last point it validated.
    last_closed: BTreeMap<u32, u64>,
    /// Points validated by some devices: (point, bit mask of devices).
    open: Vec<(Point, u64)>,
    held: Option<Point>,
    /// Per device, points waiting for the tracker.
    waiting: BTreeMap<u32, Vec<Waiting>>,
}

/// The points of a secondary group.
pub struct Points {
    tracker: Tracker,
    /// Per device id: points the stream's records contain, in stream
    /// order, not yet handed to the tracker.
    waiting: BTreeMap<u32, VecDeque<(u64, ConsistencyPayload)>>,
}

impl Points {
    /// The points of a group with member bit mask `members`, from what was
    /// saved (`None`: a new group).
    pub fn restore(members: u64, saved: Option<&Saved>) -> anyhow::Result<Self> {
        let Some(s) = saved else {
            return Ok(Self {
                tracker: Tracker::new([0; MAX_STREAMS as usize], members),
                waiting: BTreeMap::new(),
            });
        };
        let mut last = [0u64; MAX_STREAMS as usize];
        for (&d, &v) in &s.last_closed {
            *last
                .get_mut(d as usize)
                .ok_or_else(|| anyhow::anyhow!("device {d} out of range"))? = v;
        }
        let mut open = Vec::new();
        for (p, validated) in &s.open {
            open.push(OpenPoint {
                cp_id: p.cp_id,
                label: p.label()?,
                validated: *validated,
            });
        }
        let held = match &s.held {
            Some(p) => Some(HeldPoint {
                cp_id: p.cp_id,
                label: p.label()?,
            }),
            None => None,
        };
        let tracker = Tracker::restore(last, members, open, held)
            .map_err(|e| anyhow::anyhow!("saved consistency points: {e}"))?;
        let mut waiting = BTreeMap::new();
        for (&d, v) in &s.waiting {
            let mut q = VecDeque::new();
            for w in v {
                let label = Label::new(w.label.as_bytes())
                    .map_err(|e| anyhow::anyhow!("label {:?}: {e}", w.label))?;
                q.push_back((
                    w.dev_seq,
                    ConsistencyPayload {
                        cp_id: w.cp_id,
                        first_dev_seq: w.first_dev_seq,
                        label,
                    },
                ));
            }
            waiting.insert(d, q);
        }
        Ok(Self { tracker, waiting })
    }

    /// What to save.
    pub fn saved(&self) -> Saved {
        Saved {
            last_closed: self
                .tracker
                .last_closed()
                .iter()
                .enumerate()
                .filter(|(_, &v)| v != 0)
                .map(|(d, &v)| (d as u32, v))
                .collect(),
            open: self
                .tracker
                .open_points()
                .map(|p| (Point::of(p.cp_id, &p.label), p.validated))
                .collect(),
            held: self
                .tracker
                .last_held()
                .map(|h| Point::of(h.cp_id, &h.label)),
            waiting: self
                .waiting
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(&d, q)| {
                    let v = q
                        .iter()
                        .map(|(ds, cp)| Waiting {
                            dev_seq: *ds,
                            cp_id: cp.cp_id,
                            first_dev_seq: cp.first_dev_seq,
                            label: cp.label.as_str().to_string(),
                        })
                        .collect();
                    (d, v)
                })
                .collect(),
        }
    }

    /// A point found in device `device`'s verified records at `dev_seq`.
    /// Points already handed over or waiting are ignored (a restart finds
    /// them again in the remote log; a stream may arrive on two
    /// connections at once).
    pub fn found(&mut self, device: u32, dev_seq: u64, cp: ConsistencyPayload) {
        let closed = self
            .tracker
            .last_closed()
            .get(device as usize)
            .copied()
            .unwrap_or(u64::MAX);
        if dev_seq <= closed {
            return;
        }
        let q = self.waiting.entry(device).or_default();
        if let Err(at) = q.binary_search_by_key(&dev_seq, |(ds, _)| *ds) {
            q.insert(at, (dev_seq, cp));
        }
    }

    /// Hands to the tracker every waiting point that its stream's run has
    /// reached (`run_end(device)`), as far as the tracker has room.
    /// Returns how many it refused (a gap in a point's set, or a conflict):
    /// those are never held.
    pub fn advance(&mut self, run_end: impl Fn(u32) -> u64) -> u64 {
        let mut refused = 0;
        loop {
            let mut progress = false;
            for (&d, q) in self.waiting.iter_mut() {
                while let Some(&(ds, cp)) = q.front() {
                    if ds > run_end(d) {
                        break;
                    }
                    match self.tracker.delivered(d, ds, &cp) {
                        Ok(held) => {
                            if let Some(h) = held {
                                info!(
                                    cp_id = h.cp_id,
                                    label = h.label.as_str(),
                                    "consistency point held"
                                );
                            }
                        }
                        Err(ConsistencyError::Full) => break,
                        Err(e) => {
                            refused += 1;
                            warn!(
                                device = d,
                                dev_seq = ds,
                                cp_id = cp.cp_id,
                                "consistency point refused: {e}"
                            );
                        }
                    }
                    q.pop_front();
                    progress = true;
                }
            }
            if !progress {
                return refused;
            }
        }
    }

    /// The last point held.
    pub fn held(&self) -> Option<Point> {
        self.tracker
            .last_held()
            .map(|h| Point::of(h.cp_id, &h.label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(id: u64, first: u64, label: &str) -> ConsistencyPayload {
        ConsistencyPayload {
            cp_id: id,
            first_dev_seq: first,
            label: Label::new(label.as_bytes()).unwrap(),
        }
    }

    #[test]
    fn held_once_every_run_reaches_it_and_kept_across_a_restart() {
        let mut p = Points::restore(0b11, None).unwrap();
        p.found(0, 5, cp(1, 1, "a"));
        p.found(1, 3, cp(1, 1, "a"));
        p.advance(|d| if d == 0 { 10 } else { 2 });
        assert_eq!(p.held(), None);
        // Saved now, restarted: device 1's point still waits.
        let s: Saved = serde_json::from_str(&serde_json::to_string(&p.saved()).unwrap()).unwrap();
        let mut r = Points::restore(0b11, Some(&s)).unwrap();
        // Found again in the remote log: not taken twice.
        r.found(0, 5, cp(1, 1, "a"));
        r.found(1, 3, cp(1, 1, "a"));
        assert_eq!(r.advance(|_| 10), 0);
        assert_eq!(
            r.held(),
            Some(Point {
                cp_id: 1,
                label: "a".into()
            })
        );
        // A point whose set has a gap is refused and counted.
        r.found(0, 9, cp(2, 7, "b"));
        assert_eq!(r.advance(|_| 10), 1);
        assert_eq!(r.held().unwrap().cp_id, 1);
        // Points arriving out of order wait in stream order.
        r.found(1, 8, cp(3, 6, "c"));
        r.found(1, 5, cp(2, 4, "b"));
        r.found(0, 12, cp(2, 6, "b"));
        assert_eq!(r.advance(|_| 20), 0);
        assert_eq!(r.held().unwrap().cp_id, 2);
    }
}
