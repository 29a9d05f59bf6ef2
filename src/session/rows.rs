//! Small computations on a forward pass's tensors and a dataset's tokens, shared by the
//! built-ins' executors.

use ndarray::{Array2, ArrayD, Axis, s};

use super::Failure;
use crate::runtime::{Batch, Forward, RuntimeError};

/// Logits are `tokens x d_vocab` floats; keeping a forward pass under this many tokens
/// keeps each batch's logits to a few hundred MB on a 50k vocabulary.
const TOKENS_PER_FORWARD: usize = 2048;

/// A forward pass's result, or an error naming the run (a variant or the clean model) and,
/// for NaNs, the output they came out of.
pub(crate) fn finite(
    variant: Option<&str>,
    forward: Result<Forward, RuntimeError>,
) -> Result<Forward, Failure> {
    let run = match variant {
        Some(variant) => format!("variant `{variant}`"),
        None => "the clean model".to_owned(),
    };
    let forward = forward.map_err(|e| format!("{run}: {}", error_chain(&e)))?;
    let logits = forward
        .logits
        .iter()
        .map(|l| ("logits", l.as_slice_memory_order()));
    let hooks = forward
        .hooks
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice_memory_order()));
    for (output, values) in logits.chain(hooks) {
        if values.is_some_and(|v| v.iter().any(|x| x.is_nan())) {
            return Err(format!(
                "{run}: `{output}` came out with NaN; the model's weights or the variant's edit is broken there"
            ));
        }
    }
    Ok(forward)
}

/// The head's argmax attention from `pos` in batch row `row`: (key position, weight).
pub fn argmax_attention(
    pattern: &ArrayD<f32>,
    row: usize,
    head: usize,
    pos: usize,
) -> (usize, f32) {
    pattern
        .slice(s![row, head, pos, ..=pos])
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 { (i, p) } else { best }
        })
}

pub fn norm<'a>(x: impl IntoIterator<Item = &'a f32>) -> f64 {
    x.into_iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Every real token's value of a `[batch, pos, ...]` hook as one row each, in batch order
/// (a head's slice when `head` is given).
pub fn head_rows(activation: &ArrayD<f32>, batch: &Batch, head: Option<usize>) -> Array2<f32> {
    let mut values = Vec::new();
    let mut width = 0;
    for (row, &len) in batch.lengths.iter().enumerate() {
        let sequence = activation.index_axis(Axis(0), row);
        for pos in 0..len {
            let token = sequence.index_axis(Axis(0), pos);
            let x = match head {
                Some(head) => token.index_axis(Axis(0), head),
                None => token,
            };
            width = x.len();
            values.extend(x.iter());
        }
    }
    Array2::from_shape_vec((values.len() / width.max(1), width), values)
        .expect("every token has the same width")
}

/// The position `pos` names in `tokens` (negative counts from the end; the last token
/// when absent).
pub fn position(tokens: &[u32], pos: Option<i64>) -> Result<usize, Failure> {
    let pos = pos.unwrap_or(-1);
    let at = if pos < 0 {
        tokens.len() as i64 + pos
    } else {
        pos
    };
    if at < 0 || at as usize >= tokens.len() {
        return Err(format!(
            "position {pos} is outside the prompt's {} tokens",
            tokens.len()
        ));
    }
    Ok(at as usize)
}

/// A few tokens each side of `pos`, the token itself between bars: `says Mom|.| "`.
pub fn context(strs: &[String], pos: usize, width: usize) -> String {
    let before: String = strs[pos.saturating_sub(width)..pos].concat();
    let after: String = strs[pos + 1..(pos + 1 + width).min(strs.len())].concat();
    format!("{before}|{}|{after}", strs[pos])
}

/// Consecutive prompts grouped so a batch holds at most `batch_size` prompts and about
/// [`TOKENS_PER_FORWARD`] padded tokens.
pub fn token_chunks(sequences: &[Vec<u32>], batch_size: usize) -> Vec<&[Vec<u32>]> {
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let mut start = 0;
    group_by_width(&lengths, batch_size)
        .into_iter()
        .map(|size| {
            start += size;
            &sequences[start - size..start]
        })
        .collect()
}

/// Prompt indices grouped as [`token_chunks`] groups prompts, after ordering them by
/// length (ties by index): a batch then pads each prompt to a similar length, where in
/// file order one long prompt pads seven short ones. For passes whose results are per
/// prompt, so the order they run in does not matter; callers put the results back in
/// dataset order.
pub fn length_sorted_chunks(sequences: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| (sequences[i].len(), i));
    let lengths: Vec<usize> = order.iter().map(|&i| sequences[i].len()).collect();
    let mut rest = order.as_slice();
    group_by_width(&lengths, batch_size)
        .into_iter()
        .map(|size| {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            chunk.to_vec()
        })
        .collect()
}

/// Sizes of consecutive groups of `lengths`, each at most `batch_size` long and at most
/// [`TOKENS_PER_FORWARD`] once padded to its longest (a longer prompt goes alone).
fn group_by_width(lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let mut end = start + 1;
        let mut width = lengths[start];
        while end < lengths.len() && end - start < batch_size.max(1) {
            let wider = width.max(lengths[end]);
            if wider * (end - start + 1) > TOKENS_PER_FORWARD {
                break;
            }
            width = wider;
            end += 1;
        }
        sizes.push(end - start);
        start = end;
    }
    sizes
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(lengths: &[usize]) -> Vec<Vec<u32>> {
        lengths.iter().map(|&n| vec![1; n]).collect()
    }

    #[test]
    fn consecutive_prompts_batch_up_to_the_size() {
        let sequences = prompts(&[3, 9, 2, 8, 4]);
        let sizes: Vec<usize> = token_chunks(&sequences, 2)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn sorted_batches_group_prompts_of_similar_length() {
        let sequences = prompts(&[3, 9, 2, 8, 4, 3]);
        // By length, ties by index: 2 (#2), 3 (#0), 3 (#5), 4 (#4), 8 (#3), 9 (#1).
        assert_eq!(
            length_sorted_chunks(&sequences, 2),
            vec![vec![2, 0], vec![5, 4], vec![3, 1]]
        );
    }

    #[test]
    fn a_batch_stays_under_the_padded_token_budget() {
        // Two of these fit; a third would pad past the budget.
        let long = TOKENS_PER_FORWARD / 2 - 1;
        let sequences = prompts(&[long, 1, long]);
        assert_eq!(
            length_sorted_chunks(&sequences, 8),
            vec![vec![1, 0], vec![2]]
        );
        let sizes: Vec<usize> = token_chunks(&sequences, 8)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![2, 1]);
        let too_long = prompts(&[TOKENS_PER_FORWARD + 1, 1]);
        assert_eq!(length_sorted_chunks(&too_long, 8), vec![vec![1], vec![0]]);
    }
}
