//! The box learns its site (`edge-agent learn`): crops of the supervisors' labelled pictures, their
//! embeddings through the shipped backbone (the same backends and pre-processing as the agent),
//! a head trained on part of them and checked on the rest, written as a model the agent loads like
//! any other. Offline, beside the flow: nothing in the flow imports it.

pub mod head;
pub mod report;
pub mod run;
pub mod train;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::infer::{BoundingBox, Findings, InferError, Model};
use crate::ops::calibrate::samples::{SampleSet, SamplesError};
use train::{Evaluation, Head, TrainError, TrainOptions};

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// Boxed: a sample error carries a model error, and this type travels in every `Result` here.
    #[error(transparent)]
    Samples(Box<SamplesError>),
    #[error(
        "labels file {labels}: the box {bbox:?} of {file:?} ({label}) lies outside the picture ({width}×{height}); \
         expected x1,y1,x2,y2 in the picture's pixels"
    )]
    Crop { labels: PathBuf, file: String, label: String, bbox: [f32; 4], width: u32, height: u32 },
    #[error("backbone on {path}: {source}")]
    Infer { path: PathBuf, source: Box<InferError> },
    #[error(transparent)]
    Train(#[from] TrainError),
}

impl From<SamplesError> for LearnError {
    fn from(error: SamplesError) -> Self {
        LearnError::Samples(Box::new(error))
    }
}

/// Another way of naming a crop's class (e.g. the ImageNet → category mapping); None: none of these.
pub type NameOf<'a> = &'a dyn Fn(&Embedded) -> Option<String>;

/// One labelled thing: a picture and, when the row has one, the box to crop.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledCrop {
    pub file: String,
    pub label: String,
    pub bbox: Option<BoundingBox>,
}

/// Every labelled row of the set (rows `file,none` say nothing to learn from).
pub fn labelled_crops(set: &SampleSet) -> Vec<LabelledCrop> {
    set.truth
        .iter()
        .flat_map(|(file, truths)| {
            truths.iter().map(|t| LabelledCrop { file: file.clone(), label: t.label.clone(), bbox: t.bbox })
        })
        .collect()
}

/// A crop's embedding, and what the backbone itself called it (top label and score).
#[derive(Debug, Clone)]
pub struct Embedded {
    pub crop: LabelledCrop,
    pub features: Vec<f32>,
    pub backbone_top: Option<(String, f32)>,
}

/// The pixels of `bbox` (whole pixels, clipped to the picture); refused when nothing is left.
fn crop_of(
    image: &image::RgbImage,
    crop: &LabelledCrop,
    labels: &std::path::Path,
) -> Result<image::RgbImage, LearnError> {
    let Some(b) = crop.bbox else { return Ok(image.clone()) };
    let (width, height) = image.dimensions();
    let x1 = b.x1.max(0.0).floor() as u32;
    let y1 = b.y1.max(0.0).floor() as u32;
    let x2 = (b.x2.ceil().max(0.0) as u32).min(width);
    let y2 = (b.y2.ceil().max(0.0) as u32).min(height);
    if x2 <= x1 || y2 <= y1 {
        return Err(LearnError::Crop {
            labels: labels.to_owned(),
            file: crop.file.clone(),
            label: crop.label.clone(),
            bbox: [b.x1, b.y1, b.x2, b.y2],
            width,
            height,
        });
    }
    Ok(image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image())
}

/// Runs the backbone on every crop (each picture decoded once); `progress` after each crop.
pub fn embed_crops(
    set: &SampleSet,
    crops: &[LabelledCrop],
    backbone: &mut Model,
    mut progress: impl FnMut(&LabelledCrop),
) -> Result<Vec<Embedded>, LearnError> {
    let mut embedded = Vec::with_capacity(crops.len());
    let mut current: Option<(String, image::RgbImage)> = None;
    for crop in crops {
        let path = set.path_of(&crop.file);
        if current.as_ref().is_none_or(|(file, _)| file != &crop.file) {
            let picture = crate::source::replay::decode_picture("learn", &path).map_err(SamplesError::from)?;
            current = Some((crop.file.clone(), picture));
        }
        let Some((_, picture)) = &current else { continue };
        let pixels = crop_of(picture, crop, &set.labels_file)?;
        let (features, findings) = backbone
            .embed(&pixels)
            .map_err(|source| LearnError::Infer { path: path.clone(), source: Box::new(source) })?;
        let backbone_top = match findings {
            Findings::Classify { classes } => classes.first().map(|c| (c.label.clone(), c.score)),
            Findings::Detect { .. } => None,
        };
        embedded.push(Embedded { crop: crop.clone(), features, backbone_top });
        progress(crop);
    }
    Ok(embedded)
}

/// A head and how it did on crops it never saw; `baseline` is the same check for another way of
/// labelling the crops (the ImageNet → category mapping), when there is one.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub head: Head,
    pub counts: BTreeMap<String, usize>,
    pub trained_on: usize,
    pub held_out: Vec<usize>,
    pub evaluation: Evaluation,
    pub baseline: Option<Evaluation>,
    /// The held-out crops the head got wrong: (index into the examples, predicted label).
    pub mistakes: Vec<(usize, String)>,
    /// Held-out crops cut from a picture that also gave training crops: their figures flatter.
    pub held_out_from_trained_pictures: usize,
}

/// Refuses too few crops per class or one class, splits (stratified, `held_out_share` of each
/// class held out), trains on the rest and scores the held-out crops. `baseline` names the label
/// another classifier would give a crop (None: none of these labels).
pub fn train_and_check(
    examples: &[Embedded],
    held_out_share: f64,
    seed: u64,
    options: TrainOptions,
    baseline: Option<NameOf>,
) -> Result<Outcome, TrainError> {
    let labels: Vec<String> = examples.iter().map(|e| e.crop.label.clone()).collect();
    let counts = train::check_counts(&labels)?;
    let (train_idx, held_out) = train::stratified_split(&labels, held_out_share, seed);
    let features: Vec<Vec<f32>> = train_idx.iter().map(|&i| examples[i].features.clone()).collect();
    let train_labels: Vec<String> = train_idx.iter().map(|&i| labels[i].clone()).collect();
    let head = train::fit(&features, &train_labels, options)?;
    let index_of = |label: &str| head.labels.iter().position(|l| l == label);
    let truth: Vec<usize> = held_out.iter().map(|&i| index_of(&labels[i]).unwrap_or(0)).collect();
    let predicted: Vec<Option<usize>> = held_out.iter().map(|&i| Some(head.predict(&examples[i].features))).collect();
    let mistakes = held_out
        .iter()
        .zip(&truth)
        .zip(&predicted)
        .filter(|((_, t), p)| Some(**t) != **p)
        .map(|((&i, _), p)| (i, p.map(|p| head.labels[p].clone()).unwrap_or_default()))
        .collect();
    let evaluation = train::evaluate(&head.labels, &truth, &predicted);
    let baseline = baseline.map(|name_of| {
        let answers: Vec<Option<usize>> =
            held_out.iter().map(|&i| name_of(&examples[i]).and_then(|l| index_of(&l))).collect();
        train::evaluate(&head.labels, &truth, &answers)
    });
    let trained_pictures: BTreeSet<&str> = train_idx.iter().map(|&i| examples[i].crop.file.as_str()).collect();
    let held_out_from_trained_pictures =
        held_out.iter().filter(|&&i| trained_pictures.contains(examples[i].crop.file.as_str())).count();
    Ok(Outcome {
        head,
        counts,
        trained_on: train_idx.len(),
        held_out,
        evaluation,
        baseline,
        mistakes,
        held_out_from_trained_pictures,
    })
}

/// The files a head was trained from, for the date of the newest.
pub fn files_of(crops: &[LabelledCrop]) -> BTreeSet<String> {
    crops.iter().map(|c| c.file.clone()).collect()
}

/// A head the agent is configured to use that `edge-agent learn` trained: for the page.
#[derive(Debug, Clone)]
pub struct SiteClassifier {
    /// The config key that uses it.
    pub role: &'static str,
    pub name: String,
    pub sha256: String,
    pub learned: crate::infer::manifest::LearnedSpec,
    /// Labelled pictures added to its sample folder after its newest sample (None: unreadable).
    pub new_since_training: Option<usize>,
}

/// The configured classifiers (taxonomy, overflow state, truck cover) that have a `[learned]`
/// section; manifests that cannot be read are left out (the agent itself reports those).
pub fn site_classifiers(config: &crate::config::Config) -> Vec<SiteClassifier> {
    let mut slots = vec![("taxonomy.classifier", config.taxonomy.classifier.clone())];
    if let Some(state) = &config.rules.overflow.state_classifier {
        slots.push(("rules.overflow.state_classifier", state.manifest.clone()));
    }
    if let Some(cover) = &config.rules.truck_exit.cover_classifier {
        slots.push(("rules.truck_exit.cover_classifier", cover.manifest.clone()));
    }
    slots
        .into_iter()
        .filter_map(|(role, path)| {
            let manifest = crate::infer::manifest::Manifest::load(&path).ok()?;
            let learned = manifest.learned?;
            let new_since_training = new_since_training(&learned);
            Some(SiteClassifier { role, name: manifest.name, sha256: manifest.sha256, learned, new_since_training })
        })
        .collect()
}

/// Pictures in the head's sample folder changed after its newest sample: labels made since.
pub fn new_since_training(learned: &crate::infer::manifest::LearnedSpec) -> Option<usize> {
    let newest: std::time::SystemTime = chrono::DateTime::parse_from_rfc3339(&learned.newest_sample).ok()?.into();
    let entries = std::fs::read_dir(&learned.samples).ok()?;
    let newer = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_lowercase();
            [".jpg", ".jpeg", ".png"].iter().any(|x| name.ends_with(x))
        })
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        // The date is kept to the second.
        .filter(|modified| modified.duration_since(newest).is_ok_and(|d| d.as_secs() >= 1))
        .count();
    Some(newer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::config::{BackendKind, InferenceConfig, ModelConfig};
    use crate::judge::config::{default_categories, TaxonomyConfig};
    use crate::judge::taxonomy::Taxonomy;
    use std::path::Path;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// No waste photos ship with the project, so the site's three classes are stand-ins made of
    /// the real photos in calibration/example-site/samples: "residual" is the coffee cup
    /// (coffee.png; the ImageNet mapping knows cups are residual), "recyclable" is metal
    /// (motorcycle_left.png, rocket.jpg), "kitchen" is animals standing in for organic waste
    /// (chelsea.png, the dog of dog.jpg). Each picture gives six crops of its region (whole, four
    /// corners and the centre at 80 %), and a mirrored, darker copy of it six more. Held-out crops
    /// are other crops of the same photos, not other photos.
    fn stand_in_site(dir: &Path, label_of: impl Fn(&str) -> Option<&'static str>) -> SampleSet {
        let samples = repo().join("calibration/example-site/samples");
        let sources: [(&str, Option<[u32; 4]>); 5] = [
            ("coffee.png", None),
            ("motorcycle_left.png", None),
            ("rocket.jpg", None),
            ("chelsea.png", None),
            ("dog.jpg", Some([110, 190, 330, 550])),
        ];
        let mut rows = String::from("file,label,x1,y1,x2,y2\n");
        for (file, region) in sources {
            let Some(label) = label_of(file) else { continue };
            let picture = image::open(samples.join(file)).unwrap().to_rgb8();
            let mut mirrored = image::imageops::flip_horizontal(&picture);
            for pixel in mirrored.pixels_mut() {
                pixel.0 = pixel.0.map(|v| (f32::from(v) * 0.8) as u8);
            }
            let (w, h) = picture.dimensions();
            let [x1, y1, x2, y2] = region.unwrap_or([0, 0, w, h]);
            let copy = format!("mirrored-{}", file.replace(".jpg", ".png"));
            std::fs::copy(samples.join(file), dir.join(file)).unwrap();
            mirrored.save(dir.join(&copy)).unwrap();
            for (name, [x1, x2]) in [(file.to_string(), [x1, x2]), (copy, [w - x2, w - x1])] {
                let (cw, ch) = ((x2 - x1) * 4 / 5, (y2 - y1) * 4 / 5);
                let corners = [
                    (x1, y1),
                    (x2 - cw, y1),
                    (x1, y2 - ch),
                    (x2 - cw, y2 - ch),
                    (x1 + (x2 - x1 - cw) / 2, y1 + (y2 - y1 - ch) / 2),
                ];
                rows.push_str(&format!("{name},{label},{x1},{y1},{x2},{y2}\n"));
                for (cx, cy) in corners {
                    rows.push_str(&format!("{name},{label},{cx},{cy},{},{}\n", cx + cw, cy + ch));
                }
            }
        }
        std::fs::write(dir.join("labels.csv"), rows).unwrap();
        SampleSet::open(dir, &dir.join("labels.csv")).unwrap()
    }

    /// The site's words for the stand-in photos: the cup is residual, metal recyclable, animals kitchen.
    fn categories_of(file: &str) -> Option<&'static str> {
        match file {
            "coffee.png" => Some("residual"),
            "motorcycle_left.png" | "rocket.jpg" => Some("recyclable"),
            _ => Some("kitchen"),
        }
    }

    fn backbone() -> Model {
        let config = ModelConfig {
            manifest: repo().join("models/efficientnet_lite0.toml"),
            score_threshold: None,
            class_thresholds: Default::default(),
        };
        Model::load_embedder(&config, &InferenceConfig { backend: BackendKind::Tract, ..Default::default() }).unwrap()
    }

    /// The shipped way: the ImageNet top label, mapped to a category when it scores 0.15 or more.
    fn imagenet_mapping() -> impl Fn(&Embedded) -> Option<String> {
        let config = TaxonomyConfig {
            categories: default_categories(),
            mappings: vec![repo().join("models/efficientnet_lite0.taxonomy.toml")],
            ..TaxonomyConfig::default()
        };
        let taxonomy = Taxonomy::load(&config).unwrap();
        move |e: &Embedded| {
            let (label, score) = e.backbone_top.as_ref()?;
            (*score >= 0.15).then(|| taxonomy.category_of("efficientnet_lite0", label).to_string())
        }
    }

    /// The whole way on real pictures: crops → embeddings → head → held-out figures better than the
    /// ImageNet mapping's → an ONNX model that the agent's own loader runs and that gives the
    /// head's answers on the held-out crops.
    #[test]
    fn a_head_on_real_crops_beats_the_imagenet_mapping_and_loads_as_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let set = stand_in_site(dir.path(), categories_of);
        let crops = labelled_crops(&set);
        assert_eq!(crops.len(), 60);
        let mut backbone = backbone();
        let mut seen = 0;
        let examples = embed_crops(&set, &crops, &mut backbone, |_| seen += 1).unwrap();
        assert_eq!((seen, examples.len()), (60, 60));
        let mapping = imagenet_mapping();
        let outcome = train_and_check(&examples, 0.25, 1, TrainOptions::default(), Some(&mapping)).unwrap();
        assert_eq!(outcome.counts.values().copied().collect::<Vec<_>>(), [24, 24, 12]);
        assert_eq!(outcome.held_out.len(), 15);
        assert_eq!(outcome.held_out_from_trained_pictures, 15, "every held-out crop's picture gave training crops too");
        let baseline = outcome.baseline.clone().unwrap();
        eprintln!("head accuracy {:.3}, ImageNet mapping {:.3}", outcome.evaluation.accuracy, baseline.accuracy);
        assert!(outcome.evaluation.accuracy >= 0.9, "{:?}", outcome.evaluation);
        assert!(
            outcome.evaluation.accuracy > baseline.accuracy + 0.3,
            "head {:?}\nmapping {baseline:?}",
            outcome.evaluation
        );
        // The mapping knows the cup, and nothing of the site's metal or animals.
        let residual = baseline.classes.iter().find(|c| c.label == "residual").unwrap();
        assert!(residual.recall > 0.5, "{baseline:?}");

        let backbone_manifest = backbone.manifest().clone();
        let written = write_head(&dir.path().join("model"), "site_garbage", &backbone, &set, &outcome);
        let size = std::fs::metadata(&written.onnx).unwrap().len();
        assert!(
            size < std::fs::metadata(backbone_manifest.onnx_path()).unwrap().len() - 4_000_000,
            "the 1000-class layer is pruned: {size}"
        );
        let config = ModelConfig {
            manifest: written.manifest.clone(),
            score_threshold: None,
            class_thresholds: Default::default(),
        };
        let mut site_model = Model::load(&config, BackendKind::Tract).unwrap();
        assert_eq!(site_model.labels(), ["kitchen", "recyclable", "residual"]);
        assert_eq!(
            site_model.manifest().learned.as_ref().map(|l| l.held_out_accuracy),
            Some(outcome.evaluation.accuracy)
        );
        let mut on_ort = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).filter(|p| p.is_file()).map(|path| {
            let inference =
                InferenceConfig { backend: BackendKind::Ort, ort_library: Some(path), ..Default::default() };
            Model::load_with(&config, &inference).unwrap()
        });
        for &i in &outcome.held_out {
            let crop = &examples[i].crop;
            let picture = crate::source::replay::decode_picture("test", &set.path_of(&crop.file)).unwrap();
            let pixels = crop_of(&picture, crop, &set.labels_file).unwrap();
            let Findings::Classify { classes } = site_model.infer(&pixels).unwrap().findings else { panic!() };
            let expected = &outcome.head.labels[outcome.head.predict(&examples[i].features)];
            assert_eq!(&classes[0].label, expected, "{crop:?}: {classes:?}");
            // ONNX Runtime runs the written file too, with the same answer (where the library is).
            if let Some(on_ort) = on_ort.as_mut() {
                let Findings::Classify { classes: from_ort } = on_ort.infer(&pixels).unwrap().findings else {
                    panic!()
                };
                assert_eq!(&from_ort[0].label, expected, "{crop:?}: {from_ort:?}");
                assert!((from_ort[0].score - classes[0].score).abs() < 1e-3, "{from_ort:?} vs {classes:?}");
            }
        }
    }

    /// Deployment for `wrong_bin`: at a site where paper cups go into the recyclable bin, the
    /// supervisors label the cup crops "recyclable" (and the animals "kitchen"). With the head
    /// trained on that as the taxonomy's classifier, the cup pasted into a recyclable bin
    /// (judge::fixtures::cup_on_pavement, a real composite) is no wrong_bin event, where the shipped
    /// ImageNet mapping calls it residual and reports it; the head is named as the classifier.
    #[test]
    fn wrong_bin_judges_with_the_site_head_when_it_is_the_taxonomy_classifier() {
        use crate::judge::config::{TrackingConfig, WrongBinRuleConfig, ZoneRole};
        use crate::judge::fixtures::{at, cup_on_pavement, detector_result, zone};
        use crate::judge::rules::wrong_bin::{Categoriser, WrongBinRule};
        use crate::judge::rules::{detections_of, FrameView, SecondStage};
        use crate::judge::tracker::TrackIds;
        use crate::judge::zones::Scene;

        let dir = tempfile::tempdir().unwrap();
        let set = stand_in_site(dir.path(), |file| match file {
            "coffee.png" => Some("recyclable"),
            "chelsea.png" | "dog.jpg" => Some("kitchen"),
            _ => None,
        });
        let crops = labelled_crops(&set);
        let mut backbone = backbone();
        let examples = embed_crops(&set, &crops, &mut backbone, |_| ()).unwrap();
        let outcome = train_and_check(&examples, 0.25, 1, TrainOptions::default(), None).unwrap();
        assert_eq!(outcome.evaluation.accuracy, 1.0, "{:?}", outcome.evaluation);
        let written = write_head(&dir.path().join("model"), "site_garbage", &backbone, &set, &outcome);

        let frame = cup_on_pavement();
        let results = vec![detector_result(&frame)];
        let scene = Scene {
            zones: vec![zone("bin-1", ZoneRole::Bin, Some("recyclable"), [0.0, 0.6, 0.4, 1.0])],
            ..Scene::default()
        };
        let found = detections_of(&results, &scene, frame.width(), frame.height(), None);
        let cup = found.iter().find(|f| f.detection.label == "cup").expect("the detector sees the pasted cup");
        let taxonomy = Taxonomy::load(&TaxonomyConfig {
            mappings: vec![
                repo().join("models/efficientnet_lite0.taxonomy.toml"),
                repo().join("models/nanodet.taxonomy.toml"),
            ],
            ..TaxonomyConfig::default()
        })
        .unwrap();
        let judge = |classifier: &mut SecondStage| {
            let mut categoriser =
                Categoriser { taxonomy: &taxonomy, classifier: Some(classifier), min_classifier_score: 0.15 };
            let mut rule = WrongBinRule::new(&WrongBinRuleConfig::default(), &TrackingConfig::default());
            let mut ids = TrackIds::default();
            let mut events = Vec::new();
            let mut category = None;
            for i in 0..8 {
                let view = FrameView {
                    camera: "station",
                    time: at(i as f64 * 0.5),
                    image: &frame,
                    found: &found,
                    scene: &scene,
                    foreground: None,
                };
                category.get_or_insert_with(|| categoriser.categorise(&view, cup));
                events.extend(rule.judge(&view, &mut ids, &mut categoriser));
            }
            (category.unwrap_or_default(), events)
        };
        let mut shipped =
            SecondStage::load(&repo().join("models/efficientnet_lite0.toml"), BackendKind::Tract).unwrap();
        let (category, events) = judge(&mut shipped);
        assert_eq!(category.0, "residual", "espresso → residual");
        assert_eq!(events.len(), 1, "the shipped mapping reports the cup: {events:?}");
        let mut site = SecondStage::load(&written.manifest, BackendKind::Tract).unwrap();
        let (category, events) = judge(&mut site);
        assert_eq!(category.0, "recyclable");
        assert_eq!(category.1.map(|m| (m.name, m.sha256)), Some(("site_garbage".to_string(), written.sha256.clone())));
        assert!(events.is_empty(), "the site's head puts the cup in the recyclable bin: {events:?}");
    }

    /// A state classifier for `overflow`, learnt from real composites: the bin zone at the lower
    /// right of dog.jpg (the zone of judge::rules::overflow's tests), "overflowing" with a heap
    /// pasted over it (the horse and cow of person.jpg, the dog of dog.jpg, the cup of coffee.png,
    /// at several sizes and places), "normal" empty (brighter and darker) or with a little muck
    /// beside it. Then the rule, with the head as `state_classifier` and no background model, sees
    /// the overflow of the rule's own test composite (a heap size and place not trained on) start
    /// after `after_secs` and end once it is cleared, and nothing for the little muck.
    #[test]
    fn a_learnt_state_classifier_flips_overflow_on_real_composites() {
        use crate::judge::config::{OverflowRuleConfig, StateClassifierConfig, TrackingConfig, ZoneRole};
        use crate::judge::fixtures::{at, muck, paste, sample, zone};
        use crate::judge::rules::overflow::{OverflowRule, StateClassifier};
        use crate::judge::rules::{FrameView, SecondStage};
        use crate::judge::zones::Scene;
        use crate::wire::LifecycleState;
        use image::imageops::{crop_imm, resize, FilterType};

        let empty = sample("dog.jpg");
        let heaps = [
            crop_imm(&sample("person.jpg"), 393, 131, 198, 209).to_image(),
            crop_imm(&sample("dog.jpg"), 130, 212, 180, 318).to_image(),
            sample("coffee.png"),
        ];
        // The zone's crop as the rule takes it (10 % margin), moved by a few pixels.
        let mut composites = Composites::new([448, 259, 768, 576], [(0, 0), (-8, 6), (8, -6), (4, 8)]);
        for (h, heap) in heaps.iter().enumerate() {
            for (size, x, y) in [(180, 500, 330), (290, 470, 285), (220, 540, 350), (260, 480, 300)] {
                let heap = resize(heap, size, size * 7 / 8 + h as u32 * 10, FilterType::Triangle);
                composites.add(&paste(&empty, &heap, x, y), "overflowing");
            }
        }
        for brightness in [0.8f32, 0.9, 1.0, 1.1, 1.2, 1.3] {
            let mut lit = empty.clone();
            lit.pixels_mut().for_each(|p| p.0 = p.0.map(|v| (f32::from(v) * brightness).min(255.0) as u8));
            composites.add(&lit, "normal");
        }
        for (x, y) in [(500, 320), (620, 480), (470, 500), (650, 300), (560, 420), (700, 360)] {
            composites.add(&paste(&empty, &muck(), x, y), "normal");
        }
        let (dir, set) = composites.open();
        let crops = labelled_crops(&set);
        let mut backbone = backbone();
        let examples = embed_crops(&set, &crops, &mut backbone, |_| ()).unwrap();
        let outcome = train_and_check(&examples, 0.25, 1, TrainOptions::default(), None).unwrap();
        assert_eq!(outcome.counts.values().copied().collect::<Vec<_>>(), [12, 12]);
        assert_eq!(outcome.evaluation.accuracy, 1.0, "{:?}", outcome.evaluation);
        let written = write_head(&dir.path().join("model"), "bin_overflow", &backbone, &set, &outcome);

        let state = StateClassifierConfig {
            manifest: written.manifest.clone(),
            on_labels: vec!["overflowing".into()],
            min_score: 0.5,
        };
        let config = OverflowRuleConfig { state_classifier: Some(state.clone()), ..OverflowRuleConfig::default() };
        let scene = Scene {
            zones: vec![zone("bin-kitchen", ZoneRole::Bin, Some("kitchen"), [0.62, 0.5, 0.98, 1.0])],
            ..Scene::default()
        };
        let mut rule = OverflowRule::new(&config, &TrackingConfig::default());
        assert!(!rule.needs_background(&scene), "the classifier decides");
        let mut classifier =
            StateClassifier { stage: SecondStage::load(&written.manifest, BackendKind::Tract).unwrap(), config: state };
        // The overflow rule's own test composite: the horse-and-cow heap, 240 px, at (490, 310).
        let heap = resize(&heaps[0], 240, 240, FilterType::Triangle);
        let overflowing = paste(&empty, &heap, 490, 310);
        let some_muck = paste(&empty, &muck(), 500, 320);
        let mut run = |busy: &image::RgbImage, when: &dyn Fn(f64) -> bool| {
            let mut all = Vec::new();
            // A frame every 2 s: the classifier runs on every frame.
            for i in 0..100 {
                let t = i as f64 * 2.0;
                let image = if when(t) { busy } else { &empty };
                let view =
                    FrameView { camera: "station", time: at(t), image, found: &[], scene: &scene, foreground: None };
                all.extend(rule.judge(&view, Some(&mut classifier)));
            }
            all
        };
        let all = run(&overflowing, &|t| (30.0..150.0).contains(&t));
        let states: Vec<_> = all.iter().map(|t| t.state).collect();
        assert_eq!(states, [LifecycleState::Start, LifecycleState::End], "{all:?}");
        assert_eq!(all[0].details.coverage, None, "a classifier's finding, not a coverage");
        let named = all[0].details.classifier.as_ref().map(|m| (m.name.as_str(), m.sha256.as_str()));
        assert_eq!(named, Some(("bin_overflow", written.sha256.as_str())), "the event names the head");
        let started_after = crate::judge::tracker::seconds_between(at(30.0), all[0].last_seen);
        assert!((60.0..70.0).contains(&started_after), "after_secs = 60: {started_after}");
        assert!(run(&some_muck, &|t| t >= 30.0).is_empty(), "a little muck is normal");
    }

    /// Labelled composites written as a sample set: each picture saved, its row the crop the rule
    /// takes (`region`), moved by a few pixels from one picture to the next (`jitter`).
    struct Composites {
        dir: tempfile::TempDir,
        region: [i32; 4],
        jitter: [(i32, i32); 4],
        rows: String,
        count: usize,
    }

    impl Composites {
        fn new(region: [i32; 4], jitter: [(i32, i32); 4]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            Self { dir, region, jitter, rows: String::from("file,label,x1,y1,x2,y2\n"), count: 0 }
        }

        fn add(&mut self, picture: &image::RgbImage, label: &str) {
            let name = format!("{label}-{}.png", self.count);
            picture.save(self.dir.path().join(&name)).unwrap();
            let (dx, dy) = self.jitter[self.count % self.jitter.len()];
            let [x1, y1, x2, y2] = self.region;
            let row = format!("{name},{label},{},{},{},{}\n", x1 + dx, y1 + dy, x2 + dx.min(0), y2 + dy.min(0));
            self.rows.push_str(&row);
            self.count += 1;
        }

        /// The folder (kept while the test runs) and its sample set.
        fn open(self) -> (tempfile::TempDir, SampleSet) {
            std::fs::write(self.dir.path().join("labels.csv"), &self.rows).unwrap();
            let set = SampleSet::open(self.dir.path(), &self.dir.path().join("labels.csv")).unwrap();
            (self.dir, set)
        }
    }

    /// Writes the trained head as `learn` does (ONNX, labels, manifest with `[learned]`).
    fn write_head(dir: &Path, name: &str, backbone: &Model, set: &SampleSet, outcome: &Outcome) -> head::WrittenModel {
        let manifest = backbone.manifest().clone();
        let bytes = std::fs::read(manifest.onnx_path()).unwrap();
        let learned = crate::infer::manifest::LearnedSpec {
            samples: set.folder.display().to_string(),
            labels_file: set.labels_file.display().to_string(),
            newest_sample: "2026-11-30T00:00:00Z".into(),
            trained_at: "2026-11-30T00:00:00Z".into(),
            backbone: manifest.name.clone(),
            backbone_sha256: manifest.sha256.clone(),
            held_out_share: 0.25,
            held_out_accuracy: outcome.evaluation.accuracy,
            counts: outcome.counts.clone(),
            held_out: Default::default(),
        };
        let embedding = manifest.embedding.as_ref().map(|e| e.output.clone()).unwrap();
        head::write_model(dir, name, &manifest, &bytes, &embedding, &outcome.head, &learned).unwrap()
    }

    /// A cover classifier for `truck_exit` learnt on the box. No photos of muck trucks ship, so the
    /// classes are composites on the real truck of dog.jpg, put back into its picture: "uncovered"
    /// with real dirt (a crop of coffee.png's ground, the fixtures' muck) heaped on its load,
    /// "covered" with a tarp drawn over it (a plain sheet, green, blue or grey, with folds). Then the
    /// rule, with the head as its `cover_classifier`, calls a truck with a tarp of a shade and a
    /// heap at a place it was not trained on covered and uncovered.
    #[test]
    fn a_learnt_cover_classifier_tells_covered_from_uncovered_trucks_on_real_composites() {
        use crate::judge::config::{CoverClassifierConfig, TrackingConfig, TruckExitRuleConfig, ZoneRole};
        use crate::judge::fixtures::{at, detector_result, dog_jpg_truck, muck, paste, sample, zone};
        use crate::judge::rules::truck_exit::{CoverClassifier, TruckExitRule};
        use crate::judge::rules::{detections_of, FrameView, SecondStage};
        use crate::judge::tracker::TrackIds;
        use crate::judge::zones::Scene;
        use image::imageops::{resize, FilterType};

        let dog = sample("dog.jpg");
        let truck = dog_jpg_truck();
        // The load sits on the truck's upper half (the crop starts at 452, 74 in dog.jpg).
        let tarp = |(r, g, b): (u8, u8, u8), width: u32| {
            image::RgbImage::from_fn(width, 44, |x, y| {
                let fold = if (x / 14 + y / 9) % 3 == 0 { 0.82 } else { 1.0 };
                image::Rgb([r, g, b].map(|v| (f32::from(v) * fold) as u8))
            })
        };
        let loaded = |load: &image::RgbImage, x: u32, y: u32| paste(&dog, &paste(&truck, load, x, y), 452, 74);
        // The crop the rule takes (the box with a 10 % margin), moved by a few pixels.
        let mut composites = Composites::new([434, 72, 709, 169], [(0, 0), (-6, 4), (6, -4), (3, 6)]);
        for (i, (x, y)) in [(10, 4), (24, 8), (36, 2), (18, 10), (30, 6), (4, 8)].into_iter().enumerate() {
            for (j, size) in [(180, 44), (160, 40), (190, 48)].into_iter().enumerate() {
                let heap = resize(&muck(), size.0, size.1, FilterType::Triangle);
                composites.add(&loaded(&heap, x + j as u32 * 4, y), "uncovered");
                let colour = [(34, 102, 51), (40, 60, 140), (105, 105, 100)][(i + j) % 3];
                composites.add(&loaded(&tarp(colour, size.0 + 10), x, y), "covered");
            }
        }
        let (dir, set) = composites.open();
        let crops = labelled_crops(&set);
        let mut backbone = backbone();
        let examples = embed_crops(&set, &crops, &mut backbone, |_| ()).unwrap();
        let outcome = train_and_check(&examples, 0.25, 1, TrainOptions::default(), None).unwrap();
        assert_eq!(outcome.counts.values().copied().collect::<Vec<_>>(), [18, 18]);
        assert_eq!(outcome.evaluation.accuracy, 1.0, "{:?}", outcome.evaluation);
        let written = write_head(&dir.path().join("model"), "truck_cover", &backbone, &set, &outcome);

        let config = CoverClassifierConfig {
            manifest: written.manifest.clone(),
            uncovered_labels: vec!["uncovered".into()],
            covered_labels: vec!["covered".into()],
            min_score: 0.5,
        };
        let scene = Scene {
            zones: vec![zone("gate-out", ZoneRole::SiteExit, None, [0.55, 0.1, 1.0, 0.4])],
            ..Scene::default()
        };
        // A bluish-grey tarp and a heap further back on the load: neither seen in training.
        let test_heap = resize(&muck(), 170, 42, FilterType::Triangle);
        let trucks = [(loaded(&tarp((70, 90, 120), 185), 14, 6), false), (loaded(&test_heap, 44, 6), true)];
        // The truck where the real detector finds it in dog.jpg: a sheet this big over a truck this
        // small (240 px) hides it from nanodet, and the classifier is what is checked here.
        let results = vec![detector_result(&dog)];
        let found = detections_of(&results, &scene, dog.width(), dog.height(), None);
        for (picture, uncovered) in trucks {
            let mut cover = CoverClassifier {
                stage: SecondStage::load(&written.manifest, BackendKind::Tract).unwrap(),
                config: config.clone(),
            };
            let mut rule = TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default());
            let mut ids = TrackIds::default();
            let mut all = Vec::new();
            for i in 0..6 {
                let view = FrameView {
                    camera: "gate",
                    time: at(i as f64 * 0.5),
                    image: &picture,
                    found: &found,
                    scene: &scene,
                    foreground: None,
                };
                all.extend(rule.judge(&view, &mut ids, Some(&mut cover), &[]));
            }
            assert_eq!(all.len(), 1, "one truck leaving: {all:?}");
            assert_eq!(all[0].details.uncovered, Some(uncovered), "{:?}", all[0].details);
            assert_eq!(all[0].details.classifier.as_ref().map(|m| m.name.as_str()), Some("truck_cover"));
        }
    }

    /// The page's view: the configured heads with `[learned]`, and the pictures labelled since.
    #[test]
    fn configured_heads_are_listed_with_the_labels_made_since_training() {
        let dir = tempfile::tempdir().unwrap();
        let samples = dir.path().join("samples");
        std::fs::create_dir(&samples).unwrap();
        for file in ["a.png", "b.jpg", "labels.csv"] {
            std::fs::write(samples.join(file), b"x").unwrap();
        }
        let shipped = std::fs::read_to_string(repo().join("models/efficientnet_lite0.toml")).unwrap();
        let learned = |newest: &str| {
            format!(
                "{}\n[learned]\nsamples = {:?}\nlabels_file = \"labels.csv\"\nnewest_sample = \"{newest}\"\n\
                 trained_at = \"{newest}\"\nbackbone = \"efficientnet_lite0\"\nbackbone_sha256 = \"{}\"\n\
                 held_out_share = 0.25\nheld_out_accuracy = 0.9\n[learned.counts]\nfull = 9\nnormal = 9\n\
                 [learned.held_out.full]\ncrops = 2\nprecision = 1.0\nrecall = 0.5\n",
                shipped.replace("name = \"efficientnet_lite0\"", "name = \"bin_state\""),
                samples.display(),
                "0".repeat(64)
            )
        };
        std::fs::write(dir.path().join("old.toml"), learned("2020-01-01T00:00:00Z")).unwrap();
        std::fs::write(dir.path().join("future.toml"), learned("2099-01-01T00:00:00Z")).unwrap();
        let mut config = crate::config::Config::embedded_defaults();
        assert!(site_classifiers(&config).is_empty(), "the shipped classifier was not learnt here");
        config.taxonomy.classifier = dir.path().join("old.toml");
        config.rules.overflow.state_classifier = Some(crate::judge::config::StateClassifierConfig {
            manifest: dir.path().join("future.toml"),
            on_labels: vec!["full".into()],
            min_score: 0.5,
        });
        let heads = site_classifiers(&config);
        let listed: Vec<_> = heads.iter().map(|h| (h.role, h.name.as_str(), h.new_since_training)).collect();
        assert_eq!(
            listed,
            [("taxonomy.classifier", "bin_state", Some(2)), ("rules.overflow.state_classifier", "bin_state", Some(0))]
        );
        assert_eq!(heads[0].learned.held_out["full"].recall, 0.5);
    }

    #[test]
    fn too_few_crops_or_one_class_are_refused_before_training() {
        let example = |label: &str| Embedded {
            crop: LabelledCrop { file: "a.png".into(), label: label.into(), bbox: None },
            features: vec![0.0; 4],
            backbone_top: None,
        };
        let one: Vec<Embedded> = (0..20).map(|_| example("kitchen")).collect();
        let err = train_and_check(&one, 0.25, 1, TrainOptions::default(), None).unwrap_err();
        assert!(matches!(err, TrainError::OneClass { .. }), "{err}");
        let mut few = one;
        few.extend((0..3).map(|_| example("hazardous")));
        let err = train_and_check(&few, 0.25, 1, TrainOptions::default(), None).unwrap_err().to_string();
        assert!(err.contains("\"hazardous\" has 3, needs 5 more"), "{err}");
    }

    #[test]
    fn a_box_outside_the_picture_is_refused_naming_it() {
        let picture = image::RgbImage::new(100, 50);
        let crop = LabelledCrop {
            file: "bin.jpg".into(),
            label: "kitchen".into(),
            bbox: Some(BoundingBox { x1: 120.0, y1: 10.0, x2: 180.0, y2: 40.0 }),
        };
        let err = crop_of(&picture, &crop, Path::new("labels.csv")).unwrap_err().to_string();
        assert!(err.contains("labels.csv") && err.contains("bin.jpg") && err.contains("100×50"), "{err}");
        let inside = LabelledCrop { bbox: Some(BoundingBox { x1: 10.2, y1: 5.0, x2: 30.0, y2: 60.0 }), ..crop };
        assert_eq!(crop_of(&picture, &inside, Path::new("labels.csv")).unwrap().dimensions(), (20, 45));
    }
}
