//! Fuzz targets for everything that arrives from outside, as property tests: config files,
//! command payloads, model manifests and pictures. Each input is hostile or broken; the property is
//! always the same: an error that says what was wrong, never a panic, never an accepted command.
//! CI runs each with proptest's default number of cases (bounded time); run them longer with
//! `PROPTEST_CASES=200000 cargo test -p edge-agent --lib fuzz_`.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;

use crate::config::Config;
use crate::control::authority::Authority;
use crate::control::config::CommandsConfig;
use crate::infer::manifest::Manifest;
use crate::source::replay::decode_picture_bytes;

/// Config-file shaped text: known section and key names with values of every type, in any order.
fn config_like() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "",
        "[mqtt]",
        "[web]",
        "[inference]",
        "[[cameras]]",
        "[[models]]",
        "[rules.object]",
        "[rules.wrong_bin]",
        "[scenes.gate]",
        "[[scenes.gate.zones]]",
        "[privacy]",
        "[evidence]",
        "[evidence.clips]",
        "[commands]",
        "[model_update]",
        "[outbox]",
        "[stats]",
        "[tracking]",
        "[site]",
        "[taxonomy]",
        "[tamper]",
        "[tamper.covered]",
        "[tamper.cameras.gate]",
        "[tamper.cameras.gate.frozen]",
    ]);
    let key = prop::sample::select(vec![
        "device_id",
        "state_dir",
        "url",
        "listen",
        "id",
        "source",
        "manifest",
        "min_score",
        "zones",
        "polygon",
        "role",
        "blur_people",
        "pre_roll_secs",
        "masked_width",
        "enabled",
        "platform_public_key",
        "accept_unsigned",
        "max_age_secs",
        "quota_mb",
        "utc_offset",
        "score_threshold",
        "users",
        "action",
        "command",
        "fps",
        "kind",
        "path",
        "after_secs",
        "max_spread",
        "learn_secs",
        "covered",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9:/@._+#-]{0,40}".prop_map(|s| format!("{s:?}")),
        Just("{ kind = \"replay\", path = \"x\", fps = 0.0 }".to_string()),
        Just("[[0.1, 0.1], [2.0, 0.1], [0.5, -1]]".to_string()),
        Just("\"rtsp://u:p@h/x\"".to_string()),
        ".{0,20}",
    ];
    prop::collection::vec((section, prop::collection::vec((key, value), 0..4)), 0..6).prop_map(|sections| {
        sections
            .into_iter()
            .map(|(header, pairs)| {
                let body: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{header}\n{}\n", body.join("\n"))
            })
            .collect()
    })
}

fn authority(dir: &Path) -> Authority {
    let config =
        CommandsConfig { platform_public_key: Some(hex::encode([7u8; 32])), accept_unsigned: false, max_age_secs: 300 };
    Authority::new("box-1", &config, dir).expect("an authority")
}

proptest! {
    #[test]
    fn fuzz_config_text_is_accepted_or_refused_naming_where(text in config_like()) {
        match Config::from_toml_str(&text, Path::new("fuzz.toml")).and_then(|c| c.validate(Path::new("fuzz.toml")).map(|()| c)) {
            Ok(config) => prop_assert!(!config.cameras.is_empty() && !config.models.is_empty()),
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains("fuzz.toml"), "the error does not name the file: {}", message);
                prop_assert!(!message.contains(":p@"), "a URL password in the error: {}", message);
            }
        }
    }

    #[test]
    fn fuzz_arbitrary_bytes_as_config_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Config::from_toml_str(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn fuzz_command_payloads_are_never_accepted_unsigned_or_forged(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        name in prop::sample::select(vec!["set", "reload", "snapshot", "model", "frobnicate"]),
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let refused = authority(dir.path()).open(name, &bytes, chrono::Utc::now());
        prop_assert!(refused.is_err(), "random bytes were accepted as a command");
        let (_, error) = refused.err().expect("refused");
        prop_assert!(!error.message.is_empty());
    }

    #[test]
    fn fuzz_json_commands_and_envelopes_are_refused_with_a_code(
        signed in "[A-Za-z0-9+/=]{0,200}",
        signature in "[A-Za-z0-9+/=]{0,130}",
        extra in prop::option::of(any::<i32>()),
        correlation in prop::option::of(".{0,200}"),
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut envelope = serde_json::json!({ "signed": signed, "signature": signature });
        if let Some(extra) = extra {
            envelope["extra"] = Value::from(extra);
        }
        if let Some(id) = correlation {
            envelope["correlation_id"] = Value::from(id);
        }
        let payload = serde_json::to_vec(&envelope).expect("JSON");
        let refused = authority(dir.path()).open("set", &payload, chrono::Utc::now());
        prop_assert!(refused.is_err(), "a forged envelope was accepted");
    }

    #[test]
    fn fuzz_command_requests_parse_or_name_the_problem(value in arbitrary_json(3)) {
        let payload = serde_json::to_vec(&value).expect("JSON");
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        #[serde(deny_unknown_fields)]
        struct SetLike { correlation_id: String, values: serde_json::Map<String, Value> }
        if let Err((_, error)) = crate::control::commands::parse_request::<SetLike>(&payload) {
            prop_assert!(!error.message.is_empty() && !error.code.is_empty());
        }
    }

    #[test]
    fn fuzz_manifests_load_or_name_the_field(
        name in "[a-z_]{0,12}",
        file in "[a-z./_]{0,20}",
        sha in "[0-9a-f]{0,70}",
        task in prop::sample::select(vec!["detect", "classify", "segment", ""]),
        extra in prop::sample::select(vec!["", "labels = \"x.txt\"\n", "[input]\nwidth = -3\n", "[input]\nwidth = 416\nheight = 0\nlayout = \"nchw\"\n", "score_threshold = 7.5\n", "[output]\nkind = \"mystery\"\n"]),
    ) {
        let text = format!("name = {name:?}\nfile = {file:?}\nsha256 = {sha:?}\ntask = {task:?}\n{extra}");
        if let Err(e) = Manifest::parse(&text, Path::new("/fuzz/model.toml")) {
            prop_assert!(e.to_string().contains("/fuzz/model.toml"), "the error does not name the manifest: {}", e);
        }
    }

    #[test]
    fn fuzz_damaged_pictures_decode_or_are_refused(
        which in prop::sample::select(vec!["dog.jpg", "person.jpg", "coffee.png"]),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples").join(which);
        let mut bytes = std::fs::read(&path).expect("a sample picture");
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        match decode_picture_bytes("fuzz", which, &bytes) {
            Ok(picture) => prop_assert!(picture.width() > 0 && picture.height() > 0),
            Err(e) => prop_assert!(e.to_string().contains("fuzz"), "the error does not name the camera: {}", e),
        }
    }
}

proptest! {
    #[test]
    fn fuzz_tamper_frames_of_any_size_and_content_are_measured_or_skipped(
        width in 0u32..400,
        height in 0u32..300,
        seed in any::<u64>(),
        flat in any::<bool>(),
    ) {
        use crate::judge::tamper::measure::{change, measure, similarity};
        let mut state = seed | 1;
        let picture = image::RgbImage::from_fn(width, height, |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let level = if flat { 90 } else { state as u8 };
            image::Rgb([level, (state >> 8) as u8, (state >> 16) as u8])
        });
        if let Some(stats) = measure(&picture) {
            prop_assert!(stats.brightness.is_finite() && stats.spread.is_finite());
            prop_assert!(stats.sharpness.is_none_or(|s| s.is_finite() && s >= 0.0));
            let same = similarity(&stats.grid, &stats.grid);
            prop_assert!((0.0..=1.0).contains(&same));
            prop_assert_eq!(change(&stats.samples, &stats.samples), Some(0.0));
        }
    }

    #[test]
    fn fuzz_tamper_reference_files_are_used_or_skipped(value in arbitrary_json(3), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        use crate::judge::tamper::reference::load_all;
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("gate.json"), serde_json::to_vec(&value).expect("JSON")).expect("write");
        std::fs::write(dir.path().join("yard.json"), &bytes).expect("write");
        prop_assert!(load_all(dir.path()).is_empty(), "a damaged reference was taken");
    }
}

/// JSON values of every shape, `depth` levels deep.
fn arbitrary_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z_.]{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["correlation_id", "values", "camera", "force", "rules.object.min_score"]),
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}
