//! `edge-agent learn` end to end, through the real binary: it trains a head on labelled crops of
//! real photos, prints and writes held-out figures better than the ImageNet mapping's, writes a
//! model whose manifest matches its file, and refuses one class and too few crops per class.

use std::process::{Command, Output};

use edge_agent_tests::*;
use sha2::{Digest, Sha256};

fn agent(args: &[&str]) -> Output {
    Command::new(agent_binary())
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_binary().display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// The number after `prefix` in `text`.
fn figure_after(text: &str, prefix: &str) -> f64 {
    let rest = text.split(prefix).nth(1).unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"));
    let number: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    number.parse().unwrap_or_else(|_| panic!("{prefix:?} {rest:?}"))
}

#[test]
fn learn_writes_a_head_that_beats_the_imagenet_mapping_with_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let site = stand_in_site(dir.path(), |_| true);
    let out = dir.path().join("out");
    let output = agent(&["learn", "--site", site.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status.code());

    let head = figure_after(&stdout, "Held-out accuracy:");
    let mapping = figure_after(&stdout, "on the same held-out crops: accuracy");
    assert!(head >= 0.9 && head > mapping + 0.3, "head {head}, mapping {mapping}\n{stdout}");
    assert!(stdout.contains("| kitchen | 24 | 6 |") && stdout.contains("| residual | 12 | 3 |"), "{stdout}");
    assert!(stdout.contains("Trained on 45 labelled crops"), "{stdout}");
    assert!(
        stdout.contains("15 of the 15 held-out crops are cut from pictures that also gave training crops"),
        "{stdout}"
    );

    for file in ["summary.md", "summary.json", "scores.svg", "confusion.svg", "confusion-imagenet-mapping.svg"] {
        let written = std::fs::read_to_string(out.join("report").join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!written.is_empty(), "{file}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["counts"]["recyclable"], 24);
    assert!((summary["evaluation"]["accuracy"].as_f64().unwrap() - head).abs() < 0.001, "{summary}");

    let manifest = std::fs::read_to_string(out.join("site_garbage.toml")).unwrap();
    let onnx = std::fs::read(out.join("site_garbage.onnx")).unwrap();
    assert!(manifest.contains(&format!("sha256 = \"{}\"", hex::encode(Sha256::digest(&onnx)))), "{manifest}");
    assert!(manifest.contains("[learned]") && manifest.contains("backbone = \"efficientnet_lite0\""), "{manifest}");
    assert!(manifest.contains("[learned.counts]") && manifest.contains("kitchen = 24"), "{manifest}");
    assert_eq!(
        std::fs::read_to_string(out.join("site_garbage.labels.txt")).unwrap(),
        "kitchen\nrecyclable\nresidual\n"
    );

    // The agent loads it like any other model: `infer` with a config naming it, on the cup.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("[[models]]\nmanifest = {:?}\n", out.join("site_garbage.toml").display().to_string()),
    )
    .unwrap();
    let cup = repo_root().join("models/samples/coffee.png").display().to_string();
    let mut backends = vec!["tract"];
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        backends.push("ort");
    }
    for backend in backends {
        let output = agent(&["infer", "--config", config.to_str().unwrap(), "--backend", backend, "--json", &cup]);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{backend}: {stdout}\n{}", text(&output.stderr));
        let top = stdout.find("\"label\"").map(|i| &stdout[i..]).unwrap_or_default();
        assert!(stdout.contains("site_garbage") && top.starts_with("\"label\":\"residual\""), "{backend}: {stdout}");
    }
}

#[test]
fn learn_refuses_one_class_and_too_few_crops_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let site = stand_in_site(dir.path(), |f| f == "coffee.png");
    let out = dir.path().join("out");
    let output = agent(&["learn", "--site", site.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("one class") && stderr.contains("\"residual\""), "{stderr}");
    assert!(!out.exists(), "nothing written");

    // Four rows of metal next to the cup's twelve: four more needed.
    let labels = dir.path().join("labels.csv");
    let mut rows = std::fs::read_to_string(&labels).unwrap();
    rows.push_str(&"coffee.png,recyclable,0,0,100,100\n".repeat(4));
    std::fs::write(&labels, rows).unwrap();
    let output = agent(&["learn", "--site", site.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"recyclable\" has 4, needs 4 more") && stderr.contains("labels.csv"), "{stderr}");
    assert!(!out.exists(), "nothing written");
}
