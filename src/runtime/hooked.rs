//! A model folder loaded for running: tokenizer, manifest, and one ONNX Runtime session
//! per set of requested outputs (compiled and pruned on first use, then reused).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::{Array3, ArrayD, Ix3};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use prost::Message;
use tokenizers::Tokenizer;

use super::shared::SharedWeights;
use super::{Batch, Runtime, RuntimeError};
use crate::compile;
use crate::manifest::{ATTENTION_MASK, GRAPH_FILE, INPUT_IDS, LOGITS, Manifest, TOKENIZER_FILE};
use crate::onnx::ModelProto;

/// ONNX Runtime's session option that says where external weights live when the graph
/// itself is handed over from memory.
const EXTERNAL_DATA_FOLDER: &str = "session.model_external_initializers_file_folder_path";

/// ONNX Runtime's session option that turns off pre-packing weights for its kernels.
const DISABLE_PREPACKING: &str = "session.disable_prepacking";

/// Output-keyed sessions of the clean model kept at once (see `clean_used`).
const CLEAN_SESSIONS: usize = 4;

/// A pass of at most this many tokens (rows times positions) is small: its matrix
/// products read each weight matrix for few rows, so packing the weights for the
/// kernels on every call costs as much as the products themselves.
const SMALL_PASS_TOKENS: usize = 64;

/// Small passes a session runs before it is built again with its weights pre-packed.
const SMALL_PASSES_BEFORE_PACKING: u32 = 3;

pub struct HookedModel<'r> {
    runtime: &'r Runtime,
    dir: PathBuf,
    pub manifest: Manifest,
    pub tokenizer: Tokenizer,
    graph: ModelProto,
    /// Keyed by the requested outputs, or by a caller's name for a compiled variant.
    sessions: HashMap<String, Built>,
    /// The output-keyed sessions of the clean model, least recently used first: at most
    /// [`CLEAN_SESSIONS`] are kept, since each holds its own graph and buffers and a
    /// sweep reading one hook per pass would otherwise keep one per hook.
    clean_used: std::collections::VecDeque<String>,
    /// The weights, read once and handed to every session, with the copies ONNX Runtime
    /// pre-packs for its kernels (for packed sessions) shared too: a variant's session
    /// adds its own nodes, not another copy of the model.
    shared: std::cell::OnceCell<SharedWeights>,
    /// Weights the graph reads transposed, made shared initializers at load (see
    /// [`super::shared::fold_weight_transposes`]).
    transposed: Vec<super::shared::Transposed>,
    /// Real (unpadded) tokens run through any graph so far.
    tokens_run: usize,
    sessions_built: std::cell::Cell<usize>,
    /// Sessions built again with packed weights (not counted in `sessions_built`).
    sessions_packed: std::cell::Cell<usize>,
}

/// When a session's weights are pre-packed for ONNX Runtime's matrix kernels: a
/// packed copy of the weights (as large as they are, shared by every packed session)
/// saves re-packing them on each call, which pays only for small passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// From the start.
    Now,
    /// Once the session has run a few small passes (see [`SMALL_PASS_TOKENS`]).
    WhenHot,
}

/// A session, and until it is packed, the graph to build it again packed from.
struct Built {
    session: Session,
    /// `None` once packed (it is never rebuilt again).
    unpacked_graph: Option<ModelProto>,
    small_passes: u32,
}

/// What one forward pass returned.
#[derive(Debug, Default, Clone)]
pub struct Forward {
    /// `[batch, pos, d_vocab]`, when asked for.
    pub logits: Option<Array3<f32>>,
    pub hooks: BTreeMap<String, ArrayD<f32>>,
}

impl Forward {
    /// Batch rows `rows` of every output (every output has the batch axis first): one
    /// variant's share of a pass that ran several as rows.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Forward {
        let axis = ndarray::Axis(0);
        let slice = ndarray::Slice::from(rows);
        Forward {
            logits: self
                .logits
                .as_ref()
                .map(|l| l.slice_axis(axis, slice).to_owned()),
            hooks: self
                .hooks
                .iter()
                .map(|(name, value)| (name.clone(), value.slice_axis(axis, slice).to_owned()))
                .collect(),
        }
    }

    /// Bytes its outputs hold.
    pub fn bytes(&self) -> usize {
        let floats = self.logits.as_ref().map_or(0, |l| l.len())
            + self.hooks.values().map(|v| v.len()).sum::<usize>();
        floats * std::mem::size_of::<f32>()
    }
}

impl<'r> HookedModel<'r> {
    pub fn load(runtime: &'r Runtime, dir: &Path) -> Result<Self, RuntimeError> {
        let manifest = Manifest::read(dir)?;
        manifest.verify_weights(dir)?;
        let graph_path = dir.join(GRAPH_FILE);
        let bytes = crate::files::read(&graph_path).map_err(|e| RuntimeError::ModelFile {
            path: graph_path.clone(),
            message: e.to_string(),
        })?;
        let mut graph =
            ModelProto::decode(bytes.as_slice()).map_err(|e| RuntimeError::ModelFile {
                path: graph_path,
                message: format!("not an ONNX model ({e}); export the model again"),
            })?;
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer = crate::files::ensure_regular(&tokenizer_path)
            .map_err(|e| e.to_string())
            .and_then(|()| Tokenizer::from_file(&tokenizer_path).map_err(|e| e.to_string()))
            .map_err(|message| RuntimeError::ModelFile {
                path: tokenizer_path.clone(),
                message,
            })?;
        super::shared::drop_weight_casts(&mut graph);
        let transposed = super::shared::fold_weight_transposes(&mut graph);
        Ok(Self {
            runtime,
            dir: dir.to_owned(),
            manifest,
            tokenizer,
            graph,
            sessions: HashMap::new(),
            clean_used: std::collections::VecDeque::new(),
            shared: std::cell::OnceCell::new(),
            transposed,
            tokens_run: 0,
            sessions_built: std::cell::Cell::new(0),
            sessions_packed: std::cell::Cell::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of `text`, with BOS in front when `prepend_bos` and the model has one.
    pub fn to_tokens(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>, RuntimeError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        let mut tokens = Vec::with_capacity(encoding.len() + 1);
        if prepend_bos && let Some(bos) = self.manifest.special_tokens.bos {
            tokens.push(bos);
        }
        tokens.extend_from_slice(encoding.get_ids());
        Ok(tokens)
    }

    /// Each token as the text it stands for (TransformerLens' `to_str_tokens`).
    pub fn to_str_tokens(&self, tokens: &[u32]) -> Result<Vec<String>, RuntimeError> {
        tokens
            .iter()
            .map(|&t| {
                self.tokenizer
                    .decode(&[t], false)
                    .map_err(|e| RuntimeError::Tokenizer(e.to_string()))
            })
            .collect()
    }

    pub fn to_string(&self, tokens: &[u32]) -> Result<String, RuntimeError> {
        self.tokenizer
            .decode(tokens, false)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }

    /// Pads `sequences` into a batch, refusing any longer than the model's context.
    pub fn batch<S: AsRef<[u32]>>(&self, sequences: &[S]) -> Result<Batch, RuntimeError> {
        let n_ctx = self.manifest.config.n_ctx;
        for tokens in sequences {
            let tokens = tokens.as_ref();
            if tokens.is_empty() {
                return Err(RuntimeError::EmptyPrompt);
            }
            if tokens.len() > n_ctx {
                return Err(RuntimeError::TooLong {
                    tokens: tokens.len(),
                    n_ctx,
                });
            }
        }
        Ok(Batch::right_padded(
            sequences,
            self.manifest.special_tokens.pad,
        ))
    }

    /// Runs the model on `batch`, returning the logits (when `logits`) and the named
    /// hook tensors. The graph is pruned to what is asked for.
    pub fn forward(
        &mut self,
        batch: &Batch,
        logits: bool,
        hooks: &[&str],
    ) -> Result<Forward, RuntimeError> {
        let mut outputs: Vec<&str> = Vec::with_capacity(hooks.len() + 1);
        if logits {
            outputs.push(LOGITS);
        }
        outputs.extend_from_slice(hooks);
        let key = outputs.join("\n");
        self.clean_used.retain(|used| *used != key);
        if !self.sessions.contains_key(&key) {
            if self.clean_used.len() >= CLEAN_SESSIONS
                && let Some(oldest) = self.clean_used.pop_front()
            {
                self.sessions.remove(&oldest);
            }
            let compiled = compile::select_outputs(&self.graph, &outputs)?;
            let built = self.build(compiled, Packing::WhenHot)?;
            self.sessions.insert(key.clone(), built);
        }
        self.clean_used.push_back(key.clone());
        self.run(&key, batch, &[]).expect("inserted above")
    }

    /// Runs a graph compiled from this model's `model.onnx` (a variant: pruned, with
    /// interventions) and returns all its outputs. Sessions are cached under `key`, so
    /// a caller running the same variant again passes the same key.
    pub fn forward_graph(
        &mut self,
        key: &str,
        graph: &ModelProto,
        batch: &Batch,
    ) -> Result<Forward, RuntimeError> {
        self.forward_graph_fed(key, graph, batch, &[])
    }

    /// [`Self::forward_graph`] for a graph with inputs of its own besides the tokens (a
    /// patched hook's value), fed from `extra`.
    pub fn forward_graph_fed(
        &mut self,
        key: &str,
        graph: &ModelProto,
        batch: &Batch,
        extra: &[(String, ArrayD<f32>)],
    ) -> Result<Forward, RuntimeError> {
        self.prepare_graph(key, graph)?;
        self.run(&format!("graph:{key}"), batch, extra)
            .expect("prepared above")
    }

    /// Builds the session of `graph` under `key`, as [`Self::forward_graph`] does on
    /// first use, without running it (nothing when there is one already).
    pub fn prepare_graph(&mut self, key: &str, graph: &ModelProto) -> Result<(), RuntimeError> {
        self.prepare_graph_packed(key, graph, Packing::WhenHot)
    }

    /// [`Self::prepare_graph`], saying when the session's weights are pre-packed: a
    /// caller that will run many one-token passes (generation) packs them from the start.
    pub fn prepare_graph_packed(
        &mut self,
        key: &str,
        graph: &ModelProto,
        packing: Packing,
    ) -> Result<(), RuntimeError> {
        let key = format!("graph:{key}");
        if !self.sessions.contains_key(&key) {
            let built = self.build(graph.clone(), packing)?;
            self.sessions.insert(key, built);
        }
        Ok(())
    }

    /// Whether a session was built under `key` (see [`Self::prepare_graph`]).
    pub fn has_graph(&self, key: &str) -> bool {
        self.sessions.contains_key(&format!("graph:{key}"))
    }

    /// A weight by its TransformerLens name, laid out `[in, out]`.
    pub fn weight(&self, name: &str) -> Result<ndarray::ArrayD<f32>, RuntimeError> {
        super::read_weight(&self.dir, &self.graph, name, self.manifest.weight_storage)
    }

    /// Runs `batch` on the session a previous [`Self::forward_graph`] built under `key`,
    /// or `None` when there is none yet: callers compile a variant's graph only then.
    pub fn forward_cached(
        &mut self,
        key: &str,
        batch: &Batch,
        extra: &[(String, ArrayD<f32>)],
    ) -> Option<Result<Forward, RuntimeError>> {
        self.run(&format!("graph:{key}"), batch, extra)
    }

    /// Runs `batch` on the session cached under `key` (`None` when there is none),
    /// counting its tokens.
    fn run(
        &mut self,
        key: &str,
        batch: &Batch,
        extra: &[(String, ArrayD<f32>)],
    ) -> Option<Result<Forward, RuntimeError>> {
        let built = self.sessions.get_mut(key)?;
        self.tokens_run += batch.real_tokens();
        if built.unpacked_graph.is_some() && batch.input_ids.len() <= SMALL_PASS_TOKENS {
            built.small_passes += 1;
            if built.small_passes >= SMALL_PASSES_BEFORE_PACKING
                && let Some(graph) = built.unpacked_graph.take()
            {
                self.sessions_packed.set(self.sessions_packed.get() + 1);
                match self.build_session(&graph, true) {
                    Ok(session) => self.sessions.get_mut(key)?.session = session,
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        let built = self.sessions.get_mut(key)?;
        Some(run_session(&mut built.session, batch, extra))
    }

    /// Drops the sessions of the graphs cached under `name|outputs` keys (how callers
    /// key [`Self::forward_graph`] for a variant or an edited graph), releasing their
    /// graphs and buffers.
    pub fn forget_graphs(&mut self, name: &str) {
        let prefix = format!("graph:{name}|");
        self.sessions.retain(|key, _| !key.starts_with(&prefix));
    }

    /// Drops the session built under exactly `key` (see [`Self::prepare_graph`]).
    pub fn forget_graph(&mut self, key: &str) {
        self.sessions.remove(&format!("graph:{key}"));
    }

    /// Sessions built so far (each compiles a graph): what sharing graphs saves. A
    /// session built again with packed weights is counted in [`Self::sessions_packed`].
    pub fn sessions_built(&self) -> usize {
        self.sessions_built.get()
    }

    /// Sessions built again with their weights pre-packed, having run small passes.
    pub fn sessions_packed(&self) -> usize {
        self.sessions_packed.get()
    }

    /// Real tokens run through the model so far, over every graph: the work a run did.
    pub fn tokens_run(&self) -> usize {
        self.tokens_run
    }

    /// The exported graph, for passes that compile variants from it.
    pub fn graph(&self) -> &ModelProto {
        &self.graph
    }

    /// `graph` with its products by weights stored as 4-bit blocks (a GGUF's Q4_0, Q4_1
    /// and Q4_K weights) run on those blocks: for sessions that run one token at a time,
    /// whose time goes to reading the weights. On the CPU only, where the kernel was
    /// measured.
    pub fn with_four_bit_weights(&self, graph: ModelProto) -> Result<ModelProto, RuntimeError> {
        if self.runtime.device != super::Device::Cpu {
            return Ok(graph);
        }
        let four_bit = self.shared_weights()?.four_bit()?;
        if four_bit.layouts.is_empty() {
            return Ok(graph);
        }
        Ok(compile::four_bit::with_four_bit_weights(
            &graph,
            &four_bit.layouts,
        )?)
    }

    /// The weights whose values are 4-bit blocks (see [`Self::with_four_bit_weights`]),
    /// by name, sorted.
    pub fn four_bit_weights(&self) -> Result<Vec<String>, RuntimeError> {
        let mut names: Vec<String> = self
            .shared_weights()?
            .four_bit()?
            .layouts
            .keys()
            .cloned()
            .collect();
        names.sort();
        Ok(names)
    }

    /// [`SharedWeights`], read on first use.
    fn shared_weights(&self) -> Result<&SharedWeights, RuntimeError> {
        if let Some(shared) = self.shared.get() {
            return Ok(shared);
        }
        let shared = SharedWeights::read(
            &self.dir,
            &self.graph,
            &self.transposed,
            self.manifest.weight_storage,
        )?;
        Ok(self.shared.get_or_init(|| shared))
    }

    fn build(&self, graph: ModelProto, packing: Packing) -> Result<Built, RuntimeError> {
        let packed = packing == Packing::Now;
        self.sessions_built.set(self.sessions_built.get() + 1);
        Ok(Built {
            session: self.build_session(&graph, packed)?,
            unpacked_graph: (!packed).then_some(graph),
            small_passes: 0,
        })
    }

    fn build_session(&self, graph: &ModelProto, packed: bool) -> Result<Session, RuntimeError> {
        let threads = self.runtime.kernel_threads();
        let builder_error =
            |e: ort::Error<ort::session::builder::SessionBuilder>| RuntimeError::Ort {
                doing: "configuring a session".into(),
                message: e.to_string(),
            };
        let mut builder = Session::builder(&self.runtime.environment)
            .map_err(RuntimeError::ort("creating a session"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(builder_error)?
            .with_intra_threads(threads)
            .map_err(builder_error)?
            .with_config_entry(EXTERNAL_DATA_FOLDER, self.dir.to_string_lossy())
            .map_err(builder_error)?
            .with_execution_providers(self.runtime.execution_providers()?)
            .map_err(builder_error)?;
        let shared = self.shared_weights()?;
        builder = if packed {
            builder.with_prepacked_weights(&shared.prepacked)
        } else {
            builder.with_config_entry(DISABLE_PREPACKING, "1")
        }
        .map_err(builder_error)?;
        // Each of the graph's weights (a pruned graph keeps fewer) from the shared copy.
        for name in graph
            .graph
            .iter()
            .flat_map(|g| &g.initializer)
            .filter_map(|t| t.name.as_ref())
        {
            if let Some(value) = shared.value(name) {
                builder = builder
                    .with_initializer(name, value.clone())
                    .map_err(builder_error)?;
            }
        }
        builder
            .commit_from_memory(&graph.encode_to_vec())
            .map_err(RuntimeError::ort(format!(
                "loading the model in {}",
                self.dir.display()
            )))
    }
}

/// Feeds the inputs the session's graph still has (pruning may drop the mask, or a patched
/// hook's input) and reads every output as f32.
fn run_session(
    session: &mut Session,
    batch: &Batch,
    extra: &[(String, ArrayD<f32>)],
) -> Result<Forward, RuntimeError> {
    let wanted_inputs: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_owned())
        .collect();
    let outputs: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_owned())
        .collect();
    let ids = TensorRef::from_array_view(&batch.input_ids)
        .map_err(RuntimeError::ort("preparing input_ids"))?;
    let mask = TensorRef::from_array_view(&batch.attention_mask)
        .map_err(RuntimeError::ort("preparing attention_mask"))?;
    let mut inputs = ort::inputs![INPUT_IDS => ids, ATTENTION_MASK => mask];
    for (name, value) in extra {
        let value = TensorRef::from_array_view(value.view())
            .map_err(RuntimeError::ort(format!("preparing input `{name}`")))?;
        inputs.push((name.clone().into(), value.into()));
    }
    inputs.retain(|(name, _)| wanted_inputs.iter().any(|w| w == name));
    let results = session
        .run(inputs)
        .map_err(RuntimeError::ort("running the model"))?;

    let mut forward = Forward::default();
    let perturbation = test_perturbation();
    for name in &outputs {
        let mut array = results[name.as_str()]
            .try_extract_array::<f32>()
            .map_err(RuntimeError::ort(format!("reading output `{name}`")))?
            .to_owned();
        if let Some(relative) = perturbation {
            perturb(&mut array, relative);
        }
        if name == LOGITS {
            forward.logits =
                Some(
                    array
                        .into_dimensionality::<Ix3>()
                        .map_err(|e| RuntimeError::Ort {
                            doing: "reading the logits".into(),
                            message: e.to_string(),
                        })?,
                );
        } else {
            forward.hooks.insert(name.clone(), array);
        }
    }
    Ok(forward)
}

/// For tests only: `QEXP_TEST_PERTURB_OUTPUTS=1e-6` scales every value the model outputs
/// by `1 + relative * u`, `u` in [-1, 1] from a hash of its position, standing in for
/// another CPU's kernels (which differ in the last digits). Reproducibility tests use it
/// to show that such noise never reaches a report.
fn test_perturbation() -> Option<f32> {
    static RELATIVE: std::sync::OnceLock<Option<f32>> = std::sync::OnceLock::new();
    *RELATIVE.get_or_init(|| {
        std::env::var("QEXP_TEST_PERTURB_OUTPUTS")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

fn perturb(array: &mut ndarray::ArrayD<f32>, relative: f32) {
    for (index, value) in array.iter_mut().enumerate() {
        // splitmix64 of the index: a fixed, well-spread sign and size per element.
        let mut z = (index as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
        *value *= 1.0 + relative * u;
    }
}
