//! Rebuilds a Hugging Face `tokenizers` tokenizer from the vocabulary a GGUF file carries
//! (`tokenizer.ggml.*`), so the exported model folder has a `tokenizer.json` that HF,
//! TransformerLens and qexp all read the same way:
//!
//! - `gpt2` vocabularies (byte-level BPE: GPT-2, Pythia, Llama 3, Qwen, SmolLM2) from
//!   their tokens and merges, split by the pre-tokenizer the file names;
//! - `llama` vocabularies (SentencePiece BPE: Llama 2, Gemma) from their tokens and
//!   scores, as llama.cpp tokenizes them: spaces as `▁` (one put first where the file
//!   asks for it), pieces merged highest score first, bytes a piece does not cover as
//!   `<0xXX>` tokens.

use ahash::AHashMap;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer};

use super::gguf::{GgufFile, Value};
use super::{CheckpointError, SpecialTokens};

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// SentencePiece's word boundary, which stands for a space.
const SPACE: &str = "\u{2581}";

/// The tokenizer and its special tokens; `default_prepend_bos` is used when the file
/// does not say (`tokenizer.ggml.add_bos_token`).
pub(super) fn build(
    file: &GgufFile,
    default_prepend_bos: bool,
) -> Result<(Tokenizer, SpecialTokens), CheckpointError> {
    let path = file.path();
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("none");
    let vocabulary = Vocabulary::read(file)?;
    let mut tokenizer = match model {
        "gpt2" => byte_level_bpe(file, &vocabulary)?,
        "llama" => sentencepiece_bpe(file, &vocabulary)?,
        other => {
            return Err(CheckpointError::Unsupported {
                path: path.to_owned(),
                what: format!(
                    "tokenizer model `{other}`; qexp rebuilds byte-level BPE (`gpt2`) and \
                     SentencePiece (`llama`) tokenizers from GGUF"
                ),
            });
        }
    };
    let specials: Vec<AddedToken> = vocabulary
        .tokens
        .iter()
        .zip(&vocabulary.types)
        .filter(|(_, t)| matches!(**t, UNKNOWN | CONTROL | USER_DEFINED))
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);

    let tokens = &vocabulary.tokens;
    let id = |key: &str| {
        file.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as u32)
            .filter(|&v| (v as usize) < tokens.len())
    };
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let prepend_bos = match file.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(add)) => *add,
        _ => default_prepend_bos,
    } && bos.is_some();
    let special_tokens = SpecialTokens {
        bos,
        eos,
        pad: id("tokenizer.ggml.padding_token_id").or(eos).unwrap_or(0),
        prepend_bos,
    };
    Ok((tokenizer, special_tokens))
}

/// The tokens, their types and (SentencePiece) scores, by id.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i64>,
    scores: Vec<f32>,
}

impl Vocabulary {
    fn read(file: &GgufFile) -> Result<Self, CheckpointError> {
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let numbers = |key: &str, default: f64| -> Vec<f64> {
            let values = file.get(key).and_then(Value::as_array).unwrap_or_default();
            (0..tokens.len())
                .map(|i| values.get(i).and_then(Value::as_f64).unwrap_or(default))
                .collect()
        };
        let types = numbers("tokenizer.ggml.token_type", NORMAL as f64)
            .into_iter()
            .map(|t| t as i64)
            .collect();
        let scores = numbers("tokenizer.ggml.scores", 0.0)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        Ok(Vocabulary {
            tokens,
            types,
            scores,
        })
    }

    fn ids(&self) -> AHashMap<String, u32> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect()
    }
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>, CheckpointError> {
    let path = file.path();
    file.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| CheckpointError::MissingMetadata {
            path: path.to_owned(),
            key: key.to_owned(),
        })?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_owned(),
            what: format!("`{key}` holds something other than strings"),
        })
}

fn inconsistent(file: &GgufFile, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Corrupt {
        path: file.path().to_owned(),
        what: format!("its BPE vocabulary is inconsistent: {e}"),
    }
}

/// Byte-level BPE from the file's merges.
fn byte_level_bpe(file: &GgufFile, vocabulary: &Vocabulary) -> Result<Tokenizer, CheckpointError> {
    let path = file.path();
    let merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| CheckpointError::Corrupt {
                    path: path.to_owned(),
                    what: format!("merge `{merge}` is not two tokens separated by a space"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Llama 3 takes a word the vocabulary holds whole before merging (as llama.cpp and
    // its own tokenizer.json do).
    let bpe = BPE::builder()
        .vocab_and_merges(vocabulary.ids(), merges)
        .ignore_merges(LLAMA3_TYPES.contains(&pre_tokenizer_type(file)))
        .build()
        .map_err(|e| inconsistent(file, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(file)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// SentencePiece BPE from the file's scores. SentencePiece merges the adjacent pair
/// whose joined piece scores highest; BPE merges by rank, so every normal piece that
/// splits into two pieces of the vocabulary becomes a merge, ranked by its score (ties
/// by the halves' ids, as transformers' converter orders them).
fn sentencepiece_bpe(
    file: &GgufFile,
    vocabulary: &Vocabulary,
) -> Result<Tokenizer, CheckpointError> {
    let ids = vocabulary.ids();
    let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (piece, (&kind, &score)) in vocabulary
        .tokens
        .iter()
        .zip(vocabulary.types.iter().zip(&vocabulary.scores))
    {
        if kind != NORMAL {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                merges.push((score, l, r, left.to_owned(), right.to_owned()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect();
    let unknown = vocabulary
        .types
        .iter()
        .position(|&t| t == UNKNOWN)
        .map(|id| vocabulary.tokens[id].clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = unknown {
        builder = builder.unk_token(unknown);
    }
    let bpe = builder.build().map_err(|e| inconsistent(file, e))?;

    let space_prefix = matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(true)) | None
    );
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| inconsistent(file, format!("{e}")))
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new(SPACE.into()).into());
    }
    normalizers.push(replace(" ", SPACE)?.into());
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(replace(SPACE, " ")?),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Llama 3's split (`llama3`, `llama-bpe`): letters with one leading non-letter, numbers
/// in runs of up to three digits, punctuation with its trailing newlines.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The pre-tokenizer types that split as Llama 3 does.
const LLAMA3_TYPES: [&str; 3] = ["llama3", "llama-v3", "llama-bpe"];
/// Qwen2's (`qwen2`, `stablelm2`): Llama 3's with every digit on its own.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_tokenizer_type(file: &GgufFile) -> &str {
    file.get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// The split the file's pre-tokenizer type names, as llama.cpp splits: Llama 3's and
/// Qwen2's regexes; GPT-2's regex after single digits (`smollm`, `starcoder`, `refact`);
/// GPT-2's alone for `gpt-2`, `olmo` (Pythia's tokenizer), `mpt` and every other type,
/// where it is exact for those three and an approximation for the rest.
fn pre_tokenizer(file: &GgufFile) -> Result<PreTokenizerWrapper, CheckpointError> {
    let pre = pre_tokenizer_type(file);
    let regex_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper, CheckpointError> {
        let split = Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| inconsistent(file, e))?;
        let bytes = ByteLevel::new(false, true, false);
        Ok(Sequence::new(vec![split.into(), bytes.into()]).into())
    };
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        pre if LLAMA3_TYPES.contains(&pre) => regex_then_bytes(LLAMA3_SPLIT)?,
        "qwen2" | "stablelm2" => regex_then_bytes(QWEN2_SPLIT)?,
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        _ => byte_level.into(),
    })
}
