//! Hugging Face model folders: `config.json`, the weights as `model.safetensors` or as
//! shards listed in `model.safetensors.index.json`, and `tokenizer.json`.
//!
//! This module owns what every family shares (reading the folder, finding a tensor in
//! whichever shard holds it, converting f16/bf16 to f32, torch's `[out, in]` layout);
//! each family's module turns its `config.json` into a [`TransformerConfig`] and names its
//! tensors.

mod gemma2;
mod gpt2;
mod gpt_neo;
mod gpt_neox;
mod llama;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::ArrayD;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Checkpoint, CheckpointError, SpecialTokens, Tensors, expect_shape};
use crate::model::{
    Positional, RopeScaling, Transformer, TransformerConfig, WeightStorage, Weights,
};

const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
const TOKENIZER_FILE: &str = "tokenizer.json";

/// The `model_type`s qexp reads, for the message that refuses the others.
const SUPPORTED: &str = "gemma2, gpt2, gpt_neo, gpt_neox, llama, mistral, qwen2, qwen3";

/// What a family makes of its `config.json`.
struct Family {
    config: TransformerConfig,
    /// Shown in the manifest's `source` after the folder's name (`HF GPT-2`).
    label: &'static str,
    bos: Option<u32>,
    eos: Option<u32>,
    /// TransformerLens' `default_prepend_bos` for the family.
    prepend_bos: bool,
    read_weights: fn(&Reader<'_>, &TransformerConfig) -> Result<Weights, CheckpointError>,
}

pub(super) fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let config_path = dir.join(CONFIG_FILE);
    let text =
        crate::files::read_to_string(&config_path).map_err(|source| CheckpointError::Io {
            path: config_path.clone(),
            source,
        })?;
    let config = ConfigFile {
        path: &config_path,
        json: serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: config_path.clone(),
            what: e.to_string(),
        })?,
    };
    let model_type = config
        .json
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("(none)")
        .to_owned();
    let family = match model_type.as_str() {
        "gpt_neo" => gpt_neo::family(&config)?,
        "gemma2" => gemma2::family(&config)?,
        "gpt2" => gpt2::family(&config)?,
        "gpt_neox" => gpt_neox::family(&config)?,
        "llama" | "mistral" | "qwen2" | "qwen3" => llama::family(&config, &model_type)?,
        other => {
            return Err(CheckpointError::Unsupported {
                path: config_path,
                what: format!(
                    "model_type `{other}`; qexp exports Hugging Face folders of {SUPPORTED}, \
                     and GGUF files of the same families"
                ),
            });
        }
    };

    let weights = with_tensors(dir, |reader| (family.read_weights)(reader, &family.config))?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
        CheckpointError::Corrupt {
            path: tokenizer_path.clone(),
            what: format!("cannot read it as a tokenizers JSON file: {e}"),
        }
    })?;
    Ok(Checkpoint {
        transformer: Transformer {
            config: family.config,
            weights,
        },
        tokenizer,
        special_tokens: SpecialTokens {
            bos: family.bos,
            eos: family.eos,
            pad: family.eos.or(family.bos).unwrap_or(0),
            prepend_bos: family.prepend_bos && family.bos.is_some(),
        },
        description: format!(
            "{} ({})",
            dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            family.label
        ),
    })
}

/// `config.json`, parsed once, read field by field by each family.
struct ConfigFile<'a> {
    path: &'a Path,
    json: serde_json::Value,
}

impl ConfigFile<'_> {
    /// The whole file as a family's typed view of it.
    fn parse<T: DeserializeOwned>(&self) -> Result<T, CheckpointError> {
        serde_json::from_value(self.json.clone()).map_err(|e| self.corrupt(e.to_string()))
    }

    /// A token id field, which some models give as a list (`"eos_token_id": [1, 107]`):
    /// the first is taken.
    fn token_id(&self, key: &str) -> Option<u32> {
        let value = self.json.get(key)?;
        let first = value.as_array().map_or(Some(value), |ids| ids.first())?;
        first.as_u64().and_then(|id| u32::try_from(id).ok())
    }

    fn corrupt(&self, what: String) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.to_owned(),
            what,
        }
    }

    fn unsupported(&self, what: String) -> CheckpointError {
        CheckpointError::Unsupported {
            path: self.path.to_owned(),
            what,
        }
    }

    /// Key/value heads and head width of a rotary, grouped-query model: `n_kv` defaults
    /// to `n_heads`, `head_dim` to `hidden / n_heads`; refuses groups that do not divide
    /// or an odd head width (the rotary turns pairs).
    fn grouped_heads(
        &self,
        hidden: usize,
        n_heads: usize,
        n_kv: Option<usize>,
        head_dim: Option<usize>,
    ) -> Result<(usize, usize), CheckpointError> {
        let n_kv = n_kv.unwrap_or(n_heads);
        let d_head = match head_dim {
            Some(d) => d,
            None => self.head_width(hidden, n_heads)?,
        };
        if n_kv == 0 || !n_heads.is_multiple_of(n_kv) || d_head % 2 == 1 {
            return Err(self.corrupt(format!(
                "{n_heads} query heads cannot share {n_kv} key/value heads of width {d_head}"
            )));
        }
        Ok((n_kv, d_head))
    }

    /// `hidden / heads`, refusing a head count that does not divide the width.
    fn head_width(&self, hidden: usize, heads: usize) -> Result<usize, CheckpointError> {
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(self.corrupt(format!(
                "hidden size {hidden} is not a multiple of the head count {heads}"
            )));
        }
        Ok(hidden / heads)
    }
}

/// Rotary settings, which older configs give at the top level (`rope_theta`,
/// `rope_scaling`; GPT-NeoX's `rotary_emb_base`, `rotary_pct`) and newer ones inside
/// `rope_parameters`. Flattened into each rotary family's config.
#[derive(Debug, Deserialize)]
struct Rope {
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    rotary_emb_base: Option<f32>,
    rotary_pct: Option<f32>,
    rope_parameters: Option<RopeParameters>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f32>,
    partial_rotary_factor: Option<f32>,
    /// The scaling's own fields (`rope_type`, `factor`, ...), read by [`Rope::scaling`].
    #[serde(flatten)]
    scaling: serde_json::Map<String, serde_json::Value>,
}

impl Rope {
    /// The rotary base.
    fn base(&self) -> f32 {
        self.rope_theta
            .or(self.rotary_emb_base)
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0)
    }

    /// The frequency scaling, where the config asks for one qexp computes (`linear`,
    /// Llama 3.1's `llama3`); YaRN, dynamic NTK and the others are refused by name.
    fn scaling(&self, file: &ConfigFile<'_>) -> Result<Option<RopeScaling>, CheckpointError> {
        let fields = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(serde_json::Value::Object(old)), _) => old,
            (_, Some(nested)) => &nested.scaling,
            _ => return Ok(None),
        };
        let text = |key: &str| fields.get(key).and_then(serde_json::Value::as_str);
        let number = |key: &str| {
            fields
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| file.corrupt(format!("rotary scaling without `{key}`")))
        };
        match text("rope_type")
            .or_else(|| text("type"))
            .unwrap_or("default")
        {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: number("factor")?,
            })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            })),
            other => Err(file.unsupported(format!(
                "rotary scaling `{other}`; qexp computes `linear` and `llama3` scaling only"
            ))),
        }
    }

    /// Base and scaling, as [`Positional::Rotary`] takes them (the whole head turned).
    fn positional(&self, file: &ConfigFile<'_>) -> Result<Positional, CheckpointError> {
        Ok(Positional::Rotary {
            base: self.base(),
            rotary_dim: None,
            scaling: self.scaling(file)?,
        })
    }

    /// The fraction of each head the rotary turns (GPT-NeoX), all of it when unsaid.
    fn fraction(&self) -> f32 {
        self.rotary_pct
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|p| p.partial_rotary_factor)
            })
            .unwrap_or(1.0)
    }
}

/// Maps the folder's safetensors file(s) and hands `read` a [`Reader`] over them.
fn with_tensors<T>(
    dir: &Path,
    read: impl FnOnce(&Reader<'_>) -> Result<T, CheckpointError>,
) -> Result<T, CheckpointError> {
    let files = weight_files(dir)?;
    let maps = files
        .iter()
        .map(|path| {
            let file = crate::files::open(path).map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: read-only map of a file nobody writes while we read it.
            unsafe { Mmap::map(&file) }.map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut shards = Vec::with_capacity(maps.len());
    let mut index = HashMap::new();
    for (i, (map, path)) in maps.iter().zip(&files).enumerate() {
        let tensors = SafeTensors::deserialize(map).map_err(|e| CheckpointError::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        })?;
        for name in tensors.names() {
            index.insert(name.to_owned(), i);
        }
        shards.push((path.as_path(), tensors));
    }
    read(&Reader {
        dir,
        shards: &shards,
        index,
    })
}

/// `model.safetensors`, or every shard `model.safetensors.index.json` names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if !index_path.is_file() {
        let has_pickle = dir.join("pytorch_model.bin").is_file()
            || dir.join("pytorch_model.bin.index.json").is_file();
        return Err(CheckpointError::Unsupported {
            path: dir.to_owned(),
            what: if has_pickle {
                "the weights are a pickled `pytorch_model.bin`, which qexp does not unpickle; \
                 save them as safetensors (`model.save_pretrained(dir, safe_serialization=True)`)"
                    .into()
            } else {
                format!("it has neither `{WEIGHTS_FILE}` nor `{WEIGHTS_INDEX_FILE}`")
            },
        });
    }
    #[derive(serde::Deserialize)]
    struct ShardIndex {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = crate::files::read_to_string(&index_path).map_err(|source| CheckpointError::Io {
        path: index_path.clone(),
        source,
    })?;
    let shard_index: ShardIndex =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: index_path.clone(),
            what: e.to_string(),
        })?;
    let mut names: Vec<&String> = shard_index.weight_map.values().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            // A shard name is a file name beside the index, never a path elsewhere.
            if Path::new(name).components().count() != 1 {
                return Err(CheckpointError::Corrupt {
                    path: index_path.clone(),
                    what: format!("shard `{name}` is not a file name in the folder"),
                });
            }
            Ok(dir.join(name))
        })
        .collect()
}

/// Finds tensors by name across the shards of one folder.
struct Reader<'a> {
    dir: &'a Path,
    shards: &'a [(&'a Path, SafeTensors<'a>)],
    index: HashMap<String, usize>,
}

impl Reader<'_> {
    /// The first of `names` the checkpoint holds (a tensor renamed between versions),
    /// else the first, for the error that names it.
    fn either<'n>(&self, names: &[&'n str]) -> &'n str {
        names
            .iter()
            .find(|n| self.locate(n).is_some())
            .unwrap_or(&names[0])
    }

    /// A tensor under its `*ForCausalLM` name (`model.layers.0...`, `transformer.h.0...`)
    /// or under the bare base-model name some checkpoints use (`h.0...`, as `gpt2` does).
    fn locate(&self, name: &str) -> Option<(&Path, safetensors::tensor::TensorView<'_>)> {
        let bare = name.split_once('.').map(|(_, rest)| rest);
        [Some(name), bare].into_iter().flatten().find_map(|n| {
            let (path, tensors) = &self.shards[*self.index.get(n)?];
            tensors.tensor(n).ok().map(|view| (*path, view))
        })
    }
}

impl Tensors for Reader<'_> {
    fn read(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>, CheckpointError> {
        let (path, view) = self
            .locate(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.dir.to_owned(),
                name: name.to_owned(),
            })?;
        expect_shape(path, name, view.shape(), expected)?;
        let stored = match view.dtype() {
            Dtype::F32 => WeightStorage::Float32,
            Dtype::F16 => WeightStorage::Float16,
            Dtype::BF16 => WeightStorage::Bfloat16,
            other => {
                return Err(CheckpointError::Unsupported {
                    path: path.to_owned(),
                    what: format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
                });
            }
        };
        Ok(
            ArrayD::from_shape_vec(expected.to_vec(), stored.decode(view.data()))
                .expect("safetensors checked the byte length against the shape"),
        )
    }
}
