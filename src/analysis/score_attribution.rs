//! Attribution of one attention score to an SAE's query features. The score from query
//! position `p` to key position `k` is `rot_p(q) · rot_k(k) * attn_scale`, linear in the
//! query; with `q = b_dec + Σ_f a_f W_dec[f] + error`, each feature's share is
//! `rot_p(a_f W_dec[f]) · rot_k(k) * attn_scale`, and the shares, the bias's and the
//! error's sum to the score exactly.

use ndarray::{Array1, ArrayView1, ArrayView2};

/// The rotary embedding at one position, in the rotate-half layout the exported graph
/// uses: `x * cos + rotate_half(x) * sin`, `rotate_half([a, b]) = [-b, a]`.
pub struct Rotation<'a> {
    pub cos: ArrayView1<'a, f32>,
    pub sin: ArrayView1<'a, f32>,
}

impl Rotation<'_> {
    /// Turns the first `cos.len()` dimensions of `x` (all of them but under GPT-NeoX's
    /// partial rotary) and passes the rest through, as the exported graph does.
    pub fn apply(&self, x: ArrayView1<'_, f32>) -> Array1<f32> {
        let width = self.cos.len();
        let half = width / 2;
        Array1::from_shape_fn(x.len(), |i| {
            if i >= width {
                return x[i];
            }
            let rotated_half = if i < half { -x[i + half] } else { x[i - half] };
            x[i] * self.cos[i] + rotated_half * self.sin[i]
        })
    }
}

/// The score contributed by a query-space direction: `rot(direction) · key * attn_scale`,
/// where `key` is the head's key at the key position, already rotated.
pub fn score_of(
    direction: ArrayView1<'_, f32>,
    rotation: Option<&Rotation<'_>>,
    key: ArrayView1<'_, f32>,
    attn_scale: f32,
) -> f64 {
    let rotated = match rotation {
        Some(rotation) => rotation.apply(direction),
        None => direction.to_owned(),
    };
    rotated
        .iter()
        .zip(key)
        .map(|(&q, &k)| f64::from(q) * f64::from(k))
        .sum::<f64>()
        * f64::from(attn_scale)
}

/// Each active feature's share of the score: `(feature, activation, contribution)`, in
/// feature order.
pub fn feature_contributions(
    acts: ArrayView1<'_, f32>,
    w_dec: ArrayView2<'_, f32>,
    rotation: Option<&Rotation<'_>>,
    key: ArrayView1<'_, f32>,
    attn_scale: f32,
) -> Vec<(usize, f32, f64)> {
    acts.iter()
        .enumerate()
        .filter(|(_, a)| **a != 0.0)
        .map(|(f, &a)| {
            let direction = w_dec.row(f).mapv(|w| w * a);
            (f, a, score_of(direction.view(), rotation, key, attn_scale))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn rotating_query_and_key_by_the_same_angle_keeps_their_dot_product() {
        let angle: [f32; 2] = [0.3, 1.1];
        let cos = array![
            angle[0].cos(),
            angle[1].cos(),
            angle[0].cos(),
            angle[1].cos()
        ];
        let sin = array![
            angle[0].sin(),
            angle[1].sin(),
            angle[0].sin(),
            angle[1].sin()
        ];
        let rotation = Rotation {
            cos: cos.view(),
            sin: sin.view(),
        };
        let (q, k) = (
            array![1.0f32, -2.0, 0.5, 3.0],
            array![0.2f32, 1.0, -1.5, 0.7],
        );
        let rotated_k = rotation.apply(k.view());
        let plain = f64::from(q.dot(&k));
        assert!((score_of(q.view(), Some(&rotation), rotated_k.view(), 1.0) - plain).abs() < 1e-5);
    }

    #[test]
    fn a_partial_rotary_turns_its_own_width_and_passes_the_rest_through() {
        // GPT-NeoX: tables two wide on a head four wide turn the pair (x0, x1) only.
        let angle = 0.7f32;
        let (cos, sin) = (
            array![angle.cos(), angle.cos()],
            array![angle.sin(), angle.sin()],
        );
        let rotation = Rotation {
            cos: cos.view(),
            sin: sin.view(),
        };
        let x = array![1.0f32, 2.0, 3.0, 4.0];
        let turned = rotation.apply(x.view());
        let expected = [
            angle.cos() - 2.0 * angle.sin(),
            2.0 * angle.cos() + angle.sin(),
            3.0,
            4.0,
        ];
        for (got, want) in turned.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{turned} vs {expected:?}");
        }
    }

    #[test]
    fn contributions_of_features_sum_to_the_score_of_their_decoded_sum() {
        let w_dec = Array2::from_shape_fn((5, 4), |(f, i)| (f as f32 + 1.0) * (i as f32 - 1.5));
        let acts = array![0.0f32, 2.0, 0.0, -0.5, 1.0];
        let key = array![0.3f32, -0.1, 0.8, 0.05];
        let contributions = feature_contributions(acts.view(), w_dec.view(), None, key.view(), 0.5);
        assert_eq!(
            contributions.iter().map(|c| c.0).collect::<Vec<_>>(),
            [1, 3, 4],
            "only active features"
        );
        let decoded = acts.dot(&w_dec);
        let total = score_of(decoded.view(), None, key.view(), 0.5);
        let sum: f64 = contributions.iter().map(|c| c.2).sum();
        assert!((sum - total).abs() < 1e-5);
    }
}
