//! The inference stage end to end through `edge-agent infer`: both backends against the reference
//! outputs of the onnxruntime Python package (tests/fixtures/onnxruntime_reference.json, made by
//! scripts/reference-outputs.sh; the opt-in int8 models of models/quantize.sh against their own,
//! onnxruntime_int8_reference.json), and the clear errors for a missing or too old ONNX Runtime, the
//! fallback to tract, unreadable pictures and models that are not what their manifest says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edge_agent_tests::*;
use serde_json::Value;

/// A reference fixture and the manifests (in models/) whose outputs it holds.
struct Fixture {
    path: &'static str,
    manifests: [&'static str; 2],
}

const REFERENCE: Fixture = Fixture {
    path: "tests/fixtures/onnxruntime_reference.json",
    manifests: ["nanodet.toml", "efficientnet_lite0.toml"],
};
/// The int8 models are compared with int8 outputs of the same Python ONNX Runtime, not with fp32
/// (models/quantize.sh reports how far int8 is from fp32).
const INT8_REFERENCE: Fixture = Fixture {
    path: "tests/fixtures/onnxruntime_int8_reference.json",
    manifests: ["nanodet.int8.toml", "efficientnet_lite0.int8.toml"],
};
/// How far a backend's findings may be from the reference.
struct Tolerance {
    /// Classifier probabilities and detection scores, either way.
    score: f64,
    /// Box overlap with the reference box of the same label.
    min_iou: f64,
    /// A detection scoring within this of the manifest's `score_threshold` may be missing or extra.
    near_threshold: f64,
}

/// The same model in another engine (or ONNX Runtime from Rust instead of Python): float rounding only.
const SAME_MODEL: Tolerance = Tolerance { score: 1e-3, min_iou: 0.98, near_threshold: 0.0 };
/// An int8 model in tract against ONNX Runtime (or in ONNX Runtime on a CPU with other int8
/// instructions than the fixture's): the two requantize with different rounding, so a
/// quantized value can be one step apart, which moves a sigmoid score or a softmax probability by up
/// to about 0.02 (measured on the parity pictures: 0.018 and 0.021) and can flip a detection that
/// sits on the threshold.
const INT8_ACROSS_ENGINES: Tolerance = Tolerance { score: 0.03, min_iou: 0.95, near_threshold: 0.03 };

/// The ONNX Runtime library the ort backend is tested with (scripts/test.sh fetches it).
fn ort_library() -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        Some(path) if path.is_file() => Some(path),
        _ => {
            missing_real_part(
                "ONNX Runtime (ORT_DYLIB_PATH)",
                "run `export ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)` (scripts/test.sh does)",
            );
            None
        }
    }
}

/// `edge-agent infer ARGS...` with ORT_DYLIB_PATH set to `library` (or unset).
fn infer(args: &[&str], library: Option<&Path>) -> Output {
    let mut command = Command::new(agent_binary());
    command.arg("infer").args(args).current_dir(repo_root()).env_remove("ORT_DYLIB_PATH");
    if let Some(library) = library {
        command.env("ORT_DYLIB_PATH", library);
    }
    command.output().expect("the edge-agent binary runs")
}

/// A config with both shipped models on every whole picture (the defaults run only the detector;
/// the classifier runs on crops in bin zones), written into `dir`; its path.
fn both_models_config(dir: &Path, extra: &str) -> String {
    models_config(dir, extra, REFERENCE.manifests)
}

/// A config with the two `manifests` (in models/) on every whole picture, written into `dir`.
fn models_config(dir: &Path, extra: &str, manifests: [&str; 2]) -> String {
    let path = dir.join("both-models.toml");
    let models = repo_root().join("models");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[models]]\nmanifest = \"{}\"\n\n[[models]]\nmanifest = \"{}\"\n",
            models.join(manifests[0]).display(),
            models.join(manifests[1]).display()
        ),
    )
    .expect("write the config");
    path.display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn reference(fixture: &Fixture) -> Value {
    let text = std::fs::read_to_string(repo_root().join(fixture.path)).expect("the committed reference fixture");
    serde_json::from_str(&text).expect("the reference fixture is JSON")
}

/// The pictures the reference covers, as paths relative to the repository.
fn reference_images(reference: &Value) -> Vec<String> {
    let mut images: Vec<String> =
        reference["models"]["nanodet"]["images"].as_object().expect("nanodet images").keys().cloned().collect();
    images.sort();
    images
}

fn bbox(value: &Value) -> [f64; 4] {
    match value {
        Value::Array(v) => std::array::from_fn(|i| v[i].as_f64().unwrap()),
        _ => ["x1", "y1", "x2", "y2"].map(|k| value[k].as_f64().unwrap()),
    }
}

/// Runs every model on every reference picture with `backend` and checks the results against the
/// reference within `tolerance`: same top-1 class (or one tied with it) and probabilities; same boxes,
/// labels and scores.
fn matches_the_reference(backend: &str, library: Option<&Path>, fixture: &Fixture, tolerance: &Tolerance) {
    let reference = reference(fixture);
    let images = reference_images(&reference);
    let dir = tempfile::tempdir().unwrap();
    let config = models_config(dir.path(), "", fixture.manifests);
    let mut args = vec!["-c", &config, "--json", "--backend", backend];
    args.extend(images.iter().map(String::as_str));
    let run = infer(&args, library);
    assert!(run.status.success(), "infer failed: {}", text(&run.stderr));
    let lines: Vec<Value> = text(&run.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), images.len(), "one line per image:\n{}", text(&run.stdout));
    let mut checked = 0;
    for line in &lines {
        let image = line["image"].as_str().unwrap();
        for info in line["models"].as_array().unwrap() {
            assert_eq!(info["backend"], backend, "the backend asked for is the one used: {info}");
            assert_eq!(info["execution_provider"], "cpu");
        }
        for result in line["results"].as_array().unwrap() {
            let model = result["model"]["name"].as_str().unwrap();
            let expected = &reference["models"][model]["images"][image];
            assert!(expected.is_object(), "no reference for {model} on {image}");
            assert_eq!(result["model"]["sha256"], reference["models"][model]["sha256"], "fixture is for this model");
            let findings = &result["findings"];
            let context = format!("{backend} {model} on {image}");
            match findings["task"].as_str().unwrap() {
                "classify" => check_classes(&context, &findings["classes"], &expected["classes"], tolerance),
                _ => {
                    let threshold = score_threshold(fixture, model);
                    let (found, expected) = (&findings["detections"], &expected["detections"]);
                    check_detections(&context, found, expected, threshold, tolerance)
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * images.len(), "both models on every picture");
}

/// The `score_threshold` in the manifest of `model` among the fixture's manifests.
fn score_threshold(fixture: &Fixture, model: &str) -> f64 {
    let texts = fixture.manifests.map(|m| std::fs::read_to_string(repo_root().join("models").join(m)).unwrap());
    let text = texts.iter().find(|t| t.contains(&format!("name = \"{model}\""))).expect("the model's manifest");
    let line = text.lines().find(|l| l.starts_with("score_threshold =")).expect("a score_threshold line");
    line.split('=').nth(1).unwrap().trim().parse().expect("a number")
}

fn check_classes(context: &str, found: &Value, expected: &Value, tolerance: &Tolerance) {
    let (found, expected) = (found.as_array().unwrap(), expected.as_array().unwrap());
    // The top-1 class, or one the reference ties with it (int8 logits can be exactly equal).
    let tied = |class: &Value| {
        expected.iter().any(|e| {
            e["class_id"] == class["class_id"]
                && expected[0]["score"].as_f64().unwrap() - e["score"].as_f64().unwrap() <= tolerance.score
        })
    };
    assert!(
        found[0]["label"] == expected[0]["label"] || tied(&found[0]),
        "{context}: top-1 class {} vs reference {}",
        found[0]["label"],
        expected[0]["label"]
    );
    for want in expected {
        let w = want["score"].as_f64().unwrap();
        let Some(got) = found.iter().find(|c| c["class_id"] == want["class_id"]) else {
            // Only a class at the top k's cut may fall out of it.
            let last = found.last().map_or(1.0, |c| c["score"].as_f64().unwrap());
            assert!(w <= last + tolerance.score, "{context}: {} missing from the top classes {found:?}", want["label"]);
            continue;
        };
        let g = got["score"].as_f64().unwrap();
        assert!((g - w).abs() <= tolerance.score, "{context}: {} probability {g} vs reference {w}", want["label"]);
    }
}

fn check_detections(context: &str, found: &Value, expected: &Value, threshold: f64, tolerance: &Tolerance) {
    let (found, expected) = (found.as_array().unwrap(), expected.as_array().unwrap());
    let near_threshold = |d: &Value| d["score"].as_f64().unwrap() < threshold + tolerance.near_threshold;
    if tolerance.near_threshold == 0.0 {
        assert_eq!(found.len(), expected.len(), "{context}: {found:?}\nreference {expected:?}");
    }
    let mut matched = vec![false; found.len()];
    for want in expected {
        let want_box = bbox(&want["box"]);
        let best = found
            .iter()
            .enumerate()
            .filter(|(i, d)| !matched[*i] && d["label"] == want["label"])
            .max_by(|(_, a), (_, b)| iou(bbox(&a["bbox"]), want_box).total_cmp(&iou(bbox(&b["bbox"]), want_box)));
        let Some((i, got)) = best.filter(|(_, d)| iou(bbox(&d["bbox"]), want_box) >= tolerance.min_iou) else {
            assert!(near_threshold(want), "{context}: no {} found; reference {want}\nfound {found:?}", want["label"]);
            continue;
        };
        matched[i] = true;
        let (g, w) = (got["score"].as_f64().unwrap(), want["score"].as_f64().unwrap());
        assert!((g - w).abs() <= tolerance.score, "{context}: {} score {g} vs reference {w}", want["label"]);
    }
    for (got, _) in found.iter().zip(&matched).filter(|(_, m)| !**m) {
        assert!(near_threshold(got), "{context}: {got} is not in the reference {expected:?}");
    }
}

#[test]
fn tract_matches_onnxruntime_python_on_the_sample_pictures() {
    matches_the_reference("tract", None, &REFERENCE, &SAME_MODEL);
}

#[test]
fn ort_matches_onnxruntime_python_on_the_sample_pictures() {
    let Some(library) = ort_library() else { return };
    matches_the_reference("ort", Some(&library), &REFERENCE, &SAME_MODEL);
}

#[test]
fn tract_runs_the_int8_models_as_onnxruntime_python_does_within_a_quantization_step() {
    matches_the_reference("tract", None, &INT8_REFERENCE, &INT8_ACROSS_ENGINES);
}

#[test]
fn ort_runs_the_int8_models_as_onnxruntime_python_does() {
    let Some(library) = ort_library() else { return };
    // ONNX Runtime's int8 kernels differ between instruction sets (AVX2 saturates where VNNI does
    // not): exact agreement is expected only on a CPU with the fixture's int8 instructions.
    let fixture_flags = reference(&INT8_REFERENCE)["cpu_int8_flags"].clone();
    let ours = Value::from(cpu_int8_flags());
    let tolerance = if fixture_flags == ours {
        &SAME_MODEL
    } else {
        eprintln!("int8 instructions {ours} differ from the fixture's {fixture_flags}: allowing one quantization step");
        &INT8_ACROSS_ENGINES
    };
    matches_the_reference("ort", Some(&library), &INT8_REFERENCE, tolerance);
}

/// This CPU's instruction sets that change int8 kernels, as scripts/reference_outputs.py lists them.
fn cpu_int8_flags() -> Vec<String> {
    const INT8_FLAGS: [&str; 7] = ["amx_int8", "asimddp", "avx2", "avx512_vnni", "avx512bw", "avx_vnni", "i8mm"];
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features")).unwrap_or("");
    let have: Vec<&str> = line.split(':').nth(1).unwrap_or("").split_whitespace().collect();
    INT8_FLAGS.iter().filter(|f| have.contains(f)).map(|f| f.to_string()).collect()
}

#[test]
fn a_missing_ort_library_is_named_with_the_version_needed() {
    let run =
        infer(&["--backend", "ort", "models/samples/coffee.png"], Some(Path::new("/nonexistent/libonnxruntime.so")));
    let stderr = text(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("/nonexistent/libonnxruntime.so") && stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("ORT_DYLIB_PATH") && stderr.contains("needs ONNX Runtime 1.31 or newer"), "{stderr}");
}

#[test]
fn a_too_old_ort_library_is_refused_naming_found_and_needed_versions() {
    // scripts/test.sh fetches ONNX Runtime 1.20.1 from PyPI for this test.
    let old =
        match std::env::var_os("EDGE_AGENT_TEST_OLD_ORT").map(PathBuf::from) {
            Some(path) if path.is_file() => path,
            _ => return missing_real_part(
                "an old ONNX Runtime (EDGE_AGENT_TEST_OLD_ORT)",
                "run `export EDGE_AGENT_TEST_OLD_ORT=$(scripts/fetch-onnxruntime.sh 1.20.1)` (scripts/test.sh does)",
            ),
        };
    let run = infer(&["--backend", "ort", "models/samples/coffee.png"], Some(&old));
    let stderr = text(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains(&old.display().to_string()), "{stderr}");
    assert!(stderr.contains("is version 1.20.1, too old") && stderr.contains("1.31 or newer"), "{stderr}");
}

#[test]
fn without_ort_library_the_configured_fallback_runs_tract_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[inference]\nbackend = \"ort\"\nfallback = \"tract\"\nort_library = \"/nonexistent/libonnxruntime.so.1.32.0\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let run = infer(&["--config", &config, "--json", "--model", "nanodet", "models/samples/dog.jpg"], None);
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("/nonexistent/libonnxruntime.so.1.32.0") && stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("using backend \"tract\" instead"), "{stderr}");
    let line: Value = serde_json::from_str(text(&run.stdout).trim()).unwrap();
    assert_eq!(line["models"][0]["backend"], "tract");
    let detections = line["results"][0]["findings"]["detections"].as_array().unwrap();
    assert!(detections.iter().any(|d| d["label"] == "truck"), "{detections:?}");
}

#[test]
fn ort_reports_the_cpu_provider_when_the_library_has_no_cuda() {
    let Some(library) = ort_library() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = both_models_config(
        dir.path(),
        "[inference]\nbackend = \"ort\"\nexecution_providers = [\"cuda\", \"tensorrt\", \"cpu\"]\n",
    );
    let run =
        infer(&["-c", &config, "--json", "--model", "efficientnet_lite0", "models/samples/coffee.png"], Some(&library));
    assert!(run.status.success(), "{}", text(&run.stderr));
    let line: Value = serde_json::from_str(text(&run.stdout).trim()).unwrap();
    assert_eq!(line["models"][0]["backend"], "ort");
    assert_eq!(line["models"][0]["execution_provider"], "cpu");

    // Only CUDA, which this library does not have: refused, naming what it offers.
    std::fs::write(&config, "[inference]\nbackend = \"ort\"\nexecution_providers = [\"cuda\"]\n").unwrap();
    let run = infer(&["-c", &config, "models/samples/coffee.png"], Some(&library));
    let stderr = text(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("[\"cuda\"]") && stderr.contains("offers [\"cpu\"]") && stderr.contains("1.32.0"),
        "{stderr}"
    );
}

#[test]
fn truncated_and_corrupt_pictures_are_named_and_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let dog = std::fs::read(repo_root().join("models/samples/dog.jpg")).unwrap();
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &dog[..300]).unwrap();
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not the rest of a PNG").unwrap();
    let (truncated, corrupt) = (truncated.display().to_string(), corrupt.display().to_string());
    let library = ort_library();
    for backend in backends(&library) {
        let args = ["--backend", backend, "--model", "nanodet", &truncated, "models/samples/coffee.png", &corrupt];
        let run = infer(&args, library.as_deref());
        let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
        assert!(!run.status.success(), "{backend}: a bad picture makes the command fail");
        assert!(stderr.contains("truncated.jpg") && stderr.contains("corrupt.png"), "{backend}: {stderr}");
        assert!(stderr.contains("2 of 3 images failed"), "{backend}: {stderr}");
        assert!(stdout.contains("coffee.png") && stdout.contains("cup"), "{backend}: the good picture ran: {stdout}");
    }
}

/// tract always; ort when its library is here.
fn backends(ort_library: &Option<PathBuf>) -> Vec<&'static str> {
    if ort_library.is_some() {
        vec!["tract", "ort"]
    } else {
        vec!["tract"]
    }
}

/// A config whose only model is `manifest`, written next to it.
fn config_for(manifest: &Path) -> String {
    let config = manifest.with_extension("config.toml");
    std::fs::write(&config, format!("[[models]]\nmanifest = \"{}\"\n", manifest.display())).unwrap();
    config.display().to_string()
}

/// The shipped NanoDet manifest with `edit` applied, pointing at `onnx`, in `dir`.
fn edited_nanodet_manifest(dir: &Path, onnx: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let original = std::fs::read_to_string(repo_root().join("models/nanodet.toml")).unwrap();
    let labels = repo_root().join("models/coco_labels.txt");
    let text = original
        .replace("file = \"nanodet.onnx\"", &format!("file = \"{}\"", onnx.display()))
        .replace("labels = \"coco_labels.txt\"", &format!("labels = \"{}\"", labels.display()));
    let path = dir.join("nanodet.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn a_model_file_that_is_not_onnx_is_refused_by_both_backends_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("detector.onnx");
    let bytes = b"GIF89a: a picture saved under the model's name".to_vec();
    std::fs::write(&fake, &bytes).unwrap();
    let sha = sha256_hex(&bytes);
    let manifest = edited_nanodet_manifest(dir.path(), &fake, |t| {
        t.replace("2947bae13602996b196ce1d92f3ea337ad028a4b944d6ce30af7b5ea9e454b16", &sha)
    });
    let config = config_for(&manifest);
    let library = ort_library();
    for backend in backends(&library) {
        let run = infer(&["-c", &config, "--backend", backend, "models/samples/coffee.png"], library.as_deref());
        let stderr = text(&run.stderr);
        assert!(!run.status.success());
        assert!(
            stderr.contains("detector.onnx") && stderr.contains("is not a readable ONNX model"),
            "{backend}: {stderr}"
        );
    }
}

#[test]
fn a_model_whose_input_shape_differs_from_its_manifest_is_refused_by_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = repo_root().join("models/nanodet.onnx");
    let manifest = edited_nanodet_manifest(dir.path(), &onnx, |t| t.replace("[1, 3, 416, 416]", "[1, 3, 320, 320]"));
    let config = config_for(&manifest);
    let library = ort_library();
    for backend in backends(&library) {
        let run = infer(&["-c", &config, "--backend", backend, "models/samples/coffee.png"], library.as_deref());
        let stderr = text(&run.stderr);
        assert!(!run.status.success());
        assert!(
            stderr.contains("nanodet.onnx") && stderr.contains("416") && stderr.contains("[1, 3, 320, 320]"),
            "{backend}: {stderr}"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum runs");
    text(&output.stdout).split_whitespace().next().expect("a hash").to_string()
}
