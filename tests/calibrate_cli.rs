//! The installer's commands end to end, through the real binary: `calibrate thresholds` runs the real
//! detector over the example site's real pictures and writes the site file and the report;
//! `calibrate ground` fits, refuses bad points and writes the site file; `init` writes configs the
//! agent loads; a config pointing at a site file gets its thresholds, and names it when it is wrong.

use std::path::Path;
use std::process::{Command, Output};

use edge_agent_tests::*;

fn agent(args: &[&str], dir: &Path) -> Output {
    Command::new(agent_binary())
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_binary().display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn succeeded(output: &Output) -> String {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status.code());
    stdout
}

fn failed(output: &Output) -> String {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "expected exit 1\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stderr
}

fn is_jpeg(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(&[0xFF, 0xD8, 0xFF]))
}

/// The class's `threshold` line in the site file's `[thresholds.nanodet]`, as a number.
fn written_threshold(site: &str, label: &str) -> f64 {
    let table = site.split("[thresholds.nanodet]").nth(1).unwrap_or_else(|| panic!("no [thresholds.nanodet]:\n{site}"));
    let line = table.lines().find(|l| l.starts_with(&format!("{label} ="))).unwrap_or_else(|| panic!("no {label}"));
    let value = line.trim_start_matches(&format!("{label} =")).split('#').next().unwrap_or_default().trim();
    value.parse().unwrap_or_else(|_| panic!("{line:?}"))
}

#[test]
fn calibrate_thresholds_writes_the_site_file_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("yard.toml");
    std::fs::write(&site, "# Yard by the north gate, calibrated on the example pictures\nsite = \"yard\"\n").unwrap();
    let report = dir.path().join("report");
    let samples = repo_root().join("calibration/example-site");
    let output = agent(
        &[
            "calibrate",
            "thresholds",
            "--samples",
            &samples.join("samples").display().to_string(),
            "--labels",
            &samples.join("labels.csv").display().to_string(),
            "--target-precision",
            "0.95",
            "--site",
            &site.display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
        dir.path(),
    );
    let stdout = succeeded(&output);
    assert!(stdout.contains("| person | 5 | 0.8966 | 1.000 | 0.200 |"), "{stdout}");
    // Not a terminal: no progress bar on stderr.
    assert!(!text(&output.stderr).contains("pictures"), "{}", text(&output.stderr));

    let written = std::fs::read_to_string(&site).unwrap();
    assert!(written.starts_with("# Yard by the north gate"), "comments kept:\n{written}");
    for (label, threshold) in
        [("bicycle", 0.3002), ("cup", 0.5338), ("dog", 0.4204), ("person", 0.8966), ("truck", 0.3622)]
    {
        assert_eq!(written_threshold(&written, label), threshold, "{label}\n{written}");
    }
    assert!(written.contains("person = 0.8966 # precision 1.00, recall 0.20 of 5 labelled"), "{written}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["pictures"], 8);
    let classes = summary["models"][0]["classes"].as_array().unwrap();
    assert_eq!(summary["models"][0]["model"]["name"], "nanodet");
    let dog = classes.iter().find(|c| c["label"] == "dog").unwrap();
    assert_eq!(dog["counts"], serde_json::json!({"found": 2, "false_finds": 0, "missed": 1}));
    assert_eq!(dog["precision"], 1.0);
    assert!((dog["recall"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    for class in classes {
        let svg = std::fs::read_to_string(report.join(class["curve_svg"].as_str().unwrap())).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{svg}");
    }
    let wrong: Vec<&str> =
        summary["wrong_pictures"].as_array().unwrap().iter().map(|w| w["annotated"].as_str().unwrap()).collect();
    assert_eq!(wrong, ["wrong/person.jpg", "wrong/scream.jpg"]);
    for picture in wrong {
        assert!(is_jpeg(&report.join(picture)), "{picture}");
    }
    let markdown = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(markdown.contains("## Model nanodet") && markdown.contains("wrong/person.jpg"), "{markdown}");
}

#[test]
fn a_missing_labelled_picture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("labels.csv"), "file,label\nyard-07.jpg,truck\n").unwrap();
    let stderr = failed(&agent(
        &[
            "calibrate",
            "thresholds",
            "--samples",
            &dir.path().display().to_string(),
            "--labels",
            &dir.path().join("labels.csv").display().to_string(),
        ],
        dir.path(),
    ));
    assert!(stderr.contains("labels.csv") && stderr.contains("yard-07.jpg"), "{stderr}");
}

#[test]
fn calibrate_ground_fits_known_points_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("yard.toml");
    std::fs::write(&site, "site = \"yard\" # north gate\n").unwrap();
    let site_arg = site.display().to_string();
    // A street seen in perspective: near kerb 8 m away (50 px/m), far kerb 16 m away (25 px/m).
    let points = "100,195=0,8; 700,195=12,8; 550,112=12,16; 250,112=0,16; 400,139.7=6,12";
    let stdout = succeeded(&agent(
        &[
            "calibrate",
            "ground",
            "--points",
            points,
            "--site",
            &site_arg,
            "--camera",
            "gate",
            "--distance",
            "100,195;700,195",
            "--distance",
            "250,112;100,195",
        ],
        dir.path(),
    ));
    assert!(stdout.contains("Distance (100, 195) – (700, 195): 12.00"), "12 m along the near kerb:\n{stdout}");
    assert!(stdout.contains("Distance (250, 112) – (100, 195): 8.00"), "8 m across the street:\n{stdout}");
    assert!(stdout.contains("Reprojection error: rms 0.00"), "{stdout}");
    let written = std::fs::read_to_string(&site).unwrap();
    assert!(written.contains("# north gate") && written.contains("[scenes.gate.ground]"), "{written}");
    assert!(written.contains("points = [\"100,195=0,8\""), "{written}");

    let refused = [
        ("0,0=0,0; 10,10=1,1; 20,20=2,2; 30,30=3,3", "on one line"),
        ("0,0=0,0; 100,0=1,0; 0,100=0,1", "at least 4 point pairs"),
        ("100,195=0,8; 700,195=12,8; 550,112=12,16; 250,112=0,16; 400,139.7=6,15", "pair 5"),
        ("100,195=0,8; 700,195=12,8; 550,x=12,16; 250,112=0,16", "pair 3"),
    ];
    for (bad, expected) in refused {
        let stderr = failed(&agent(&["calibrate", "ground", "--points", bad, "--site", &site_arg], dir.path()));
        assert!(stderr.contains(expected), "{bad}: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(&site).unwrap(), written, "a refused fit leaves the site file alone");
}

#[test]
fn init_writes_configs_the_agent_loads() {
    let dir = tempfile::tempdir().unwrap();
    let dog = repo_root().join("models/samples/dog.jpg").display().to_string();
    for (flag, camera) in [("--station", "bins"), ("--site", "gate")] {
        let path = dir.path().join(format!("{}.toml", &flag[2..]));
        let path_arg = path.display().to_string();
        let stdout = succeeded(&agent(&["init", flag, "--output", &path_arg], dir.path()));
        assert!(stdout.contains(&path_arg), "{stdout}");
        let config = std::fs::read_to_string(&path).unwrap();
        assert!(config.starts_with("# edge-agent configuration") && config.contains(&format!("[scenes.{camera}]")));
        // The real loader reads it (and the models it names run).
        let stdout = succeeded(&agent(&["infer", "--config", &path_arg, &dog], dir.path()));
        assert!(stdout.contains("truck"), "{stdout}");
        let stderr = failed(&agent(&["init", flag, "--output", &path_arg], dir.path()));
        assert!(stderr.contains(&path_arg) && stderr.contains("--force"), "{stderr}");
    }
}

#[test]
fn a_config_takes_the_site_files_thresholds_and_names_it_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let dog = repo_root().join("models/samples/dog.jpg").display().to_string();
    let example = repo_root().join("calibration/example-site.toml");
    let config = dir.path().join("agent.toml");
    // The example site raises dog to 0.4204 and truck to 0.3622; dog.jpg's dog scores 0.420 and
    // its truck 0.362, both just above, and the bicycle keeps the model's 0.3.
    std::fs::write(&config, format!("[site]\ncalibration = {:?}\n", example.display().to_string())).unwrap();
    let stdout = succeeded(&agent(&["infer", "--config", &config.display().to_string(), &dog], dir.path()));
    for label in ["truck", "dog", "bicycle"] {
        assert!(stdout.contains(label), "{label}:\n{stdout}");
    }
    let stricter = dir.path().join("stricter.toml");
    std::fs::write(&stricter, "[thresholds.nanodet]\ntruck = 0.5\n").unwrap();
    std::fs::write(&config, "[site]\ncalibration = \"stricter.toml\"\n").unwrap();
    let stdout = succeeded(&agent(&["infer", "--config", &config.display().to_string(), &dog], dir.path()));
    assert!(!stdout.contains("truck") && stdout.contains("bicycle"), "{stdout}");

    // The example site's zones are for camera "demo"; a config without it is refused naming both.
    std::fs::write(
        &config,
        format!(
            "[site]\ncalibration = {:?}\n[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"replay\", path = \"frames\" }}\n",
            example.display().to_string()
        ),
    )
    .unwrap();
    let stderr = failed(&agent(&["infer", "--config", &config.display().to_string(), &dog], dir.path()));
    assert!(
        stderr.contains("example-site.toml") && stderr.contains("scenes.demo") && stderr.contains("gate"),
        "{stderr}"
    );
}
