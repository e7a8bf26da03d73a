//! Picture buffers handed back for the next frame: frames get their own mappings
//! (`infer/allocator.rs`), so a fresh 1280×720 frame is 2.8 MB of new pages to fault in. A pool (a
//! camera's decoded pictures, the evidence stage's masked copies) refills a buffer no stage holds
//! any more, and keeps at most one idle (one frame of memory).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use image::RgbImage;

/// Frames given out and remembered, oldest first; the rest are not followed.
const FOLLOWED: usize = 8;

#[derive(Debug, Default)]
pub struct FramePool {
    given_out: Mutex<VecDeque<Arc<RgbImage>>>,
}

impl FramePool {
    /// Remembers a frame given out to the stages, and lets go of idle buffers beyond one.
    pub fn track(&self, frame: &Arc<RgbImage>) {
        let mut given_out = self.given_out.lock().unwrap_or_else(|p| p.into_inner());
        given_out.push_back(frame.clone());
        // Keep the newest idle buffer only (the pool is the last holder of an idle one).
        let mut idle_seen = false;
        for index in (0..given_out.len()).rev() {
            if Arc::strong_count(&given_out[index]) == 1 {
                if idle_seen {
                    given_out.remove(index);
                } else {
                    idle_seen = true;
                }
            }
        }
        while given_out.len() > FOLLOWED {
            given_out.pop_front();
        }
    }

    /// A `width`×`height` buffer no stage holds any more, to be filled with a new picture.
    pub fn idle(&self, width: u32, height: u32) -> Option<RgbImage> {
        let mut given_out = self.given_out.lock().unwrap_or_else(|p| p.into_inner());
        // Only the pool holds an idle frame, and it gives out no other reference: no one can take
        // one between the count and the unwrap.
        let index = given_out.iter().position(|f| Arc::strong_count(f) == 1 && f.dimensions() == (width, height))?;
        given_out.remove(index).and_then(|frame| Arc::try_unwrap(frame).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_no_stage_holds_comes_back_and_one_still_held_does_not() {
        let pool = FramePool::default();
        let held = Arc::new(RgbImage::from_pixel(4, 2, image::Rgb([1, 2, 3])));
        pool.track(&held);
        assert!(pool.idle(4, 2).is_none(), "a stage still holds it");
        let pixels = held.as_raw().as_ptr();
        drop(held);
        assert!(pool.idle(8, 2).is_none(), "another size is not handed out");
        let back = pool.idle(4, 2).expect("an idle buffer");
        assert_eq!(back.as_raw().as_ptr(), pixels, "the same memory, not a copy");
        assert!(pool.idle(4, 2).is_none(), "handed out once");
    }

    #[test]
    fn at_most_one_idle_buffer_is_kept() {
        let pool = FramePool::default();
        let frames: Vec<Arc<RgbImage>> = (0..3).map(|_| Arc::new(RgbImage::new(4, 2))).collect();
        for frame in &frames {
            pool.track(frame);
        }
        let weak: Vec<_> = frames.iter().map(Arc::downgrade).collect();
        drop(frames);
        pool.track(&Arc::new(RgbImage::new(4, 2)));
        let alive = weak.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(alive, 1, "one idle buffer kept, the others freed");
    }
}
