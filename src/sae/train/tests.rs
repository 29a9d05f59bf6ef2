use super::*;

/// Activations that are sparse combinations of 8 directions in 16 dimensions.
fn sparse_data(n: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let directions: Array2<f32> =
        Array2::from_shape_fn((8, 16), |_| StandardNormal.sample(&mut rng));
    let mut x = Array2::<f32>::zeros((n, 16));
    for mut row in x.rows_mut() {
        for d in 0..8 {
            let u: f32 = rand::Rng::random(&mut rng);
            if u < 0.2 {
                row.scaled_add(1.0 + u * 5.0, &directions.row(d));
            }
        }
    }
    x
}

fn config(architecture: Architecture) -> TrainConfig {
    TrainConfig {
        d_sae: 32,
        architecture,
        l1_coefficient: 3e-2,
        lr: 1e-2,
        batch_size: 256,
        tokens: 256 * 300,
        seed: 7,
        normalize_activations: false,
        resample_dead: false,
    }
}

#[test]
fn a_standard_sae_learns_to_reconstruct_sparse_data() {
    let x = sparse_data(4096, 1);
    let (sae, summary) = train(x.view(), &config(Architecture::Standard), None, |_| {}).unwrap();
    assert!(summary.explained_variance > 0.9, "{summary:?}");
    assert!(summary.l0 < 16.0, "sparse: {summary:?}");
    let recon = sae.decode(sae.encode(x.view()).view());
    let mse = (&recon - &x).mapv(|e| e * e).sum() / x.nrows() as f32;
    assert!(
        (f64::from(mse) - summary.mse).abs() / summary.mse < 0.5,
        "the trained SAE reconstructs as training measured"
    );
}

#[test]
fn topk_keeps_exactly_k_features() {
    let x = sparse_data(2048, 2);
    let (sae, summary) =
        train(x.view(), &config(Architecture::TopK { k: 4 }), None, |_| {}).unwrap();
    assert!(summary.l0 <= 4.0 + 1e-9, "{summary:?}");
    assert!(summary.explained_variance > 0.7, "{summary:?}");
    assert!(
        sae.encode(x.view())
            .rows()
            .into_iter()
            .all(|r| r.iter().filter(|&&a| a > 0.0).count() <= 4)
    );
}

#[test]
fn the_same_seed_gives_the_same_sae() {
    let x = sparse_data(1024, 3);
    let mut c = config(Architecture::Standard);
    c.tokens = 256 * 20;
    let (a, _) = train(x.view(), &c, None, |_| {}).unwrap();
    let (b, _) = train(x.view(), &c, None, |_| {}).unwrap();
    assert_eq!(a.w_enc, b.w_enc);
    c.seed = 8;
    let (other, _) = train(x.view(), &c, None, |_| {}).unwrap();
    assert_ne!(a.w_enc, other.w_enc);
}

#[test]
fn divergence_is_reported_not_hidden() {
    let x = sparse_data(512, 4).mapv(|v| v * 1e30);
    let mut c = config(Architecture::Standard);
    c.lr = 1e10;
    assert!(matches!(
        train(x.view(), &c, None, |_| {}),
        Err(TrainError::Diverged {
            checkpoint: None,
            ..
        })
    ));
}

#[test]
fn a_run_resumed_from_a_checkpoint_ends_with_the_same_sae() {
    let x = sparse_data(1024, 5);
    let mut c = config(Architecture::Standard);
    c.tokens = 256 * 40;
    c.resample_dead = true;
    let (uninterrupted, _) = train(x.view(), &c, None, |_| {}).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let checkpointing = Checkpointing {
        dir: dir.path().join("checkpoints"),
        every: 15,
        resume: true,
        inputs: "data A".into(),
    };
    // Interrupted after step 31: the checkpoint of step 30 is the last one.
    let mid = checkpointing;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(x.view(), &c, Some(&mid), |p| {
            if p.step == 31 {
                panic!("interrupted");
            }
        })
    }));
    assert!(result.is_err());
    let (resumed, summary) = train(x.view(), &c, Some(&mid), |_| {}).unwrap();
    assert_eq!(summary.resumed_from, 30);
    assert_eq!(resumed.w_enc, uninterrupted.w_enc);
    assert_eq!(resumed.b_dec, uninterrupted.b_dec);

    // Other settings do not resume from it.
    let mut other = c.clone();
    other.lr *= 2.0;
    let refused = train(x.view(), &other, Some(&mid), |_| {});
    assert!(
        matches!(refused, Err(TrainError::Checkpoint { .. })),
        "{refused:?}"
    );
    // Nor do the same settings on other activations.
    let elsewhere = Checkpointing {
        inputs: "data B".into(),
        ..mid.clone()
    };
    let refused = train(x.view(), &c, Some(&elsewhere), |_| {});
    assert!(
        matches!(&refused, Err(TrainError::Checkpoint { message, .. }) if message.contains("data A; now data B")),
        "{refused:?}"
    );
}

#[test]
fn resampled_features_fire_on_the_inputs_they_were_pointed_at() {
    let x = sparse_data(256, 6);
    let mut c = config(Architecture::Standard);
    c.d_sae = 16;
    let mut state = State::new(x.view(), 1.0, &c);
    // Kill features 3 and 7: encoder columns pointing away from everything.
    for f in [3, 7] {
        state.w_enc.column_mut(f).fill(0.0);
        state.b_enc[f] = -100.0;
        state.adam_w_enc.m.column_mut(f).fill(1.0);
    }
    let input = &x - &state.b_dec;
    let recon = (input.dot(&state.w_enc) + &state.b_enc)
        .mapv(|v| v.max(0.0))
        .dot(&state.w_dec)
        + &state.b_dec;
    let error = &recon - &x;
    resample(&mut state, &[3, 7], &x, &error, 1, 10);
    assert_eq!(state.resampled, 2);
    let acts = (input.dot(&state.w_enc) + &state.b_enc).mapv(|v| v.max(0.0));
    for f in [3, 7] {
        let norm = state.w_dec.row(f).dot(&state.w_dec.row(f)).sqrt();
        assert!((norm - DECODER_INIT_NORM).abs() < 1e-5);
        assert!(
            acts.column(f).iter().any(|&a| a > 0.0),
            "feature {f} fires again"
        );
        assert!(state.adam_w_enc.m.column(f).iter().all(|&m| m == 0.0));
        assert_eq!(state.last_fired[f], 11);
    }
}

#[test]
fn normalizing_activations_makes_training_blind_to_their_scale() {
    let x = sparse_data(1024, 7);
    let mut c = config(Architecture::Standard);
    c.tokens = 256 * 30;
    c.normalize_activations = true;
    let (small, _) = train(x.view(), &c, None, |_| {}).unwrap();
    let big_x = &x * 1000.0;
    let (big, _) = train(big_x.view(), &c, None, |_| {}).unwrap();
    let (a, b) = (small.encode(x.view()), big.encode(big_x.view()));
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-3 * scale),
        "the same features at any input scale"
    );
    let recon = big.decode(b.view());
    let relative = (&recon - &big_x).mapv(|e| e * e).sum() / big_x.mapv(|v| v * v).sum();
    assert!(
        relative < 0.5,
        "the folded SAE reconstructs unscaled inputs: {relative}"
    );
}

/// The analytic gradients against central finite differences of the loss, in f64.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut normal = |shape: (usize, usize)| {
        Array2::from_shape_fn(shape, |_| {
            let v: f32 = StandardNormal.sample(&mut rng);
            v
        })
    };
    let (b, d_in, d_sae, l1) = (6, 4, 5, 0.3f32);
    let x = normal((b, d_in));
    let w_enc = normal((d_in, d_sae));
    let w_dec = normal((d_sae, d_in));
    let b_enc = Array1::from_shape_fn(d_sae, |i| 0.1 * i as f32);
    let b_dec = Array1::from_shape_fn(d_in, |i| -0.05 * i as f32);
    let loss =
        |w_enc: &Array2<f32>, b_enc: &Array1<f32>, w_dec: &Array2<f32>, b_dec: &Array1<f32>| {
            let input = (&x - b_dec).mapv(f64::from);
            let pre = input.dot(&w_enc.mapv(f64::from)) + &b_enc.mapv(f64::from);
            let acts = pre.mapv(|v| v.max(0.0));
            let recon = acts.dot(&w_dec.mapv(f64::from)) + &b_dec.mapv(f64::from);
            let mse = (&recon - &x.mapv(f64::from)).mapv(|e| e * e).sum() / b as f64;
            let norms: Array1<f64> = w_dec
                .rows()
                .into_iter()
                .map(|r| f64::from(r.dot(&r)).sqrt())
                .collect();
            mse + f64::from(l1) * (&acts * &norms).sum() / b as f64
        };
    let input = &x - &b_dec;
    let acts = (input.dot(&w_enc) + &b_enc).mapv(|v| v.max(0.0));
    let error = acts.dot(&w_dec) + &b_dec - &x;
    let norms: Array1<f32> = w_dec.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
    let sums = acts.sum_axis(Axis(0));
    let g = gradients(&input, acts, &sums, &error, &w_enc, &w_dec, &norms, l1);
    let h = 1e-2f32;
    let check = |analytic: f32, plus: f64, minus: f64, what: &str| {
        let numeric = (plus - minus) / (2.0 * f64::from(h));
        assert!(
            (f64::from(analytic) - numeric).abs() < 2e-2 * numeric.abs().max(1.0),
            "{what}: analytic {analytic}, numeric {numeric}"
        );
    };
    for i in 0..d_in {
        for f in 0..d_sae {
            let (mut p, mut m) = (w_enc.clone(), w_enc.clone());
            p[[i, f]] += h;
            m[[i, f]] -= h;
            check(
                g.w_enc[[i, f]],
                loss(&p, &b_enc, &w_dec, &b_dec),
                loss(&m, &b_enc, &w_dec, &b_dec),
                "W_enc",
            );
            let (mut p, mut m) = (w_dec.clone(), w_dec.clone());
            p[[f, i]] += h;
            m[[f, i]] -= h;
            check(
                g.w_dec[[f, i]],
                loss(&w_enc, &b_enc, &p, &b_dec),
                loss(&w_enc, &b_enc, &m, &b_dec),
                "W_dec",
            );
        }
        let (mut p, mut m) = (b_dec.clone(), b_dec.clone());
        p[i] += h;
        m[i] -= h;
        check(
            g.b_dec[i],
            loss(&w_enc, &b_enc, &w_dec, &p),
            loss(&w_enc, &b_enc, &w_dec, &m),
            "b_dec",
        );
    }
    for f in 0..d_sae {
        let (mut p, mut m) = (b_enc.clone(), b_enc.clone());
        p[f] += h;
        m[f] -= h;
        check(
            g.b_enc[f],
            loss(&w_enc, &p, &w_dec, &b_dec),
            loss(&w_enc, &m, &w_dec, &b_dec),
            "b_enc",
        );
    }
}

#[test]
fn a_resumed_run_rounds_exactly_as_an_uninterrupted_one_on_uneven_batches() {
    // Many small batches over data that does not divide into them, with wide matrices:
    // any difference in memory layout between a fresh and a resumed state changes the
    // rounding of the matrix products.
    let mut rng = StdRng::seed_from_u64(3);
    let x: Array2<f32> = Array2::from_shape_fn((69, 16), |_| StandardNormal.sample(&mut rng));
    let c = TrainConfig {
        d_sae: 256,
        batch_size: 8,
        tokens: 8 * 3000,
        lr: 3e-4,
        l1_coefficient: 5e-4,
        ..config(Architecture::Standard)
    };
    let (uninterrupted, full_summary) = train(x.view(), &c, None, |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let checkpointing = Checkpointing {
        dir: dir.path().join("c"),
        every: 500,
        resume: true,
        inputs: "data A".into(),
    };
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(x.view(), &c, Some(&checkpointing), |p| {
            if p.step == 2201 {
                panic!("interrupted");
            }
        })
    }));
    assert!(interrupted.is_err());
    let (resumed, summary) = train(x.view(), &c, Some(&checkpointing), |_| {}).unwrap();
    assert_eq!(summary.resumed_from, 2000);
    assert_eq!(resumed.w_enc, uninterrupted.w_enc);
    assert_eq!(resumed.w_dec, uninterrupted.w_dec);
    assert_eq!(resumed.b_enc, uninterrupted.b_enc);
    assert_eq!(summary.mse, full_summary.mse);
}
