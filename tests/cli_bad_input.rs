//! Bad input through the real binary: one clear line on stderr, a non-zero exit code,
//! no panic, and nothing half-written.

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::fixture;

fn qexp() -> Command {
    Command::cargo_bin("qexp").unwrap()
}

/// Runs qexp, expects failure, and returns stderr.
fn fails(args: &[&str]) -> String {
    let output = qexp().args(args).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn export_fails(checkpoint: &Path) -> String {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("model");
    let stderr = fails(&[
        "export",
        checkpoint.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
        "--allow-outside-project",
    ]);
    assert!(!target.exists(), "no model folder after a failed export");
    let leftovers: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "no staging folder left behind: {leftovers:?}"
    );
    stderr
}

#[test]
fn truncated_gguf_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny_llama/model.gguf")).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let stderr = export_fails(&truncated);
    assert!(stderr.contains("truncated.gguf"), "{stderr}");
    assert!(stderr.contains("runs past the end of the file"), "{stderr}");

    std::fs::write(&truncated, &bytes[..100]).unwrap();
    let stderr = export_fails(&truncated);
    assert!(stderr.contains("header ends early"), "{stderr}");
}

#[test]
fn unsupported_quantization_is_named() {
    // A GGUF with no metadata and one IQ4_XS (type 23) tensor of 256 values.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    let name = b"blk.0.attn_q.weight";
    bytes.extend((name.len() as u64).to_le_bytes());
    bytes.extend(name);
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(256u64.to_le_bytes());
    bytes.extend(23u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.resize(bytes.len().next_multiple_of(32) + 136, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq4_xs.gguf");
    std::fs::write(&path, bytes).unwrap();
    let stderr = export_fails(&path);
    assert!(stderr.contains("IQ4_XS"), "{stderr}");
    assert!(
        stderr.contains("qexp reads F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, Q6_K"),
        "{stderr}"
    );
}

#[test]
fn corrupt_safetensors_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("tiny_gpt_neo").join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let stderr = export_fails(dir.path());
    assert!(
        stderr.contains("model.safetensors is not a valid checkpoint"),
        "{stderr}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let stderr = export_fails(dir.path());
    assert!(stderr.contains("config.json"), "{stderr}");
    assert!(
        stderr.contains("model_type `mamba`; qexp exports Hugging Face folders of gemma2, gpt2"),
        "{stderr}"
    );
}

/// A copy of the GGUF fixture `name` with the bytes of `from` replaced by `to` (of the
/// same length, so every offset stays valid).
fn edited_gguf(name: &str, from: &str, to: &str) -> tempfile::TempDir {
    let mut bytes = std::fs::read(fixture(name)).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap();
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.gguf"), bytes).unwrap();
    dir
}

#[test]
fn a_gguf_missing_a_tensor_or_a_key_of_its_family_names_it() {
    let renamed = edited_gguf(
        "tiny_gpt2/model.gguf",
        "blk.1.attn_qkv.weight",
        "blk.1.attn_qkx.weight",
    );
    let stderr = export_fails(&renamed.path().join("model.gguf"));
    assert!(
        stderr.contains("has no tensor `blk.1.attn_qkv.weight`"),
        "{stderr}"
    );

    let unkeyed = edited_gguf(
        "tiny_gemma2_gguf/model.gguf",
        "gemma2.block_count",
        "gemma2.block_cOunt",
    );
    let stderr = export_fails(&unkeyed.path().join("model.gguf"));
    assert!(
        stderr.contains("no metadata key `gemma2.block_count`"),
        "{stderr}"
    );

    let unknown = edited_gguf("tiny_pythia/model.gguf", "gptneox", "gptnexx");
    let stderr = export_fails(&unknown.path().join("model.gguf"));
    assert!(
        stderr.contains("architecture `gptnexx`; qexp reads GGUF files of gemma2, gpt2"),
        "{stderr}"
    );
}

/// A copy of the fixture folder `name` whose config.json `edit` rewrote.
fn edited_hf_folder(name: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

#[test]
fn scaled_rotary_embeddings_are_refused_by_name() {
    let dir = edited_hf_folder("tiny_qwen2", |c| {
        c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 5e5});
    });
    let stderr = export_fails(dir.path());
    assert!(stderr.contains("rotary scaling `yarn`"), "{stderr}");
}

#[test]
fn pickled_weights_say_how_to_convert_them() {
    let dir = edited_hf_folder("tiny_gpt2", |_| {});
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let stderr = export_fails(dir.path());
    assert!(stderr.contains("safe_serialization=True"), "{stderr}");
}

#[test]
fn a_shard_index_naming_a_file_elsewhere_is_refused() {
    let dir = edited_hf_folder("tiny_llama_hf", |_| {});
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace(
        "model-00001-of-00003.safetensors",
        "../elsewhere.safetensors",
    );
    std::fs::write(&index, text).unwrap();
    let stderr = export_fails(dir.path());
    assert!(
        stderr.contains("shard `../elsewhere.safetensors` is not a file name in the folder"),
        "{stderr}"
    );
}

#[test]
fn a_missing_shard_is_named() {
    let dir = edited_hf_folder("tiny_llama_hf", |_| {});
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let stderr = export_fails(dir.path());
    assert!(
        stderr.contains("model-00002-of-00003.safetensors"),
        "{stderr}"
    );
}

#[test]
fn export_refuses_to_overwrite_a_folder_that_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let stderr = fails(&[
        "export",
        fixture("tiny_llama/model.gguf").to_str().unwrap(),
        "-o",
        dir.path().to_str().unwrap(),
        "--allow-outside-project",
    ]);
    assert!(
        stderr.contains("it is not a model folder qexp made"),
        "{stderr}"
    );
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn missing_onnx_runtime_library_says_how_to_fix_it() {
    let output = qexp()
        .args(["generate", "models/none", "hi"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("ORT_DYLIB_PATH points at /nonexistent/libonnxruntime.so"),
        "{stderr}"
    );
    assert!(stderr.contains("bash scripts/setup.sh"), "{stderr}");
}

/// The tiny Llama exported through the binary into a temp folder.
fn export_tiny_llama() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let gguf = fixture("tiny_llama/model.gguf");
    qexp()
        .args([
            "export",
            gguf.to_str().unwrap(),
            "-o",
            model.to_str().unwrap(),
            "--allow-outside-project",
        ])
        .assert()
        .success();
    (dir, model)
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let (_dir, model) = export_tiny_llama();
    let prompt = "x ".repeat(200);
    let stderr = fails(&[
        "generate",
        model.to_str().unwrap(),
        &prompt,
        "--max-new-tokens",
        "1",
    ]);
    assert!(
        stderr.contains("would not fit the model's context of 128"),
        "{stderr}"
    );
    // Generating past the context is refused before the first token, not at the end.
    let stderr = fails(&[
        "generate",
        model.to_str().unwrap(),
        "the",
        "--max-new-tokens",
        "1000000000",
    ]);
    assert!(
        stderr.contains("plus 1000000000 new ones would not fit"),
        "{stderr}"
    );
}

#[test]
fn cuda_without_the_gpu_wheel_is_a_clear_error() {
    let (_dir, model) = export_tiny_llama();
    let output = qexp()
        .args([
            "generate",
            model.to_str().unwrap(),
            "hi",
            "--device",
            "cuda",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    if output.status.success() {
        // A machine with onnxruntime-gpu and a GPU: CUDA really ran.
        return;
    }
    assert!(
        stderr.contains("has no CUDA execution provider"),
        "{stderr}"
    );
    assert!(stderr.contains("pip install onnxruntime-gpu"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_stream_between_parallel_sublayers_is_explained_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let pythia = fixture("tiny_pythia");
    let project = |args: &[&str]| qexp().current_dir(dir.path()).args(args).output().unwrap();
    assert!(
        project(&["export", pythia.to_str().unwrap(), "-o", "models/pythia"])
            .status
            .success()
    );
    std::fs::write(
        dir.path().join("e.qexp"),
        "experiment e\nmodel \"models/pythia\"\ndataset d = prompts([\"the cat\"])\n\
         table a = activations(d, blocks.0.hook_resid_mid)\n",
    )
    .unwrap();
    let output = project(&["check", "e.qexp"]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("parallel blocks"), "{stderr}");
}
