//! The city's garbage categories and how model labels map onto them: mapping files per model
//! (`models/*.taxonomy.toml`), plus the rule that a label which already is a category name (a city
//! model trained on the categories) maps to itself. Anything else is `unknown`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::judge::config::{CategoryConfig, TaxonomyConfig, UNKNOWN_CATEGORY};

#[derive(Debug, thiserror::Error)]
pub enum TaxonomyError {
    #[error("cannot read taxonomy mapping {path} (config `taxonomy.mappings`): {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("taxonomy mapping {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What a mapping file holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    /// The model whose labels are mapped (its manifest `name`).
    model: String,
    /// Category name → the model's labels in it.
    categories: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Taxonomy {
    categories: Vec<CategoryConfig>,
    /// Model name → label → category name.
    mappings: HashMap<String, HashMap<String, String>>,
}

impl Taxonomy {
    pub fn load(config: &TaxonomyConfig) -> Result<Self, TaxonomyError> {
        let mut taxonomy = Self { categories: config.categories.clone(), mappings: HashMap::new() };
        for path in &config.mappings {
            let text =
                std::fs::read_to_string(path).map_err(|source| TaxonomyError::Read { path: path.clone(), source })?;
            taxonomy.add_mapping(&text, path)?;
        }
        Ok(taxonomy)
    }

    /// Categories only, no mapping files: labels that are category names still map to themselves.
    pub fn without_mappings(categories: Vec<CategoryConfig>) -> Self {
        Self { categories, mappings: HashMap::new() }
    }

    pub fn add_mapping(&mut self, text: &str, path: &Path) -> Result<(), TaxonomyError> {
        let invalid = |message: String| TaxonomyError::Invalid { path: path.to_owned(), message };
        let file: MappingFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let labels = self.mappings.entry(file.model.clone()).or_default();
        for (category, model_labels) in file.categories {
            if !self.categories.iter().any(|c| c.name == category) {
                let known: Vec<&str> = self.categories.iter().map(|c| c.name.as_str()).collect();
                return Err(invalid(format!(
                    "`categories.{category}` is not a category of `taxonomy.categories`; expected one of: {}",
                    known.join(", ")
                )));
            }
            for label in model_labels {
                if let Some(previous) = labels.insert(label.clone(), category.clone()) {
                    if previous != category {
                        return Err(invalid(format!(
                            "label {label:?} of model {:?} is in both `{previous}` and `{category}`",
                            file.model
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The category of a label from `model`: the label itself when it is a category name, else the
    /// model's mapping, else `unknown`.
    pub fn category_of(&self, model: &str, label: &str) -> &str {
        if let Some(category) = self.categories.iter().find(|c| c.name == label) {
            return &category.name;
        }
        self.mappings.get(model).and_then(|labels| labels.get(label)).map(String::as_str).unwrap_or(UNKNOWN_CATEGORY)
    }

    /// Display names (Chinese and English) of a category; `unknown` has its own.
    pub fn display(&self, category: &str) -> CategoryConfig {
        self.categories.iter().find(|c| c.name == category).cloned().unwrap_or_else(|| CategoryConfig {
            name: UNKNOWN_CATEGORY.into(),
            zh: "未知".into(),
            en: "Unknown".into(),
        })
    }

    pub fn categories(&self) -> &[CategoryConfig] {
        &self.categories
    }

    /// Labels mapped for a model, for checks against its labels file.
    pub fn mapped_labels(&self, model: &str) -> Vec<&str> {
        self.mappings.get(model).map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::config::default_categories;

    fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn shipped() -> Taxonomy {
        let config = TaxonomyConfig {
            mappings: vec![
                models_dir().join("efficientnet_lite0.taxonomy.toml"),
                models_dir().join("nanodet.taxonomy.toml"),
            ],
            ..TaxonomyConfig::default()
        };
        Taxonomy::load(&config).unwrap()
    }

    #[test]
    fn shipped_mappings_place_common_garbage() {
        let taxonomy = shipped();
        assert_eq!(taxonomy.category_of("efficientnet_lite0", "water bottle"), "recyclable");
        assert_eq!(taxonomy.category_of("efficientnet_lite0", "syringe"), "hazardous");
        assert_eq!(taxonomy.category_of("efficientnet_lite0", "banana"), "kitchen");
        assert_eq!(taxonomy.category_of("efficientnet_lite0", "espresso"), "residual");
        assert_eq!(taxonomy.category_of("efficientnet_lite0", "tabby"), "unknown");
        assert_eq!(taxonomy.category_of("nanodet", "bottle"), "recyclable");
        // The same label means nothing for a model without a mapping.
        assert_eq!(taxonomy.category_of("other_model", "bottle"), "unknown");
    }

    /// Every mapped label must be a real label of its model, or the mapping silently does nothing.
    #[test]
    fn every_mapped_label_exists_in_the_models_labels_file() {
        let taxonomy = shipped();
        for (model, labels_file) in [("efficientnet_lite0", "imagenet_labels.txt"), ("nanodet", "coco_labels.txt")] {
            let labels = std::fs::read_to_string(models_dir().join(labels_file)).unwrap();
            let labels: Vec<&str> = labels.lines().map(str::trim).collect();
            let mapped = taxonomy.mapped_labels(model);
            assert!(mapped.len() >= 10, "{model}: {mapped:?}");
            for label in mapped {
                assert!(labels.contains(&label), "{model}: {label:?} is not in {labels_file}");
            }
        }
    }

    #[test]
    fn a_city_model_that_outputs_categories_needs_no_mapping() {
        let taxonomy = Taxonomy::without_mappings(default_categories());
        assert_eq!(taxonomy.category_of("city_waste_v3", "kitchen"), "kitchen");
        assert_eq!(taxonomy.category_of("city_waste_v3", "glass"), "unknown");
        assert_eq!(taxonomy.display("kitchen").zh, "厨余垃圾");
        assert_eq!(taxonomy.display("unknown").en, "Unknown");
    }

    #[test]
    fn a_mapping_to_an_unknown_category_names_the_file_and_category() {
        let mut taxonomy = Taxonomy::without_mappings(default_categories());
        let err = taxonomy
            .add_mapping("model = \"m\"\n[categories]\nglass = [\"beer bottle\"]\n", Path::new("city.taxonomy.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("city.taxonomy.toml") && err.contains("categories.glass"), "{err}");
        let err = taxonomy
            .add_mapping(
                "model = \"m\"\n[categories]\nkitchen = [\"x\"]\nresidual = [\"x\"]\n",
                Path::new("twice.taxonomy.toml"),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"x\"") && err.contains("both"), "{err}");
    }
}
