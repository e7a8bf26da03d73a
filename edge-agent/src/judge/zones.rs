//! Zones of a camera's picture: validated polygons in normalised coordinates with a role (bin,
//! drop area, road, site exit, ignore, privacy), the geometry the rules ask of them, and the ground
//! homography that turns frame pixels into metres.

use crate::infer::BoundingBox;
use crate::judge::config::{SceneConfig, ZoneRole};

/// A point in normalised frame coordinates: (0, 0) top left, (1, 1) bottom right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// A simple (not self-crossing) polygon inside the frame, closed implicitly.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    points: Vec<Point>,
}

/// Smallest zone area, as a share of the frame: a zone thinner than this is a typing mistake.
const MIN_AREA: f64 = 1e-4;

impl Polygon {
    /// Validates corners from the config: at least three, inside the frame, not degenerate, not
    /// crossing itself. A last corner equal to the first (an explicitly closed ring) is accepted.
    pub fn new(corners: &[[f64; 2]]) -> Result<Self, String> {
        let mut points: Vec<Point> = corners.iter().map(|&[x, y]| Point { x, y }).collect();
        if points.len() > 1 && points.first() == points.last() {
            points.pop();
        }
        if points.len() < 3 {
            return Err(format!("has {} distinct corners; expected at least 3 [x, y] pairs", points.len()));
        }
        for (i, p) in points.iter().enumerate() {
            if !(p.x.is_finite() && p.y.is_finite() && (0.0..=1.0).contains(&p.x) && (0.0..=1.0).contains(&p.y)) {
                return Err(format!(
                    "corner {i} is [{}, {}], outside the frame; expected normalised coordinates from 0 to 1",
                    p.x, p.y
                ));
            }
        }
        for i in 0..points.len() {
            let (a, b) = (points[i], points[(i + 1) % points.len()]);
            if a == b {
                return Err(format!("corners {i} and {} are the same point", (i + 1) % points.len()));
            }
        }
        let polygon = Self { points };
        if let Some((i, j)) = polygon.first_crossing() {
            return Err(format!("edge {i} crosses edge {j}; expected corners in order around the zone"));
        }
        if polygon.area() < MIN_AREA {
            return Err(format!(
                "encloses {:.6} of the frame; expected a non-degenerate area (at least {MIN_AREA})",
                polygon.area()
            ));
        }
        Ok(polygon)
    }

    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// Share of the frame the polygon covers (shoelace formula).
    pub fn area(&self) -> f64 {
        let n = self.points.len();
        let twice: f64 = (0..n)
            .map(|i| {
                let (a, b) = (self.points[i], self.points[(i + 1) % n]);
                a.x * b.y - b.x * a.y
            })
            .sum();
        twice.abs() / 2.0
    }

    /// Even-odd rule: a ray to the right crosses the boundary an odd number of times.
    pub fn contains(&self, p: Point) -> bool {
        let n = self.points.len();
        let mut inside = false;
        let mut j = n - 1;
        for i in 0..n {
            let (a, b) = (self.points[i], self.points[j]);
            if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
                inside = !inside;
            }
            j = i;
        }
        inside
    }

    /// Whether every point of `other` lies inside this polygon or on its edge. Both are simple
    /// polygons, so it is enough that `other`'s boundary does: each edge of `other` is cut where it
    /// meets this polygon's edges, and every cut point and the middle of every piece must be inside.
    pub fn covers(&self, other: &Polygon) -> bool {
        let n = other.points.len();
        (0..n).all(|i| self.covers_segment(other.points[i], other.points[(i + 1) % n]))
    }

    fn covers_segment(&self, a: Point, b: Point) -> bool {
        let n = self.points.len();
        let mut cuts = vec![0.0, 1.0];
        for i in 0..n {
            cuts.extend(meeting_params((a, b), (self.points[i], self.points[(i + 1) % n])));
        }
        cuts.sort_by(f64::total_cmp);
        let at = |t: f64| Point { x: a.x + (b.x - a.x) * t, y: a.y + (b.y - a.y) * t };
        cuts.iter().all(|&t| self.contains_or_touches(at(t)))
            && cuts.windows(2).all(|w| self.contains_or_touches(at((w[0] + w[1]) / 2.0)))
    }

    fn contains_or_touches(&self, p: Point) -> bool {
        let n = self.points.len();
        self.contains(p) || (0..n).any(|i| on_segment(p, (self.points[i], self.points[(i + 1) % n])))
    }

    /// The first pair of non-adjacent edges that cross, if any.
    fn first_crossing(&self) -> Option<(usize, usize)> {
        let n = self.points.len();
        let edge = |i: usize| (self.points[i], self.points[(i + 1) % n]);
        for i in 0..n {
            for j in i + 1..n {
                let adjacent = j == i + 1 || (i == 0 && j == n - 1);
                if !adjacent && segments_cross(edge(i), edge(j)) {
                    return Some((i, j));
                }
            }
        }
        None
    }
}

fn orientation(a: Point, b: Point, c: Point) -> f64 {
    (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x)
}

fn segments_cross((a, b): (Point, Point), (c, d): (Point, Point)) -> bool {
    let (d1, d2) = (orientation(a, b, c), orientation(a, b, d));
    let (d3, d4) = (orientation(c, d, a), orientation(c, d, b));
    (d1 * d2 < 0.0) && (d3 * d4 < 0.0)
}

/// Within this distance (a millionth of the frame) a point counts as on an edge.
const TOUCH: f64 = 1e-9;

fn on_segment(p: Point, (a, b): (Point, Point)) -> bool {
    let length = ((b.x - a.x).powi(2) + (b.y - a.y).powi(2)).sqrt();
    let distance = orientation(a, b, p).abs() / length.max(f64::MIN_POSITIVE);
    distance <= TOUCH
        && p.x >= a.x.min(b.x) - TOUCH
        && p.x <= a.x.max(b.x) + TOUCH
        && p.y >= a.y.min(b.y) - TOUCH
        && p.y <= a.y.max(b.y) + TOUCH
}

/// Where along `a→b` (0..1) the segment `c→d` meets it: the crossing point, or the ends of an
/// overlap when the two lie on one line.
fn meeting_params((a, b): (Point, Point), (c, d): (Point, Point)) -> Vec<f64> {
    let r = Point { x: b.x - a.x, y: b.y - a.y };
    let s = Point { x: d.x - c.x, y: d.y - c.y };
    let cross = r.x * s.y - r.y * s.x;
    let ac = Point { x: c.x - a.x, y: c.y - a.y };
    let length2 = r.x * r.x + r.y * r.y;
    if cross.abs() < 1e-15 {
        // Parallel: only collinear overlaps cut the segment, at the other segment's ends.
        if (ac.x * r.y - ac.y * r.x).abs() > 1e-15 || length2 == 0.0 {
            return Vec::new();
        }
        let project = |p: Point| ((p.x - a.x) * r.x + (p.y - a.y) * r.y) / length2;
        return [project(c), project(d)].into_iter().filter(|t| (0.0..=1.0).contains(t)).collect();
    }
    let t = (ac.x * s.y - ac.y * s.x) / cross;
    let u = (ac.x * r.y - ac.y * r.x) / cross;
    if (0.0..=1.0).contains(&t) && (-1e-12..=1.0 + 1e-12).contains(&u) {
        vec![t]
    } else {
        Vec::new()
    }
}

/// A zone as the judge uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub id: String,
    pub role: ZoneRole,
    /// The bin's category, for bin zones.
    pub category: Option<String>,
    pub polygon: Polygon,
}

impl Zone {
    /// Is the pixel (x, y) of a `width`×`height` frame inside?
    pub fn contains_pixel(&self, x: f32, y: f32, width: u32, height: u32) -> bool {
        self.polygon.contains(Point { x: f64::from(x) / f64::from(width), y: f64::from(y) / f64::from(height) })
    }

    /// Share of a box (frame pixels) that lies inside, estimated on a 10×10 grid of sample points.
    pub fn share_of_box_inside(&self, b: &BoundingBox, width: u32, height: u32) -> f32 {
        const STEPS: usize = 10;
        let mut inside = 0;
        for i in 0..STEPS {
            for j in 0..STEPS {
                let x = b.x1 + b.width() * (i as f32 + 0.5) / STEPS as f32;
                let y = b.y1 + b.height() * (j as f32 + 0.5) / STEPS as f32;
                if self.contains_pixel(x, y, width, height) {
                    inside += 1;
                }
            }
        }
        inside as f32 / (STEPS * STEPS) as f32
    }

    /// Corners in frame pixels, for drawing.
    pub fn pixel_corners(&self, width: u32, height: u32) -> Vec<(f32, f32)> {
        self.polygon
            .points()
            .iter()
            .map(|p| ((p.x * f64::from(width)) as f32, (p.y * f64::from(height)) as f32))
            .collect()
    }

    /// Cells of a `cols`×`rows` grid laid over the frame whose centres are inside.
    pub fn grid_mask(&self, cols: usize, rows: usize) -> Vec<bool> {
        let mut mask = vec![false; cols * rows];
        for r in 0..rows {
            for c in 0..cols {
                let p = Point { x: (c as f64 + 0.5) / cols as f64, y: (r as f64 + 0.5) / rows as f64 };
                mask[r * cols + c] = self.polygon.contains(p);
            }
        }
        mask
    }
}

/// Maps frame pixels to metres on the ground plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Homography {
    m: [[f64; 3]; 3],
}

/// A subject's place on the ground plane, from the camera's homography.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundFootprint {
    pub position_m: [f64; 2],
    pub width_m: f64,
}

impl Homography {
    pub fn new(m: [[f64; 3]; 3]) -> Result<Self, String> {
        if m.iter().flatten().any(|v| !v.is_finite()) {
            return Err("holds a value that is not a finite number; expected a 3×3 matrix of numbers".into());
        }
        let h = Self { m };
        if h.determinant().abs() < 1e-12 {
            return Err("has determinant 0 (singular); expected an invertible 3×3 matrix".into());
        }
        Ok(h)
    }

    fn determinant(&self) -> f64 {
        let m = &self.m;
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// Ground position (metres) of frame pixel (x, y); None on the horizon line.
    pub fn apply(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let m = &self.m;
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        if w.abs() < 1e-12 {
            return None;
        }
        Some(((m[0][0] * x + m[0][1] * y + m[0][2]) / w, (m[1][0] * x + m[1][1] * y + m[1][2]) / w))
    }

    /// Where a subject in box `b` stands on the ground (the middle of the box's bottom edge), and
    /// how wide that bottom edge is there, both in metres.
    pub fn footprint(&self, b: &BoundingBox) -> Option<GroundFootprint> {
        let (x1, x2, y) = (f64::from(b.x1), f64::from(b.x2), f64::from(b.y2));
        let centre = self.apply((x1 + x2) / 2.0, y)?;
        let (left, right) = (self.apply(x1, y)?, self.apply(x2, y)?);
        let width = ((right.0 - left.0).powi(2) + (right.1 - left.1).powi(2)).sqrt();
        Some(GroundFootprint { position_m: [centre.0, centre.1], width_m: width })
    }

    /// Ground area (m²) of one frame pixel at (x, y): the Jacobian of a projective map is det(H)/w³.
    pub fn pixel_area_m2(&self, x: f64, y: f64) -> f64 {
        let m = &self.m;
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        if w.abs() < 1e-12 {
            return 0.0;
        }
        (self.determinant() / (w * w * w)).abs()
    }
}

/// A camera's zones and calibration, compiled from its `[scenes.<camera>]` section.
#[derive(Debug, Clone, Default)]
pub struct Scene {
    pub zones: Vec<Zone>,
    pub ground: Option<Homography>,
    pub blur_people: bool,
}

impl Scene {
    /// Config was validated before; a zone that still fails is skipped with a log line.
    pub fn from_config(camera: &str, config: &SceneConfig, blur_people_default: bool) -> Self {
        let zones = config
            .zones
            .iter()
            .filter_map(|z| match Polygon::new(&z.polygon) {
                Ok(polygon) => Some(Zone { id: z.id.clone(), role: z.role, category: z.category.clone(), polygon }),
                Err(problem) => {
                    tracing::error!(camera, zone = %z.id, "zone polygon {problem}; zone ignored");
                    None
                }
            })
            .collect();
        Self {
            zones,
            ground: config.ground_homography.and_then(|m| Homography::new(m).ok()),
            blur_people: config.blur_people.unwrap_or(blur_people_default),
        }
    }

    pub fn zones_with_role(&self, role: ZoneRole) -> impl Iterator<Item = &Zone> {
        self.zones.iter().filter(move |z| z.role == role)
    }

    pub fn has_role(&self, role: ZoneRole) -> bool {
        self.zones.iter().any(|z| z.role == role)
    }

    /// Is the box's centre inside an `ignore` zone?
    pub fn ignores(&self, b: &BoundingBox, width: u32, height: u32) -> bool {
        let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
        self.zones_with_role(ZoneRole::Ignore).any(|z| z.contains_pixel(cx, cy, width, height))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footprint_is_the_bottom_edge_on_the_ground_in_metres() {
        // One pixel is 1 cm on the ground, seen straight down.
        let ground = Homography::new([[0.01, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.0, 1.0]]).unwrap();
        let b = BoundingBox { x1: 100.0, y1: 250.0, x2: 300.0, y2: 400.0 };
        let footprint = ground.footprint(&b).unwrap();
        assert!((footprint.position_m[0] - 2.0).abs() < 1e-9 && (footprint.position_m[1] - 4.0).abs() < 1e-9);
        assert!((footprint.width_m - 2.0).abs() < 1e-9, "{footprint:?}");
        // Two subjects 3 m apart on the ground are 3 m apart in their footprints.
        let other = BoundingBox { x1: 400.0, y1: 250.0, x2: 600.0, y2: 400.0 };
        let there = ground.footprint(&other).unwrap().position_m;
        let apart =
            ((there[0] - footprint.position_m[0]).powi(2) + (there[1] - footprint.position_m[1]).powi(2)).sqrt();
        assert!((apart - 3.0).abs() < 1e-9, "{apart}");
    }

    fn square() -> Polygon {
        Polygon::new(&[[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.5, 1.0]]).unwrap()
    }

    #[test]
    fn a_square_contains_its_inside_and_not_its_outside() {
        let s = square();
        assert!((s.area() - 0.25).abs() < 1e-9);
        assert!(s.contains(Point { x: 0.75, y: 0.75 }));
        assert!(!s.contains(Point { x: 0.25, y: 0.75 }));
        assert!(!s.contains(Point { x: 0.75, y: 0.25 }));
    }

    #[test]
    fn an_explicitly_closed_ring_is_accepted() {
        let p = Polygon::new(&[[0.1, 0.1], [0.9, 0.1], [0.5, 0.9], [0.1, 0.1]]).unwrap();
        assert_eq!(p.points().len(), 3);
    }

    #[test]
    fn bad_polygons_are_refused_saying_why() {
        let err = Polygon::new(&[[0.1, 0.1], [0.9, 0.1]]).unwrap_err();
        assert!(err.contains("at least 3"), "{err}");
        let err = Polygon::new(&[[0.1, 0.1], [1.2, 0.1], [0.5, 0.9]]).unwrap_err();
        assert!(err.contains("corner 1") && err.contains("outside the frame"), "{err}");
        let err = Polygon::new(&[[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]).unwrap_err();
        assert!(err.contains("non-degenerate"), "{err}");
        // A bow tie: edges 0 and 2 cross.
        let err = Polygon::new(&[[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]).unwrap_err();
        assert!(err.contains("crosses"), "{err}");
    }

    #[test]
    fn a_polygon_covers_what_lies_inside_it_and_nothing_that_sticks_out() {
        let p = |corners: &[[f64; 2]]| Polygon::new(corners).unwrap();
        let window = p(&[[0.2, 0.2], [0.4, 0.2], [0.4, 0.5], [0.2, 0.5]]);
        // The same zone, a larger one, one with the same edges touched: covered.
        assert!(window.covers(&window));
        assert!(p(&[[0.1, 0.1], [0.5, 0.1], [0.5, 0.6], [0.1, 0.6]]).covers(&window));
        assert!(p(&[[0.2, 0.2], [0.4, 0.2], [0.4, 0.6], [0.2, 0.6]]).covers(&window));
        // Shrunk, moved, moved to a corner, one corner pulled in: not covered.
        assert!(!p(&[[0.2, 0.2], [0.4, 0.2], [0.4, 0.45], [0.2, 0.45]]).covers(&window));
        assert!(!p(&[[0.25, 0.2], [0.45, 0.2], [0.45, 0.5], [0.25, 0.5]]).covers(&window));
        assert!(!p(&[[0.0, 0.0], [0.02, 0.0], [0.02, 0.02], [0.0, 0.02]]).covers(&window));
        assert!(!p(&[[0.2, 0.2], [0.4, 0.2], [0.39, 0.5], [0.2, 0.5]]).covers(&window));
        // A U shape around the window's middle: every corner of the window is inside, its middle is not.
        let u =
            p(&[[0.1, 0.1], [0.5, 0.1], [0.5, 0.6], [0.35, 0.6], [0.35, 0.3], [0.25, 0.3], [0.25, 0.6], [0.1, 0.6]]);
        assert!(!u.covers(&window));
        let thin = p(&[[0.2, 0.2], [0.4, 0.2], [0.4, 0.22], [0.2, 0.22]]);
        assert!(u.covers(&thin));
    }

    #[test]
    fn share_of_a_box_inside_a_zone() {
        let zone = Zone { id: "bin".into(), role: ZoneRole::Bin, category: Some("residual".into()), polygon: square() };
        let inside = BoundingBox { x1: 60.0, y1: 60.0, x2: 90.0, y2: 90.0 };
        let half = BoundingBox { x1: 25.0, y1: 60.0, x2: 75.0, y2: 90.0 };
        let outside = BoundingBox { x1: 0.0, y1: 0.0, x2: 40.0, y2: 40.0 };
        assert_eq!(zone.share_of_box_inside(&inside, 100, 100), 1.0);
        assert!((zone.share_of_box_inside(&half, 100, 100) - 0.5).abs() < 0.11);
        assert_eq!(zone.share_of_box_inside(&outside, 100, 100), 0.0);
        let mask = zone.grid_mask(4, 4);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 4);
        assert!(mask[15] && !mask[0]);
    }

    #[test]
    fn homography_scales_pixels_to_square_metres() {
        // 100 pixels per metre, no perspective: a pixel is 1e-4 m².
        let h = Homography::new([[0.01, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.0, 1.0]]).unwrap();
        assert_eq!(h.apply(250.0, 100.0), Some((2.5, 1.0)));
        assert!((h.pixel_area_m2(10.0, 10.0) - 1e-4).abs() < 1e-12);
        // With perspective, rows further up (smaller w) cover more ground.
        let p = Homography::new([[0.01, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.001, 0.5]]).unwrap();
        assert!(p.pixel_area_m2(10.0, 0.0) > p.pixel_area_m2(10.0, 400.0));
        assert!(Homography::new([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]]).unwrap_err().contains("singular"));
    }
}
