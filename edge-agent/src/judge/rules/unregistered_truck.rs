//! `unregistered_truck`: a truck leaving through the site exit whose plate (the one its track's
//! reads agree on, [`super::truck_exit`]) is not among the site's registered trucks
//! (`plates.registered`, set in the config file, by a page admin or by the platform). It follows
//! the truck's `truck_exit` event: it starts with the first message that carries an unregistered
//! plate and ends with the exit's `end`. Off while no truck is registered (every truck would be).

use std::collections::HashMap;

use uuid::Uuid;

use super::Finding;
use crate::infer::plates::syntax::normalise;
use crate::judge::lifecycle::Transition;
use crate::wire::LifecycleState;

struct Following {
    event_id: Uuid,
    revision: u32,
}

pub struct UnregisteredTruckRule {
    /// Normalised plate texts.
    registered: Vec<String>,
    /// truck_exit event key → the unregistered_truck event that follows it.
    following: HashMap<String, Following>,
}

impl UnregisteredTruckRule {
    pub fn new(registered: &[String]) -> Self {
        Self { registered: registered.iter().map(|p| normalise(p)).collect(), following: HashMap::new() }
    }

    /// The unregistered_truck messages that this frame's truck_exit messages call for.
    pub fn follow(&mut self, exits: &[Transition<Finding>]) -> Vec<Transition<Finding>> {
        let mut out = Vec::new();
        for exit in exits {
            match self.following.get_mut(&exit.key) {
                Some(following) if exit.state == LifecycleState::End => {
                    following.revision += 1;
                    out.push(Transition { event_id: following.event_id, revision: following.revision, ..exit.clone() });
                    self.following.remove(&exit.key);
                }
                Some(_) => {}
                None => {
                    let Some(plate) = &exit.details.plate else { continue };
                    if self.registered.is_empty() || self.registered.contains(&normalise(&plate.text)) {
                        continue;
                    }
                    let event_id = Uuid::now_v7();
                    out.push(Transition {
                        state: LifecycleState::Start,
                        reason: None,
                        event_id,
                        revision: 0,
                        snapshot: true,
                        ..exit.clone()
                    });
                    // An exit that ends in the same message has nothing more to follow.
                    if exit.state == LifecycleState::End {
                        out.push(Transition { event_id, revision: 1, ..exit.clone() });
                    } else {
                        self.following.insert(exit.key.clone(), Following { event_id, revision: 0 });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::infer::BoundingBox;
    use crate::judge::fixtures::at;
    use crate::wire::EventPlate;

    fn exit(state: LifecycleState, key: &str, plate: Option<&str>, time: DateTime<Utc>) -> Transition<Finding> {
        let plate = plate.map(|text| EventPlate {
            text: text.into(),
            colour: "yellow".into(),
            rows: 1,
            score: 0.9,
            reads: 3,
            of_reads: 3,
        });
        Transition {
            state,
            reason: None,
            event_id: Uuid::nil(),
            revision: 0,
            key: key.into(),
            first_seen: at(0.0),
            last_seen: time,
            score: 0.8,
            zone: Some("exit".into()),
            details: Finding { plate, ..Finding::new("truck", BoundingBox { x1: 0.0, y1: 0.0, x2: 9.0, y2: 9.0 }) },
            snapshot: false,
        }
    }

    #[test]
    fn a_leaving_truck_with_an_unregistered_plate_is_followed_from_its_plate_to_its_end() {
        use LifecycleState::*;
        let mut rule = UnregisteredTruckRule::new(&["浙EA3262".into(), "京A·12345".into()]);
        // Not yet a plate: nothing to say.
        assert!(rule.follow(&[exit(Start, "t1", None, at(1.0))]).is_empty());
        let started = rule.follow(&[exit(Update, "t1", Some("沪B14292"), at(2.0))]);
        assert_eq!(started.len(), 1, "{started:?}");
        let (id, start) = (started[0].event_id, &started[0]);
        assert_ne!(id, Uuid::nil(), "an event of its own");
        assert_eq!((start.state, start.revision, start.snapshot), (Start, 0, true));
        assert_eq!(start.details.plate.as_ref().map(|p| p.text.as_str()), Some("沪B14292"));
        assert!(rule.follow(&[exit(Update, "t1", Some("沪B14292"), at(3.0))]).is_empty());
        let ended = rule.follow(&[exit(End, "t1", Some("沪B14292"), at(9.0))]);
        assert_eq!(ended.iter().map(|t| (t.event_id, t.state, t.revision)).collect::<Vec<_>>(), vec![(id, End, 1)]);
        // Registered trucks (written with or without the separator dot) are not events.
        for text in ["浙EA3262", "京A12345"] {
            assert!(rule
                .follow(&[exit(Start, "t2", Some(text), at(1.0)), exit(End, "t2", Some(text), at(9.0))])
                .is_empty());
        }
        // A truck whose plate came with its exit's end starts and ends at once.
        let at_once = rule.follow(&[exit(End, "t3", Some("沪B14292"), at(9.0))]);
        assert_eq!(at_once.iter().map(|t| (t.state, t.revision)).collect::<Vec<_>>(), vec![(Start, 0), (End, 1)]);
        // No registered trucks: the rule is off.
        let mut off = UnregisteredTruckRule::new(&[]);
        assert!(off.follow(&[exit(Start, "t4", Some("沪B14292"), at(1.0))]).is_empty());
    }
}
