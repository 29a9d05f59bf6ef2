//! `qexp export`: checkpoint -> model folder (`model.onnx`, `model.onnx.data`,
//! `manifest.json`, `tokenizer.json`).
//!
//! The folder is written under a temporary name beside its destination and renamed into
//! place at the end, so a failed export never leaves a half-written model behind.

pub(crate) mod graph;
mod transformer;

use std::path::{Path, PathBuf};

use prost::Message;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::manifest::{
    ATTENTION_MASK, DATA_FILE, FORMAT_VERSION, GRAPH_FILE, INPUT_IDS, LOGITS, MANIFEST_FILE,
    Manifest, TOKENIZER_FILE,
};
use crate::onnx::{FLOAT, INT64, ModelProto, OperatorSetIdProto};
use crate::output::{Kind, Scope, Staging};

pub use graph::{ExternalData, GraphBuilder, attr_int, attr_ints, value_info};

/// The ONNX opset the graph is written against, and the IR version that goes with it.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot write the model folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("internal error while building the graph: {0} (this is a bug in qexp)")]
    Internal(String),
    #[error(transparent)]
    Processing(#[from] crate::processing::ProcessingError),
}

/// What an export produced, for the CLI to report.
#[derive(Debug)]
pub struct ExportSummary {
    pub manifest: Manifest,
    pub graph_nodes: usize,
}

/// Reads `checkpoint` and writes the model folder `out_dir`, replacing an earlier export
/// there but nothing else; `out_dir` must be a place `scope` allows.
pub fn export(
    checkpoint: &Path,
    out_dir: &Path,
    scope: &Scope,
) -> Result<ExportSummary, ExportError> {
    export_processed(checkpoint, out_dir, scope, &[])
}

/// As [`export`], with TransformerLens' weight processing `steps` applied to the weights
/// first (recorded in the manifest).
pub fn export_processed(
    checkpoint: &Path,
    out_dir: &Path,
    scope: &Scope,
    steps: &[crate::processing::Step],
) -> Result<ExportSummary, ExportError> {
    export_with(
        checkpoint,
        out_dir,
        scope,
        steps,
        crate::model::WeightStorage::Float32,
    )
}

/// As [`export_processed`], with the weights stored as `storage` says.
pub fn export_with(
    checkpoint: &Path,
    out_dir: &Path,
    scope: &Scope,
    steps: &[crate::processing::Step],
    storage: crate::model::WeightStorage,
) -> Result<ExportSummary, ExportError> {
    scope.check(out_dir, Kind::Model)?;
    let mut checkpoint = Checkpoint::load(checkpoint)?;
    let applied = crate::processing::process(&mut checkpoint.transformer, steps)?;
    write_checkpoint(&checkpoint, out_dir, applied, storage)
}

/// Writes the model folder for a checkpoint already in memory (tests edit weights this way).
pub fn export_checkpoint(
    checkpoint: &Checkpoint,
    out_dir: &Path,
) -> Result<ExportSummary, ExportError> {
    write_checkpoint(
        checkpoint,
        out_dir,
        Vec::new(),
        crate::model::WeightStorage::Float32,
    )
}

fn write_checkpoint(
    checkpoint: &Checkpoint,
    out_dir: &Path,
    processing: Vec<crate::processing::Step>,
    storage: crate::model::WeightStorage,
) -> Result<ExportSummary, ExportError> {
    let staging = Staging::new(out_dir, Kind::Model)?;
    let summary = write_folder(checkpoint, staging.path(), processing, storage)?;
    staging.commit()?;
    Ok(summary)
}

fn write_folder(
    checkpoint: &Checkpoint,
    dir: &Path,
    processing: Vec<crate::processing::Step>,
    storage: crate::model::WeightStorage,
) -> Result<ExportSummary, ExportError> {
    let config = &checkpoint.transformer.config;
    let data = ExternalData::create(&dir.join(DATA_FILE))?;
    let mut builder = GraphBuilder::new(data);
    builder.storage = storage;
    transformer::build(&checkpoint.transformer, &mut builder)?;
    let inputs = vec![
        value_info(INPUT_IDS, INT64, &["batch", "pos"]),
        value_info(ATTENTION_MASK, INT64, &["batch", "pos"]),
    ];
    let vocab = config.d_vocab.to_string();
    let outputs = vec![value_info(LOGITS, FLOAT, &["batch", "pos", &vocab])];
    let (graph, hooks) = builder.finish(inputs, outputs)?;
    let graph_nodes = graph.node.len();
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("qexp".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(dir.join(GRAPH_FILE), model.encode_to_vec())?;

    let tokenizer_path = dir.join(TOKENIZER_FILE);
    checkpoint
        .tokenizer
        .save(&tokenizer_path, true)
        .map_err(|e| ExportError::Write {
            path: tokenizer_path,
            message: e.to_string(),
        })?;

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        exported_by: format!("qexp {}", env!("CARGO_PKG_VERSION")),
        source: checkpoint.description.clone(),
        weights_sha256: crate::manifest::sha256_file(&dir.join(DATA_FILE))?,
        config: config.clone(),
        special_tokens: checkpoint.special_tokens,
        parameters: checkpoint.transformer.parameter_count(),
        processing,
        weight_storage: storage,
        hooks,
    };
    let mut json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    json.push('\n');
    std::fs::write(dir.join(MANIFEST_FILE), json)?;
    crate::manifest::remember_verified(dir, &manifest.weights_sha256);
    Ok(ExportSummary {
        manifest,
        graph_nodes,
    })
}
