//! Training checkpoints: the full trainer state written whole, and read back only when
//! it was made from the same settings and inputs, so a resumed run ends with the same
//! SAE as an uninterrupted one.

use super::*;

/// The newest `step_*` folder under `dir` that finished writing (has its state file).
pub(super) fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
                && p.join(STATE_JSON).exists()
        })
        .collect();
    found.sort();
    found.pop()
}

/// Writes `dir/step_<step>`: the SAE as it stands (SAELens layout, loadable on its own)
/// and the trainer's state, built beside its name and swapped in whole; then removes
/// older checkpoints. A state file is still required on resume, so a checkpoint folder
/// from an older qexp that was interrupted mid-write is never resumed from.
pub(super) fn write_checkpoint(
    checkpointing: &Checkpointing,
    state: &State,
    config: &TrainConfig,
    scale: f32,
) -> Result<PathBuf, TrainError> {
    let dir = &checkpointing.dir;
    let path = dir.join(format!("step_{:09}", state.step));
    let failed = |message: String| TrainError::Checkpoint {
        path: path.clone(),
        message,
    };
    // Older checkpoints are deleted below: only ever inside a folder qexp made for them.
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        crate::output::mark(dir, crate::output::Kind::Checkpoints)
            .map_err(|e| failed(e.to_string()))?;
    } else if !crate::output::marked_as(dir, crate::output::Kind::Checkpoints) {
        return Err(failed(format!(
            "{} is not a checkpoint folder qexp made; move it away",
            dir.display()
        )));
    }
    // Built whole beside its final name and swapped in at once: a kill leaves either a
    // complete checkpoint or none.
    let staging = crate::output::Staging::new(&path, crate::output::Kind::Sae)
        .map_err(|e| failed(e.to_string()))?;
    crate::sae::save::write_into(&state.sae(config, scale), staging.path()).map_err(failed)?;
    let as_f32 = |v: &[usize]| {
        ArrayD::from_shape_vec(vec![v.len()], v.iter().map(|&s| s as f32).collect()).expect("1-d")
    };
    let fired: Vec<usize> = state
        .fired_in_tail
        .iter()
        .map(|&f| usize::from(f))
        .collect();
    tensors::write(
        &staging.path().join(STATE_TENSORS),
        &[
            ("W_enc", state.w_enc.clone().into_dyn()),
            ("b_enc", state.b_enc.clone().into_dyn()),
            ("W_dec", state.w_dec.clone().into_dyn()),
            ("b_dec", state.b_dec.clone().into_dyn()),
            ("adam.W_enc.m", state.adam_w_enc.m.clone().into_dyn()),
            ("adam.W_enc.v", state.adam_w_enc.v.clone().into_dyn()),
            ("adam.b_enc.m", state.adam_b_enc.m.clone().into_dyn()),
            ("adam.b_enc.v", state.adam_b_enc.v.clone().into_dyn()),
            ("adam.W_dec.m", state.adam_w_dec.m.clone().into_dyn()),
            ("adam.W_dec.v", state.adam_w_dec.v.clone().into_dyn()),
            ("adam.b_dec.m", state.adam_b_dec.m.clone().into_dyn()),
            ("adam.b_dec.v", state.adam_b_dec.v.clone().into_dyn()),
            ("last_fired", as_f32(&state.last_fired)),
            ("fired_in_tail", as_f32(&fired)),
        ],
    )
    .map_err(failed)?;
    let json = serde_json::json!({
        "step": state.step,
        "config": format!("{config:?}"),
        "inputs": checkpointing.inputs,
        "tail": state.tail,
        "resampled": state.resampled,
    });
    std::fs::write(staging.path().join(STATE_JSON), json.to_string())
        .map_err(|e| failed(e.to_string()))?;
    staging.commit().map_err(|e| failed(e.to_string()))?;
    for entry in std::fs::read_dir(dir)
        .map_err(|e| failed(e.to_string()))?
        .flatten()
    {
        let older = entry.path();
        if older != path
            && older
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
        {
            std::fs::remove_dir_all(&older).map_err(|e| failed(e.to_string()))?;
        }
    }
    Ok(path)
}

pub(super) fn read_checkpoint(
    path: &Path,
    config: &TrainConfig,
    inputs: &str,
) -> Result<State, TrainError> {
    let failed = |message: String| TrainError::Checkpoint {
        path: path.to_owned(),
        message,
    };
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path.join(STATE_JSON)).map_err(|e| failed(e.to_string()))?,
    )
    .map_err(|e| failed(e.to_string()))?;
    let made_with = json["config"].as_str().unwrap_or_default();
    if made_with != format!("{config:?}") {
        return Err(failed(format!(
            "it was made with other settings ({made_with}); delete it, or train with `resume = false`"
        )));
    }
    let made_from = json["inputs"].as_str().unwrap_or("unknown inputs");
    if made_from != inputs {
        return Err(failed(format!(
            "it was trained on other activations ({made_from}; now {inputs}); delete it, or train with `resume = false`"
        )));
    }
    let mut tensors = tensors::read(&path.join(STATE_TENSORS)).map_err(failed)?;
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .ok_or_else(|| failed(format!("no tensor `{name}`")))
    };
    let matrix = |a: ArrayD<f32>| {
        a.into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| failed(e.to_string()))
    };
    let vector = |a: ArrayD<f32>| {
        a.into_dimensionality::<ndarray::Ix1>()
            .map_err(|e| failed(e.to_string()))
    };
    let steps_of = |a: Array1<f32>| a.iter().map(|&s| s as usize).collect::<Vec<_>>();
    let tail: Vec<f64> = json["tail"]
        .as_array()
        .map(|t| t.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    Ok(State {
        w_enc: matrix(take("W_enc")?)?,
        b_enc: vector(take("b_enc")?)?,
        w_dec: matrix(take("W_dec")?)?,
        b_dec: vector(take("b_dec")?)?,
        adam_w_enc: Adam {
            m: matrix(take("adam.W_enc.m")?)?,
            v: matrix(take("adam.W_enc.v")?)?,
        },
        adam_b_enc: Adam {
            m: vector(take("adam.b_enc.m")?)?,
            v: vector(take("adam.b_enc.v")?)?,
        },
        adam_w_dec: Adam {
            m: matrix(take("adam.W_dec.m")?)?,
            v: matrix(take("adam.W_dec.v")?)?,
        },
        adam_b_dec: Adam {
            m: vector(take("adam.b_dec.m")?)?,
            v: vector(take("adam.b_dec.v")?)?,
        },
        step: json["step"].as_u64().unwrap_or(0) as usize,
        last_fired: steps_of(vector(take("last_fired")?)?),
        fired_in_tail: steps_of(vector(take("fired_in_tail")?)?)
            .into_iter()
            .map(|f| f > 0)
            .collect(),
        tail: [0, 1, 2, 3].map(|i| tail.get(i).copied().unwrap_or(0.0)),
        resampled: json["resampled"].as_u64().unwrap_or(0) as usize,
    })
}
