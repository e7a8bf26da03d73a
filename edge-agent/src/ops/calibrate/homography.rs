//! Ground-plane homography: maps image pixels to metres on the ground from four or more measured
//! point pairs (direct linear transform with Hartley normalisation, solved by SVD). Refuses too few,
//! repeated, collinear or inconsistent points with an error naming the pair, and reports the
//! reprojection error so the installer knows how far to trust areas and distances.

use nalgebra::{DMatrix, Matrix3, Vector3};
use serde::{Deserialize, Serialize};

/// One measured pair: a pixel in the camera image and the same spot on the ground in metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PointPair {
    pub image: [f64; 2],
    pub ground: [f64; 2],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HomographyError {
    #[error("{0}")]
    Parse(String),
    #[error("need at least 4 point pairs, got {0}")]
    TooFew(usize),
    #[error("point pairs {first} and {second} use the same {space} point; every pair must be a different spot")]
    Repeated { first: usize, second: usize, space: &'static str },
    #[error("the {space} points are (nearly) on one line; a plane needs points spread in two directions (at least 3 not on a line)")]
    Collinear { space: &'static str },
    #[error("the points do not fit one ground plane: pair {worst} is off by {error_m:.2} m (largest allowed {max_m:.2} m); re-measure it or leave it out")]
    Inconsistent { worst: usize, error_m: f64, max_m: f64 },
    #[error("the points are degenerate: {0}")]
    Degenerate(String),
}

/// Image pixels → ground metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Homography {
    pub matrix: Matrix3<f64>,
}

/// A fitted homography with how well it reproduces the measured points.
#[derive(Debug, Clone)]
pub struct GroundFit {
    pub homography: Homography,
    /// Per pair: distance in metres between the measured ground point and the mapped pixel.
    pub errors_m: Vec<f64>,
    pub rms_error_m: f64,
    pub max_error_m: f64,
}

/// Parses `"x,y=X,Y; x,y=X,Y; ..."` (pixels = metres).
pub fn parse_points(text: &str) -> Result<Vec<PointPair>, HomographyError> {
    let number = |s: &str, what: &str, index: usize| {
        s.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
            HomographyError::Parse(format!("pair {index}: {what} {s:?} is not a number (expected \"x,y=X,Y\")"))
        })
    };
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, pair)| {
            let index = i + 1;
            let (image, ground) = pair.split_once('=').ok_or_else(|| {
                HomographyError::Parse(format!("pair {index} {pair:?}: expected \"x,y=X,Y\" (pixels = metres)"))
            })?;
            let two = |side: &str, what: &str| -> Result<[f64; 2], HomographyError> {
                let (a, b) = side.split_once(',').ok_or_else(|| {
                    HomographyError::Parse(format!("pair {index} {pair:?}: the {what} side needs two numbers \"a,b\""))
                })?;
                Ok([number(a, what, index)?, number(b, what, index)?])
            };
            Ok(PointPair { image: two(image, "image")?, ground: two(ground, "ground")? })
        })
        .collect()
}

impl Homography {
    pub fn from_rows(rows: [[f64; 3]; 3]) -> Self {
        Self { matrix: Matrix3::from_fn(|r, c| rows[r][c]) }
    }

    pub fn rows(&self) -> [[f64; 3]; 3] {
        std::array::from_fn(|r| std::array::from_fn(|c| self.matrix[(r, c)]))
    }

    /// Maps an image pixel to ground metres; `None` on the horizon line (w = 0).
    pub fn to_ground(&self, x: f64, y: f64) -> Option<[f64; 2]> {
        let p = self.matrix * Vector3::new(x, y, 1.0);
        (p.z.abs() > 1e-12).then(|| [p.x / p.z, p.y / p.z])
    }

    /// Area in m² of an image polygon (pixels), through the homography (shoelace on the ground).
    pub fn ground_area(&self, polygon: &[[f64; 2]]) -> Option<f64> {
        let ground: Option<Vec<[f64; 2]>> = polygon.iter().map(|p| self.to_ground(p[0], p[1])).collect();
        let ground = ground?;
        let n = ground.len();
        let twice: f64 =
            (0..n).map(|i| ground[i][0] * ground[(i + 1) % n][1] - ground[(i + 1) % n][0] * ground[i][1]).sum();
        Some(twice.abs() / 2.0)
    }

    /// Distance in metres between two image pixels, on the ground.
    pub fn ground_distance(&self, a: [f64; 2], b: [f64; 2]) -> Option<f64> {
        let (a, b) = (self.to_ground(a[0], a[1])?, self.to_ground(b[0], b[1])?);
        Some(((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
    }
}

/// Hartley normalisation: centroid to the origin, mean distance √2.
fn normalisation(points: &[[f64; 2]]) -> Matrix3<f64> {
    let n = points.len() as f64;
    let (cx, cy) = (points.iter().map(|p| p[0]).sum::<f64>() / n, points.iter().map(|p| p[1]).sum::<f64>() / n);
    let mean_distance = points.iter().map(|p| ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt()).sum::<f64>() / n;
    let s = if mean_distance > 0.0 { std::f64::consts::SQRT_2 / mean_distance } else { 1.0 };
    Matrix3::new(s, 0.0, -s * cx, 0.0, s, -s * cy, 0.0, 0.0, 1.0)
}

fn apply(m: &Matrix3<f64>, p: [f64; 2]) -> [f64; 2] {
    let v = m * Vector3::new(p[0], p[1], 1.0);
    [v.x / v.z, v.y / v.z]
}

/// True when every point lies within `tolerance` (relative to the spread) of one line.
fn collinear(points: &[[f64; 2]]) -> bool {
    let n = points.len() as f64;
    let (cx, cy) = (points.iter().map(|p| p[0]).sum::<f64>() / n, points.iter().map(|p| p[1]).sum::<f64>() / n);
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for p in points {
        let (dx, dy) = (p[0] - cx, p[1] - cy);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    // Eigenvalues of the 2×2 scatter matrix: a thin cloud has a tiny second one.
    let trace = sxx + syy;
    let det = sxx * syy - sxy * sxy;
    let gap = ((trace * trace / 4.0) - det).max(0.0).sqrt();
    let (large, small) = (trace / 2.0 + gap, trace / 2.0 - gap);
    large <= 0.0 || small / large < 1e-6
}

/// Fits the homography; `max_error_m` is the largest reprojection error a pair may have.
pub fn fit(pairs: &[PointPair], max_error_m: f64) -> Result<GroundFit, HomographyError> {
    if pairs.len() < 4 {
        return Err(HomographyError::TooFew(pairs.len()));
    }
    for (i, a) in pairs.iter().enumerate() {
        for (j, b) in pairs.iter().enumerate().skip(i + 1) {
            for (space, pa, pb) in [("image", a.image, b.image), ("ground", a.ground, b.ground)] {
                if (pa[0] - pb[0]).abs() < 1e-9 && (pa[1] - pb[1]).abs() < 1e-9 {
                    return Err(HomographyError::Repeated { first: i + 1, second: j + 1, space });
                }
            }
        }
    }
    let image: Vec<[f64; 2]> = pairs.iter().map(|p| p.image).collect();
    let ground: Vec<[f64; 2]> = pairs.iter().map(|p| p.ground).collect();
    for (space, points) in [("image", &image), ("ground", &ground)] {
        if collinear(points) {
            return Err(HomographyError::Collinear { space });
        }
    }
    let (t_image, t_ground) = (normalisation(&image), normalisation(&ground));
    // Each pair gives two rows of A·h = 0; at least 9 rows so the SVD yields all 9 right vectors.
    let rows = (2 * pairs.len()).max(9);
    let mut a = DMatrix::<f64>::zeros(rows, 9);
    for (i, pair) in pairs.iter().enumerate() {
        let [x, y] = apply(&t_image, pair.image);
        let [u, v] = apply(&t_ground, pair.ground);
        let r = 2 * i;
        a.row_mut(r).copy_from_slice(&[-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u]);
        a.row_mut(r + 1).copy_from_slice(&[0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v]);
    }
    let svd = a.svd(false, true);
    let v_t = svd.v_t.ok_or_else(|| HomographyError::Degenerate("the SVD did not converge".into()))?;
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&i, &j| svd.singular_values[i].total_cmp(&svd.singular_values[j]));
    let (smallest, second) = (order[0], order[1]);
    let largest = svd.singular_values[order[order.len() - 1]];
    if svd.singular_values[second] < 1e-9 * largest.max(1e-300) {
        return Err(HomographyError::Degenerate("more than one plane fits these points".into()));
    }
    let h = v_t.row(smallest);
    let normalised = Matrix3::new(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]);
    let t_ground_inverse =
        t_ground.try_inverse().ok_or_else(|| HomographyError::Degenerate("ground points have no spread".into()))?;
    let mut matrix = t_ground_inverse * normalised * t_image;
    if matrix[(2, 2)].abs() > 1e-12 {
        matrix /= matrix[(2, 2)];
    }
    let homography = Homography { matrix };
    let errors_m: Vec<f64> = pairs
        .iter()
        .map(|p| match homography.to_ground(p.image[0], p.image[1]) {
            Some(g) => ((g[0] - p.ground[0]).powi(2) + (g[1] - p.ground[1]).powi(2)).sqrt(),
            None => f64::INFINITY,
        })
        .collect();
    let (worst, worst_error) =
        errors_m.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0));
    // With exactly four pairs the fit is exact: only a fifth pair can show a bad measurement.
    if !(worst_error <= max_error_m) {
        return Err(HomographyError::Inconsistent { worst: worst + 1, error_m: worst_error, max_m: max_error_m });
    }
    let rms_error_m = (errors_m.iter().map(|e| e * e).sum::<f64>() / errors_m.len() as f64).sqrt();
    Ok(GroundFit { homography, errors_m, rms_error_m, max_error_m: worst_error })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera looking down a road: a known homography, and pairs made from it.
    fn known() -> Homography {
        Homography::from_rows([[0.02, 0.004, -3.0], [0.0005, 0.05, -4.0], [0.00001, 0.0012, 1.0]])
    }

    fn pairs_from(h: &Homography, pixels: &[[f64; 2]]) -> Vec<PointPair> {
        pixels.iter().map(|&p| PointPair { image: p, ground: h.to_ground(p[0], p[1]).unwrap() }).collect()
    }

    const PIXELS: [[f64; 2]; 6] =
        [[100.0, 400.0], [650.0, 410.0], [600.0, 150.0], [180.0, 140.0], [380.0, 260.0], [500.0, 330.0]];

    #[test]
    fn four_pairs_recover_a_known_plane_and_its_distances() {
        let truth = known();
        let fit = fit(&pairs_from(&truth, &PIXELS[..4]), 0.05).unwrap();
        assert!(fit.max_error_m < 1e-6, "{fit:?}");
        // A point not used for fitting maps where the true plane says.
        let [x, y] = truth.to_ground(420.0, 300.0).unwrap();
        let [fx, fy] = fit.homography.to_ground(420.0, 300.0).unwrap();
        assert!((x - fx).abs() < 1e-6 && (y - fy).abs() < 1e-6);
        let d_true = truth.ground_distance([100.0, 400.0], [650.0, 410.0]).unwrap();
        let d_fit = fit.homography.ground_distance([100.0, 400.0], [650.0, 410.0]).unwrap();
        assert!((d_true - d_fit).abs() < 1e-6);
    }

    #[test]
    fn a_metre_grid_gives_known_distances_and_areas() {
        // Pixels 100 px per metre, no perspective: a 3 m × 2 m rectangle.
        let pairs = parse_points("0,0=0,0; 300,0=3,0; 300,200=3,2; 0,200=0,2; 150,100=1.5,1").unwrap();
        let fit = fit(&pairs, 0.01).unwrap();
        let h = fit.homography;
        assert!((h.ground_distance([0.0, 0.0], [300.0, 200.0]).unwrap() - 13f64.sqrt()).abs() < 1e-9);
        let area = h.ground_area(&[[0.0, 0.0], [300.0, 0.0], [300.0, 200.0], [0.0, 200.0]]).unwrap();
        assert!((area - 6.0).abs() < 1e-9, "{area}");
    }

    #[test]
    fn small_measurement_noise_is_reported_not_refused() {
        let truth = known();
        let mut pairs = pairs_from(&truth, &PIXELS);
        pairs[4].ground[0] += 0.02;
        let fit = fit(&pairs, 0.1).unwrap();
        assert!(fit.rms_error_m > 0.0 && fit.max_error_m < 0.1, "{fit:?}");
    }

    #[test]
    fn a_wrong_pair_is_named() {
        let truth = known();
        let mut pairs = pairs_from(&truth, &PIXELS);
        pairs[5].ground[1] += 3.0;
        match fit(&pairs, 0.2) {
            Err(HomographyError::Inconsistent { worst, .. }) => assert_eq!(worst, 6),
            other => panic!("expected pair 6 named, got {other:?}"),
        }
    }

    #[test]
    fn too_few_repeated_and_collinear_points_are_refused() {
        let four_on_a_line = parse_points("0,0=0,0; 10,10=1,1; 20,20=2,2; 30,30=3,3").unwrap();
        assert_eq!(fit(&four_on_a_line, 1.0).unwrap_err(), HomographyError::Collinear { space: "image" });
        let three = parse_points("0,0=0,0; 10,0=1,0; 0,10=0,1").unwrap();
        assert_eq!(fit(&three, 1.0).unwrap_err(), HomographyError::TooFew(3));
        let repeated = parse_points("0,0=0,0; 10,0=1,0; 0,10=0,1; 10,0=2,2").unwrap();
        assert_eq!(fit(&repeated, 1.0).unwrap_err(), HomographyError::Repeated { first: 2, second: 4, space: "image" });
    }

    #[test]
    fn bad_point_text_names_the_pair() {
        let err = parse_points("0,0=0,0; 10,x=1,0").unwrap_err();
        assert!(err.to_string().contains("pair 2"), "{err}");
        let err = parse_points("0,0=0,0; 10,10").unwrap_err();
        assert!(err.to_string().contains("x,y=X,Y"), "{err}");
    }
}
