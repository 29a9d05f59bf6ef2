//! Token sequences laid out as one padded batch.

use ndarray::Array2;

/// Sequences padded on the right to the longest one. Right padding keeps every real
/// token at its true position (learned and rotary positions both count from 0) and,
/// with causal attention, no real token ever sees a pad.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Array2<i64>,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Array2<i64>,
    pub lengths: Vec<usize>,
}

impl Batch {
    pub fn right_padded<S: AsRef<[u32]>>(sequences: &[S], pad: u32) -> Self {
        let width = sequences
            .iter()
            .map(|s| s.as_ref().len())
            .max()
            .unwrap_or(0);
        let mut input_ids = Array2::from_elem((sequences.len(), width), i64::from(pad));
        let mut attention_mask = Array2::zeros((sequences.len(), width));
        for (row, tokens) in sequences.iter().enumerate() {
            for (col, &token) in tokens.as_ref().iter().enumerate() {
                input_ids[[row, col]] = i64::from(token);
                attention_mask[[row, col]] = 1;
            }
        }
        Self {
            input_ids,
            attention_mask,
            lengths: sequences.iter().map(|s| s.as_ref().len()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Tokens in the batch that are not padding.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// The batch's rows `times` times over, one copy after another: one pass that
    /// runs several variants of a graph, each on its own copy.
    pub fn repeated(&self, times: usize) -> Self {
        let copies = |a: &Array2<i64>| {
            let views = vec![a.view(); times];
            ndarray::concatenate(ndarray::Axis(0), &views).expect("copies of one shape")
        };
        Self {
            input_ids: copies(&self.input_ids),
            attention_mask: copies(&self.attention_mask),
            lengths: self.lengths.repeat(times),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_batch_holds_its_rows_once_per_copy() {
        let batch = Batch::right_padded(&[vec![5, 6, 7], vec![8]], 0).repeated(3);
        assert_eq!(batch.lengths, [3, 1, 3, 1, 3, 1]);
        assert_eq!(batch.input_ids.row(4).to_vec(), vec![5, 6, 7]);
        assert_eq!(batch.attention_mask.row(5).to_vec(), vec![1, 0, 0]);
    }

    #[test]
    fn pads_on_the_right_and_masks_the_padding() {
        let batch = Batch::right_padded(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(batch.input_ids.row(1).to_vec(), vec![8, 0, 0]);
        assert_eq!(batch.attention_mask.row(1).to_vec(), vec![1, 0, 0]);
        assert_eq!(batch.attention_mask.row(0).to_vec(), vec![1, 1, 1]);
        assert_eq!(batch.lengths, vec![3, 1]);
    }
}
