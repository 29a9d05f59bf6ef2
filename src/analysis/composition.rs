//! TransformerLens' composition scores between every pair of heads in different layers.
//!
//! For an earlier head with OV circuit `W_V1 W_O1` and a later head's circuit `R` (its QK
//! circuit `W_Q2 W_K2^T` for Q-composition, `W_K2 W_Q2^T` for K, `W_V2 W_O2` for V):
//! `score = |W_V1 W_O1 R|_F / (|W_V1 W_O1|_F |R|_F)` (Elhage et al. 2021, as
//! `HookedTransformer.all_composition_scores` computes it). Every Frobenius norm is taken
//! through `d_head x d_head` Gram matrices, never forming a `d_model x d_model` product.

use ndarray::{Array2, ArrayView2, Axis, Ix2, s};

use crate::model::{Normalization, TransformerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Q,
    K,
    V,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub layer1: usize,
    pub head1: usize,
    pub layer2: usize,
    pub head2: usize,
    pub score: f64,
}

/// TransformerLens' weight processing that changes composition scores. `from_pretrained`
/// applies both by default; `center_unembed` and `fold_value_biases` touch no matrix these
/// scores read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processing {
    /// Scale each head's reading weights (W_Q, W_K, W_V) by its layer's norm weight and,
    /// for LayerNorm, centre them over `d_model` (the norm's own centring, folded in).
    pub fold_ln: bool,
    /// Centre each head's writing weights (W_O) over `d_model`. TransformerLens does this
    /// only for LayerNorm models (an RMSNorm does not remove the mean, so centring would
    /// change the model): on RMSNorm models it is a no-op here as there.
    pub center_writing_weights: bool,
}

impl Processing {
    /// What `HookedTransformer.from_pretrained` does by default.
    pub const TRANSFORMER_LENS: Self = Self {
        fold_ln: true,
        center_writing_weights: true,
    };
    /// The weights as the checkpoint stores them.
    pub const NONE: Self = Self {
        fold_ln: false,
        center_writing_weights: false,
    };
}

/// One head's four matrices, `[d_model, d_head]` for q/k/v and `[d_head, d_model]` for o.
struct Head {
    q: Array2<f64>,
    k: Array2<f64>,
    v: Array2<f64>,
    o: Array2<f64>,
}

/// Scores for every pair with `layer1 < layer2` that `wanted(layer1, layer2)` accepts,
/// ordered by layer1, head1, layer2, head2; only the layers those pairs name are read.
/// `weight` returns a weight by name (`blocks.L.attn.W_Q`, `blocks.L.ln1.w`); the weights
/// are first processed as `processing` says, as TransformerLens would leave them.
pub fn composition_scores<E>(
    config: &TransformerConfig,
    mode: Mode,
    processing: Processing,
    wanted: impl Fn(usize, usize) -> bool,
    mut weight: impl FnMut(&str) -> Result<ndarray::ArrayD<f32>, E>,
) -> Result<Vec<Score>, E> {
    let n = config.n_layers;
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|l1| (l1 + 1..n).map(move |l2| (l1, l2)))
        .filter(|&(l1, l2)| wanted(l1, l2))
        .collect();
    let writes: Vec<bool> = (0..n).map(|l| pairs.iter().any(|p| p.0 == l)).collect();
    let reads: Vec<bool> = (0..n).map(|l| pairs.iter().any(|p| p.1 == l)).collect();
    let mut layers = Vec::with_capacity(n);
    for layer in 0..n {
        if !writes[layer] && !reads[layer] {
            layers.push(Vec::new());
            continue;
        }
        let mut matrix = |name: &str| -> Result<Array2<f64>, E> {
            Ok(weight(&format!("blocks.{layer}.{name}"))?
                .into_dimensionality::<Ix2>()
                .expect("attention weights are matrices")
                .mapv(f64::from))
        };
        let (mut w_q, mut w_k, mut w_v, mut w_o) = (
            matrix("attn.W_Q")?,
            matrix("attn.W_K")?,
            matrix("attn.W_V")?,
            matrix("attn.W_O")?,
        );
        let layer_norm = config.normalization == Normalization::LayerNorm;
        if processing.fold_ln {
            let scale = weight(&format!("blocks.{layer}.ln1.w"))?.mapv(f64::from);
            for w in [&mut w_q, &mut w_k, &mut w_v] {
                for (mut row, s) in w.axis_iter_mut(Axis(0)).zip(scale.iter()) {
                    row *= *s;
                }
                if layer_norm {
                    let mean = w.mean_axis(Axis(0)).expect("d_model > 0");
                    *w -= &mean;
                }
            }
        }
        if processing.center_writing_weights && layer_norm {
            // W_O is [n_heads * d_head, d_model]: each row is one output direction.
            let mean = w_o.mean_axis(Axis(1)).expect("d_model > 0");
            w_o -= &mean.insert_axis(Axis(1));
        }
        let d = config.d_head;
        let group = config.gqa_group();
        let heads: Vec<Head> = (0..config.n_heads)
            .map(|h| {
                let kv = h / group;
                Head {
                    q: w_q.slice(s![.., h * d..(h + 1) * d]).to_owned(),
                    k: w_k.slice(s![.., kv * d..(kv + 1) * d]).to_owned(),
                    v: w_v.slice(s![.., kv * d..(kv + 1) * d]).to_owned(),
                    o: w_o.slice(s![h * d..(h + 1) * d, ..]).to_owned(),
                }
            })
            .collect();
        layers.push(heads);
    }

    // Per head: the left factor's Gram matrix (W_V1^T W_V1), and for the right circuit
    // A B (A [d_model, d_head], B [d_head, d_model]): A, and B B^T, and |A B|_F.
    struct Left {
        gram_v: Array2<f64>,
        o: Array2<f64>,
        norm: f64,
    }
    struct Right {
        a: Array2<f64>,
        gram_b: Array2<f64>,
        norm: f64,
    }
    let left: Vec<Vec<Left>> = layers
        .iter()
        .zip(&writes)
        .map(|(heads, &writes)| {
            heads
                .iter()
                .filter(|_| writes)
                .map(|h| {
                    let gram_v = h.v.t().dot(&h.v);
                    let norm = product_norm(gram_v.view(), h.o.dot(&h.o.t()).view());
                    Left {
                        gram_v,
                        o: h.o.clone(),
                        norm,
                    }
                })
                .collect()
        })
        .collect();
    let right: Vec<Vec<Right>> = layers
        .iter()
        .zip(&reads)
        .map(|(heads, &reads)| {
            heads
                .iter()
                .filter(|_| reads)
                .map(|h| {
                    let (a, b) = match mode {
                        Mode::Q => (h.q.clone(), h.k.t().to_owned()),
                        Mode::K => (h.k.clone(), h.q.t().to_owned()),
                        Mode::V => (h.v.clone(), h.o.clone()),
                    };
                    let gram_b = b.dot(&b.t());
                    let norm = product_norm(a.t().dot(&a).view(), gram_b.view());
                    Right { a, gram_b, norm }
                })
                .collect()
        })
        .collect();

    let mut scores = Vec::new();
    for (l1, heads1) in left.iter().enumerate() {
        for (h1, left) in heads1.iter().enumerate() {
            for (l2, heads2) in right.iter().enumerate().skip(l1 + 1) {
                if !wanted(l1, l2) {
                    continue;
                }
                for (h2, right) in heads2.iter().enumerate() {
                    // |W_V1 M B|_F with M = W_O1 A: sum of (G_V M) .* (M G_B).
                    let m = left.o.dot(&right.a);
                    let product = (&left.gram_v.dot(&m) * &m.dot(&right.gram_b))
                        .sum()
                        .max(0.0)
                        .sqrt();
                    scores.push(Score {
                        layer1: l1,
                        head1: h1,
                        layer2: l2,
                        head2: h2,
                        score: product / (left.norm * right.norm),
                    });
                }
            }
        }
    }
    Ok(scores)
}

/// `|A B|_F` from `A^T A` and `B B^T`: the square root of the sum of their elementwise product.
fn product_norm(gram_a: ArrayView2<'_, f64>, gram_b: ArrayView2<'_, f64>) -> f64 {
    (&gram_a * &gram_b).sum().max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use ndarray::ArrayD;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use crate::model::{Architecture, BiasLayout, Mlp, Positional};

    fn config() -> TransformerConfig {
        TransformerConfig {
            architecture: Architecture::Llama,
            n_layers: 2,
            d_model: 8,
            n_heads: 2,
            n_kv_heads: 1,
            d_head: 4,
            d_mlp: 16,
            d_vocab: 10,
            n_ctx: 16,
            normalization: Normalization::RmsNorm,
            norm_eps: 1e-5,
            positional: Positional::Rotary {
                base: 10000.0,
                rotary_dim: None,
                scaling: None,
            },
            mlp: Mlp::GatedSilu,
            attn_scale: 0.5,
            attention_windows: vec![None, None],
            bias: BiasLayout::NONE,
            tied_embeddings: true,
            qk_norm: false,
            parallel_attn_mlp: false,
            embed_scale: None,
            post_norms: false,
            attn_softcap: None,
            final_softcap: None,
        }
    }

    /// Random attention and norm weights for `n_layers` layers of [`config`]'s shape.
    fn random_weights(n_layers: usize, seed: u64) -> HashMap<String, ArrayD<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut random = |shape: &[usize]| {
            ArrayD::from_shape_fn(shape.to_vec(), |_| rng.random_range(-1.0f32..1.0))
        };
        (0..n_layers)
            .flat_map(|l| {
                [
                    (format!("blocks.{l}.attn.W_Q"), random(&[8, 8])),
                    (format!("blocks.{l}.attn.W_K"), random(&[8, 4])),
                    (format!("blocks.{l}.attn.W_V"), random(&[8, 4])),
                    (format!("blocks.{l}.attn.W_O"), random(&[8, 8])),
                    (format!("blocks.{l}.ln1.w"), random(&[8])),
                ]
            })
            .collect()
    }

    #[test]
    fn factored_norms_equal_the_dense_formula() {
        let cfg = config();
        let weights = random_weights(2, 5);
        let get = |name: &str| Ok::<_, ()>(weights[name].clone());
        let scores = composition_scores(&cfg, Mode::Q, Processing::NONE, |_, _| true, get).unwrap();
        assert_eq!(scores.len(), 4);

        // The dense definition for head (0, 1) -> (1, 0).
        let m = |name: &str| {
            weights[name]
                .clone()
                .into_dimensionality::<Ix2>()
                .unwrap()
                .mapv(f64::from)
        };
        let (v1, o1) = (
            m("blocks.0.attn.W_V"),
            m("blocks.0.attn.W_O").slice(s![4..8, ..]).to_owned(),
        );
        let (q2, k2) = (
            m("blocks.1.attn.W_Q").slice(s![.., 0..4]).to_owned(),
            m("blocks.1.attn.W_K"),
        );
        let ov = v1.dot(&o1);
        let qk = q2.dot(&k2.t());
        let norm = |x: &Array2<f64>| x.mapv(|v| v * v).sum().sqrt();
        let dense = norm(&ov.dot(&qk)) / (norm(&ov) * norm(&qk));
        let factored = scores
            .iter()
            .find(|s| (s.head1, s.head2) == (1, 0))
            .unwrap()
            .score;
        assert!((dense - factored).abs() < 1e-12, "{dense} vs {factored}");
    }

    #[test]
    fn only_the_wanted_layer_pairs_are_computed_and_they_equal_the_full_scores() {
        let mut cfg = config();
        cfg.n_layers = 3;
        cfg.attention_windows = vec![None; 3];
        let weights = random_weights(3, 9);
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let get = |name: &str| {
            read.borrow_mut().insert(name.to_owned());
            Ok::<_, ()>(weights[name].clone())
        };
        let all = composition_scores(
            &cfg,
            Mode::K,
            Processing::TRANSFORMER_LENS,
            |_, _| true,
            get,
        )
        .unwrap();
        read.borrow_mut().clear();
        let some = composition_scores(
            &cfg,
            Mode::K,
            Processing::TRANSFORMER_LENS,
            |l1, l2| (l1, l2) == (0, 2),
            get,
        )
        .unwrap();
        let expected: Vec<Score> = all
            .into_iter()
            .filter(|s| (s.layer1, s.layer2) == (0, 2))
            .collect();
        assert_eq!(some, expected);
        assert!(
            read.borrow().iter().all(|w| !w.starts_with("blocks.1.")),
            "layer 1 is not in the wanted pair: {:?}",
            read.borrow()
        );
    }
}
