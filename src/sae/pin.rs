//! A trained SAE pinned where its `save` points: the SAELens folder plus `training.json`,
//! what it was trained from (model weights, hook, dataset token ids, every setting, the
//! seed) and its training summary. SAE training turns the last-digit differences between
//! CPUs into a different SAE, with different feature numbers; a rerun whose inputs match
//! the record reads the pinned SAE instead, so the features a finding names stay put.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::train::{TrainConfig, TrainSummary};
use super::{Architecture, Sae, SaeError};

/// The file beside `cfg.json` that makes an SAE folder a pin (SAELens ignores it).
pub const RECORD_FILE: &str = "training.json";

/// What an SAE was trained from and what training reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// Everything that decides the trained weights, by name; a pin is reused only when
    /// every one of them is equal.
    pub inputs: BTreeMap<String, serde_json::Value>,
    pub summary: RecordedSummary,
    /// The qexp that trained it (informational: a pin is not retrained on an upgrade).
    pub trained_with: String,
}

/// The training summary a report shows: the activations trained on, and what
/// training reported (written flat, one field each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedSummary {
    pub activations: usize,
    #[serde(flatten)]
    pub training: TrainSummary,
}

/// Where the activations come from, in the hashes that identify them.
pub struct Provenance<'a> {
    pub model_weights_sha256: &'a str,
    pub hook: &'a str,
    pub head: Option<usize>,
    pub dataset_token_ids_sha256: &'a str,
}

/// The inputs a pin records for training `config` on `provenance`'s activations.
pub fn inputs(
    provenance: &Provenance,
    config: &TrainConfig,
) -> BTreeMap<String, serde_json::Value> {
    let (architecture, k) = match config.architecture {
        Architecture::Standard => ("standard", None),
        Architecture::TopK { k } => ("topk", Some(k)),
        Architecture::JumpRelu => ("jumprelu", None),
    };
    let values = serde_json::json!({
        "model_weights_sha256": provenance.model_weights_sha256,
        "hook": provenance.hook,
        "head": provenance.head,
        "dataset_token_ids_sha256": provenance.dataset_token_ids_sha256,
        "d_sae": config.d_sae,
        "architecture": architecture,
        "k": k,
        "l1_coefficient": as_written(config.l1_coefficient),
        "lr": as_written(config.lr),
        "batch_size": config.batch_size,
        "tokens": config.tokens,
        "seed": config.seed,
        "normalize_activations": config.normalize_activations,
        "resample_dead": config.resample_dead,
    });
    // Through text and back, so a fresh record compares equal to one read from disk
    // (an f32 setting is written with its shortest digits).
    serde_json::from_str(&values.to_string()).expect("JSON values round-trip")
}

/// An f32 setting as the experiment wrote it (its shortest digits), not its f64 widening.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().expect("a float's digits parse")
}

/// What a pin at `dir` holds, if it is one.
pub fn read(dir: &Path) -> Option<TrainingRecord> {
    let text = std::fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The recorded inputs that differ from `now`, as `name: recorded -> now`.
pub fn changes(
    recorded: &BTreeMap<String, serde_json::Value>,
    now: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let missing = serde_json::Value::String("(none)".into());
    let mut names: Vec<&String> = recorded.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (was, is) = (
                recorded.get(name).unwrap_or(&missing),
                now.get(name).unwrap_or(&missing),
            );
            (was != is).then(|| format!("{name}: {} -> {}", short(was), short(is)))
        })
        .collect()
}

/// A value for a message: hashes cut to 12 digits.
fn short(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) if s.len() == 64 => s[..12].to_owned(),
        other => other.to_string(),
    }
}

/// Saves `sae` with its record at `dir`, replacing the folder whole.
pub fn save(sae: &Sae, record: &TrainingRecord, dir: &Path) -> Result<(), SaeError> {
    let text = serde_json::to_string_pretty(record).expect("records serialize") + "\n";
    super::save::save_with(sae, dir, &[(RECORD_FILE, text.as_str())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrainConfig {
        TrainConfig {
            d_sae: 16,
            architecture: Architecture::Standard,
            l1_coefficient: 2e-3,
            lr: 3e-4,
            batch_size: 64,
            tokens: 1000,
            seed: 7,
            normalize_activations: false,
            resample_dead: false,
        }
    }

    fn provenance() -> Provenance<'static> {
        Provenance {
            model_weights_sha256: "a",
            hook: "blocks.0.hook_resid_post",
            head: None,
            dataset_token_ids_sha256: "b",
        }
    }

    #[test]
    fn inputs_read_back_from_disk_equal_the_ones_made_now() {
        let now = inputs(&provenance(), &config());
        let text = serde_json::to_string(&now).unwrap();
        let read: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(read, now);
        assert!(changes(&read, &now).is_empty());
    }

    #[test]
    fn a_changed_setting_is_named_with_both_values() {
        let before = inputs(&provenance(), &config());
        let mut other = config();
        other.l1_coefficient = 5e-3;
        let after = inputs(&provenance(), &other);
        assert_eq!(changes(&before, &after), ["l1_coefficient: 0.002 -> 0.005"]);
    }

    #[test]
    fn a_summary_is_recorded_flat_as_the_training_table_shows_it() {
        let text = r#"{"activations":680830,"steps":3907,"tokens":2000384,"mse":4.31,"l0":24.5,"explained_variance":0.89,"dead_fraction":0.15,"resampled":0}"#;
        let summary: RecordedSummary = serde_json::from_str(text).unwrap();
        assert_eq!(summary.activations, 680830);
        assert_eq!(summary.training.steps, 3907);
        assert_eq!(summary.training.resumed_from, 0);
        assert_eq!(serde_json::to_string(&summary).unwrap(), text);
    }
}
