//! Rebuilds a Hugging Face `tokenizers` tokenizer from the vocabulary and merges a GGUF
//! file carries (`tokenizer.ggml.*`), so the exported model folder has a `tokenizer.json`
//! that HF, TransformerLens and qexp all read the same way.

use ahash::AHashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::{GgufFile, Value};
use super::{CheckpointError, SpecialTokens};

/// GGUF token types that are control or user-defined tokens, matched whole and never split.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

pub(super) fn build(file: &GgufFile) -> Result<(Tokenizer, SpecialTokens), CheckpointError> {
    let path = file.path();
    let unsupported = |what: String| CheckpointError::Unsupported {
        path: path.to_owned(),
        what,
    };
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("none");
    if model != "gpt2" {
        return Err(unsupported(format!(
            "tokenizer model `{model}`; qexp rebuilds byte-level BPE (`gpt2`) tokenizers from GGUF"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>, CheckpointError> {
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
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?
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
    let token_types: Vec<i64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|types| {
            types
                .iter()
                .map(|t| t.as_u64().map_or(1, |v| v as i64))
                .collect()
        })
        .unwrap_or_default();

    let vocab: AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| CheckpointError::Corrupt {
            path: path.to_owned(),
            what: format!("its BPE vocabulary is inconsistent: {e}"),
        })?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(file)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(_, t)| matches!(**t, CONTROL | USER_DEFINED))
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);

    let id = |key: &str| {
        file.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as u32)
            .filter(|&v| (v as usize) < tokens.len())
    };
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let prepend_bos = matches!(
        file.get("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    let special_tokens = SpecialTokens {
        bos,
        eos,
        pad: id("tokenizer.ggml.padding_token_id").or(eos).unwrap_or(0),
        prepend_bos,
    };
    Ok((tokenizer, special_tokens))
}

/// GPT-2's regex split, preceded by a split into single digits for the pre-tokenizer
/// types known to do that (`smollm`, `starcoder`, `refact`, `qwen2`; Qwen2 splits digits one
/// by one, its other rules are an approximation here). Other types get GPT-2's split
/// alone, which is exact for `gpt2` and an approximation for the rest.
fn pre_tokenizer(file: &GgufFile) -> PreTokenizerWrapper {
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "smollm" | "starcoder" | "refact" | "qwen2" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        _ => byte_level.into(),
    }
}
