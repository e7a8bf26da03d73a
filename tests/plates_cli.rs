//! `edge-agent plates read` and `plates eval` end to end, through the real binary, on real pictures
//! of the licence-plate set (../shared/lpr): JSON per picture with each plate's text, colour, rows,
//! box and corners; an undecodable picture named on stderr and skipped (exit 1); a missing models
//! folder named; the evaluation's tables on a sample of the set (every 25th picture: a debug build
//! reads a picture in about a second).

use std::path::Path;
use std::process::{Command, Output};

use edge_agent_tests::*;

fn plates(args: &[&str], extra: &[&Path]) -> Output {
    Command::new(agent_binary())
        .arg("plates")
        .args(args)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_binary().display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn read_prints_one_json_line_per_picture_and_skips_an_undecodable_one() {
    let Some(lpr) = lpr_dir() else { return };
    let models = lpr.join("models");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8 not really a JPEG").unwrap();
    let truck = lpr.join("images/scene_hlprbad2_003.png");
    let double_row = lpr.join("images/scene_hlpr_02.jpg");
    let coffee = repo_root().join("models/samples/coffee.png");
    let out = plates(
        &["read", "--json", "--backend", "tract", "--models", models.to_str().unwrap()],
        &[&truck, &broken, &double_row, &coffee],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "one picture failed: {stderr}");
    assert!(stderr.contains("broken.jpg") && stderr.contains("1 of 4 pictures"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["image"], truck.to_str().unwrap());
    let plate = lines[0]["plates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["text"] == "沪B14292")
        .unwrap_or_else(|| panic!("no 沪B14292 in {}", lines[0]));
    assert_eq!(
        (plate["colour"].as_str(), plate["rows"].as_u64(), plate["valid"].as_bool()),
        (Some("yellow"), Some(1), Some(true))
    );
    assert!(plate["score"].as_f64().unwrap() > 0.5, "{plate}");
    let b = &plate["box"];
    let labelled = [138.0, 335.0, 339.0, 421.0];
    let found = ["x1", "y1", "x2", "y2"].map(|k| b[k].as_f64().unwrap());
    assert!(iou(found, labelled) > 0.5, "{b} against the labelled box {labelled:?}");
    let corners = plate["corners"].as_array().unwrap();
    assert_eq!(corners.len(), 4);
    // Corners go round the plate: top left, top right, bottom right, bottom left.
    let xy = |i: usize| (corners[i][0].as_f64().unwrap(), corners[i][1].as_f64().unwrap());
    assert!(xy(0).0 < xy(1).0 && xy(1).1 < xy(2).1 && xy(3).0 < xy(2).0, "{corners:?}");
    let double = lines[1]["plates"].as_array().unwrap().iter().find(|p| p["text"] == "蒙A70531");
    assert_eq!(double.map(|p| p["rows"].as_u64()), Some(Some(2)), "{}", lines[1]);
    assert_eq!(lines[2]["plates"], serde_json::json!([]), "no plate on a cup of coffee");
}

#[test]
fn read_crops_and_plain_text() {
    let Some(lpr) = lpr_dir() else { return };
    let models = lpr.join("models");
    let crop = lpr.join("images/crop_hlprbad2_003.png");
    let out = plates(&["read", "--crops", "--backend", "tract", "--models", models.to_str().unwrap()], &[&crop]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.starts_with(&format!("{}: 沪B14292 yellow 1-row, score", crop.display())), "{stdout}");
}

#[test]
fn a_missing_models_folder_is_named_with_the_files_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-models-here");
    let picture = repo_root().join("models/samples/coffee.png");
    let out = plates(&["read", "--models", nowhere.to_str().unwrap()], &[&picture]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("no-models-here/y5fu_320x_sim.onnx") && stderr.contains("ch_PP-OCRv4_rec_infer.onnx"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn eval_scores_a_sample_of_the_set_by_kind_colour_and_rows() {
    let Some(lpr) = lpr_dir() else { return };
    let (labels, images, models) = (lpr.join("labels.csv"), lpr.join("images"), lpr.join("models"));
    let args = [
        "eval",
        "--labels",
        labels.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--models",
        models.to_str().unwrap(),
        "--backend",
        "tract",
        "--every",
        "25",
    ];
    let out = plates(&[&args[..], &["--json"]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["backend"].as_str(), json["detector"].as_u64()), (Some("tract"), Some(320)));
    let report = &json["report"];
    let outcomes = report["outcomes"].as_array().unwrap();
    // Every 25th of 507 pictures, scenes and crops both.
    assert!((18..=30).contains(&outcomes.len()), "{} plates", outcomes.len());
    for kind in ["scenes", "crops"] {
        let all = &report["tallies"][kind]["all"];
        let (exact, plates) = (all["exact"].as_u64().unwrap(), all["plates"].as_u64().unwrap());
        assert!(plates > 0 && exact * 10 >= plates * 8, "{kind}: {exact} of {plates} right: {all}");
        assert!(report["timing"][kind]["ms_per_picture"].as_f64().unwrap() > 0.0);
    }
    for outcome in outcomes {
        let right = outcome["read"].as_array().unwrap().iter().any(|t| *t == outcome["label"]);
        assert_eq!(outcome["exact"].as_bool(), Some(right), "{outcome}");
    }
    let table = plates(&args, &[]);
    let stdout = text(&table.stdout);
    assert!(table.status.success(), "{}", text(&table.stderr));
    for needle in ["scenes\n", "crops\n", "  all ", "colour=blue", "rows=1", "ms per plate read"] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
}
