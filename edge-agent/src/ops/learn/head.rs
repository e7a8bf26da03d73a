//! Writing a trained head as a model the agent loads like any other: the backbone's graph with its
//! logits layer replaced by the head (one Gemm over the embedding tensor), nodes and weights the
//! new output does not need pruned, a labels file and a manifest whose `[learned]` section says
//! what it was trained on and how it did on the held-out crops.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::{attribute_proto, AttributeProto, ModelProto, NodeProto, TensorProto};

use super::train::Head;
use crate::infer::embedding::{float_value, ONNX_FLOAT};
use crate::infer::manifest::{LearnedSpec, Manifest};

/// The head's output: the new model's logits.
pub const HEAD_OUTPUT: &str = "site_logits";

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("backbone {path}: {message}")]
    Backbone { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot describe the training in the manifest: {0}")]
    Describe(#[from] toml::ser::Error),
}

/// The backbone's ONNX `bytes` with `head` on `embedding` (a tensor of the graph) as its only output.
pub fn head_graph(bytes: &[u8], embedding: &str, head: &Head) -> Result<Vec<u8>, String> {
    let mut model = ModelProto::decode(bytes).map_err(|e| format!("not a readable ONNX file: {e}"))?;
    let graph = model.graph.as_mut().ok_or("the file has no graph")?;
    if !graph.node.iter().any(|n| n.output.iter().any(|o| o == embedding)) {
        return Err(format!("no node produces the embedding tensor {embedding:?}"));
    }
    let width = head.weights.first().map(Vec::len).unwrap_or(0);
    let tensor = |name: &str, dims: Vec<i64>, data: Vec<f32>| TensorProto {
        name: name.to_string(),
        dims,
        data_type: ONNX_FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let weights: Vec<f32> = head.weights.iter().flatten().copied().collect();
    graph.initializer.push(tensor("site_head.weight", vec![head.labels.len() as i64, width as i64], weights));
    graph.initializer.push(tensor("site_head.bias", vec![head.labels.len() as i64], head.bias.clone()));
    // Y = X · Wᵀ + b, with W stored one row per label.
    graph.node.push(NodeProto {
        name: "/site_head/Gemm".into(),
        op_type: "Gemm".into(),
        input: vec![embedding.to_string(), "site_head.weight".into(), "site_head.bias".into()],
        output: vec![HEAD_OUTPUT.into()],
        attribute: vec![AttributeProto {
            name: "transB".into(),
            r#type: attribute_proto::AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        }],
        ..Default::default()
    });
    graph.output = vec![float_value(HEAD_OUTPUT, head.labels.len())];
    prune(graph);
    Ok(model.encode_to_vec())
}

/// Drops the nodes, weights and value descriptions the outputs do not need (the old logits layer).
fn prune(graph: &mut tract_onnx::pb::GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    // Nodes are in topological order, so one pass from the end finds every ancestor.
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().cloned());
            // Subgraph inputs (If, Loop) are not listed as node inputs: keep what they name too.
            for attribute in &node.attribute {
                for sub in attribute.g.iter().chain(&attribute.graphs) {
                    needed.extend(sub.node.iter().flat_map(|n| n.input.iter().cloned()));
                }
            }
        }
    }
    let mut index = 0;
    graph.node.retain(|_| {
        index += 1;
        keep[index - 1]
    });
    graph.initializer.retain(|t| needed.contains(&t.name));
    // The real input is needed; initialisers listed as inputs (older files) go with their weights.
    graph.input.retain(|i| needed.contains(&i.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
}

#[derive(serde::Serialize)]
struct Learned<'a> {
    learned: &'a LearnedSpec,
}

/// The files written for one head.
#[derive(Debug, Clone)]
pub struct WrittenModel {
    pub manifest: PathBuf,
    pub onnx: PathBuf,
    pub labels: PathBuf,
    pub sha256: String,
}

/// Writes `<name>.onnx`, `<name>.labels.txt` and `<name>.toml` into `dir`.
pub fn write_model(
    dir: &Path,
    name: &str,
    backbone: &Manifest,
    backbone_bytes: &[u8],
    embedding: &str,
    head: &Head,
    learned: &LearnedSpec,
) -> Result<WrittenModel, HeadError> {
    let onnx_bytes = head_graph(backbone_bytes, embedding, head)
        .map_err(|message| HeadError::Backbone { path: backbone.onnx_path(), message })?;
    let sha256 = hex::encode(Sha256::digest(&onnx_bytes));
    // Whole and durable: a site head switch points the config at these files.
    let write = |path: PathBuf, bytes: &[u8]| {
        crate::base::write_file::write_atomically(&path, bytes)
            .map_err(|source| HeadError::Write { path: path.clone(), source })?;
        Ok::<_, HeadError>(path)
    };
    let onnx = write(dir.join(format!("{name}.onnx")), &onnx_bytes)?;
    let labels = write(dir.join(format!("{name}.labels.txt")), format!("{}\n", head.labels.join("\n")).as_bytes())?;
    let input = &backbone.input;
    let text = format!(
        "# A head trained on this site's labelled crops by `edge-agent learn`, on the pooled features of\n\
         # {backbone_name}. Its labels are the site's own words (here the categories themselves, so no\n\
         # taxonomy mapping is needed). [learned] says what it was trained on and how it did on crops it\n\
         # never saw.\n\
         name = {name:?}\nfile = \"{name}.onnx\"\nsha256 = \"{sha256}\"\ntask = \"classify\"\n\
         labels = \"{name}.labels.txt\"\nlicence = {licence:?}\nprovenance = {provenance:?}\n\n\
         [input]\nname = {input_name:?}\nshape = {shape:?}\nlayout = \"{layout}\"\ncolour_order = \"{colour}\"\n\
         resize = \"{resize}\"\nmean = {mean:?}\nstd = {std:?}\npad_value = {pad}\n\n\
         [decoder]\nkind = \"softmax\"\ntop_k = {top_k}\nscore_threshold = 0.0\n\n\
         [embedding]\noutput = {embedding:?}\nsize = {size}\n\n\
         {learned_text}",
        backbone_name = backbone.name,
        licence = backbone.licence,
        provenance = format!(
            "head trained by edge-agent learn on {} labelled crops; backbone {} (sha256 {})",
            learned.counts.values().sum::<usize>(),
            backbone.name,
            backbone.sha256
        ),
        input_name = input.name,
        shape = input.shape,
        layout = format!("{:?}", input.layout).to_lowercase(),
        colour = format!("{:?}", input.colour_order).to_lowercase(),
        resize = format!("{:?}", input.resize).to_lowercase(),
        mean = input.mean,
        std = input.std,
        pad = input.pad_value,
        top_k = head.labels.len(),
        size = head.weights.first().map(Vec::len).unwrap_or(0),
        learned_text = toml::to_string(&Learned { learned })?,
    );
    let manifest = write(dir.join(format!("{name}.toml")), text.as_bytes())?;
    Ok(WrittenModel { manifest, onnx, labels, sha256 })
}
