//! The tokenizers qexp rebuilds from GGUF vocabularies against llama.cpp's own test
//! cases: real vocabularies (Llama 2's and Phi-3's SentencePiece; GPT-2's, Qwen2's,
//! Llama 3's, StarCoder's, Refact's and MPT's byte-level BPE) with the texts llama.cpp
//! tokenizes them on and the ids it must give (`models/ggml-vocab-*.gguf`, `.inp` and
//! `.out` in llama.cpp's source).
//!
//! The files come from the llama.cpp inside PyPI's `llama-cpp-python` source archive,
//! which scripts/test.sh fetches into `.downloads/llama.cpp-vocab/` (about 22 MB, too
//! large to commit) and then requires this test (`QEXP_REQUIRE_LLAMA_CPP_VOCAB=1`);
//! elsewhere it says it is skipped.

use std::path::PathBuf;

const VOCABULARIES: [&str; 8] = [
    "llama-spm",
    "phi-3",
    "gpt-2",
    "qwen2",
    "llama-bpe",
    "starcoder",
    "refact",
    "mpt",
];
/// llama.cpp's separator between the test texts of one `.inp` file.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn vocabulary_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".downloads/llama.cpp-vocab");
    if dir.join("ggml-vocab-gpt-2.gguf").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("QEXP_REQUIRE_LLAMA_CPP_VOCAB").is_none(),
        "llama.cpp's vocabularies are not in {}; run scripts/test.sh to fetch them",
        dir.display()
    );
    eprintln!(
        "skipped: llama.cpp's vocabularies are not in {}",
        dir.display()
    );
    None
}

#[test]
fn rebuilt_tokenizers_give_llama_cpps_ids_on_its_own_test_texts() {
    let Some(dir) = vocabulary_dir() else {
        return;
    };
    for name in VOCABULARIES {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let (tokenizer, _) = qexp::checkpoint::gguf_tokenizer(&path).unwrap();
        let texts = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        // Each text ends with the separator, the last one too.
        let texts: Vec<&str> = texts
            .strip_suffix(SEPARATOR)
            .unwrap_or(&texts)
            .split(SEPARATOR)
            .collect();
        let expected: Vec<&str> = expected.lines().collect();
        assert!(texts.len() >= 40, "{name}: {} texts", texts.len());
        assert_eq!(
            texts.len(),
            expected.len(),
            "{name}: one line of ids per text"
        );
        for (text, line) in texts.iter().zip(&expected) {
            let want: Vec<u32> = line
                .split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect();
            let got = tokenizer.encode(*text, false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{name}: {text:?}");
        }
    }
}
