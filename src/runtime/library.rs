//! Finds and loads the ONNX Runtime shared library, and picks the execution provider.
//!
//! qexp links ONNX Runtime dynamically (ort's `load-dynamic`), because the library comes
//! from the PyPI wheels `onnxruntime` / `onnxruntime-gpu`, which ship it only under a
//! versioned name (`libonnxruntime.so.1.32.0`) that the default lookup never finds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::ExecutionProviderDispatch;

use super::RuntimeError;

pub use crate::device::Device;

/// The loaded library and the chosen device; sessions are built from it.
pub struct Runtime {
    pub(super) environment: Environment,
    pub device: Device,
    pub library: PathBuf,
    /// Threads each session's kernels use; all cores when `None`.
    pub threads: Option<usize>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("device", &self.device)
            .field("library", &self.library)
            .finish()
    }
}

pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";
const FIX: &str = "run `bash scripts/setup.sh` in the qexp folder (it installs the `onnxruntime` wheel into .venv), or set ORT_DYLIB_PATH to a libonnxruntime of version 1.31 or newer";

impl Runtime {
    /// Threads each session's kernels run on: as set, or every core.
    pub fn kernel_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Loads ONNX Runtime. ONNX Runtime allows one environment per process, so the first
    /// call creates it and later calls share it (whatever device each asks for: the
    /// device is chosen per session, not per environment).
    pub fn new(device: Device) -> Result<Self, RuntimeError> {
        static SHARED: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((environment, library)) = shared.as_ref() {
            return Ok(Self {
                environment: environment.clone(),
                device,
                library: library.clone(),
                threads: None,
            });
        }
        let library = locate_library()?;
        let builder = ort::init_from(&library).map_err(|e| RuntimeError::Library {
            message: format!(
                "cannot load ONNX Runtime from {}: {e}; {FIX}",
                library.display()
            ),
        })?;
        let environment = builder
            .with_name("qexp")
            .build()
            .map_err(|e| RuntimeError::Library {
                message: format!(
                    "ONNX Runtime from {} failed to start: {e}",
                    library.display()
                ),
            })?;
        *shared = Some((environment.clone(), library.clone()));
        Ok(Self {
            threads: None,
            environment,
            device,
            library,
        })
    }

    /// The execution providers for this device, checked to exist in the loaded library so
    /// a CPU-only wheel asked for CUDA fails with an instruction instead of silently
    /// running on the CPU.
    pub(super) fn execution_providers(
        &self,
    ) -> Result<Vec<ExecutionProviderDispatch>, RuntimeError> {
        use ort::ep::ExecutionProvider;
        let (name, available, hint) = match self.device {
            // Without the CPU arena: it keeps each session's largest pass allocated for
            // the session's life (a batch's logits alone are hundreds of MB), and a run
            // holds several sessions; freed buffers go back at once instead.
            Device::Cpu => {
                return Ok(vec![
                    ort::ep::CPU::default().with_arena_allocator(false).build(),
                ]);
            }
            Device::Cuda => (
                "CUDA",
                ort::ep::CUDA::is_available(),
                "install the GPU wheel: `.venv/bin/pip install onnxruntime-gpu` (and an NVIDIA driver with CUDA 12)",
            ),
            Device::Coreml => (
                "CoreML",
                ort::ep::CoreML::is_available(),
                "CoreML exists only in ONNX Runtime builds for macOS",
            ),
        };
        match available {
            Ok(true) => {}
            _ => {
                return Err(RuntimeError::Device {
                    message: format!(
                        "the ONNX Runtime at {} has no {name} execution provider; {hint}, or run with `--device cpu`",
                        self.library.display()
                    ),
                });
            }
        }
        Ok(match self.device {
            Device::Cuda => vec![ort::ep::CUDA::default().build().error_on_failure()],
            Device::Coreml => vec![ort::ep::CoreML::default().build().error_on_failure()],
            Device::Cpu => vec![],
        })
    }
}

/// `ORT_DYLIB_PATH` if set; otherwise the newest `libonnxruntime` inside a `.venv` of the
/// working directory, of any folder above it, or of the folders above the qexp binary.
fn locate_library() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(RuntimeError::Library {
            message: format!(
                "{LIBRARY_ENV} points at {}, which is not a file; {FIX}",
                path.display()
            ),
        });
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.insert(
            0,
            PathBuf::from(venv)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        );
    }
    roots
        .iter()
        .find_map(|root| newest_library_in_venv(&root.join(".venv")))
        .ok_or_else(|| RuntimeError::Library {
            message: format!("cannot find the ONNX Runtime library; {FIX}"),
        })
}

fn newest_library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for python in lib.read_dir().ok()?.flatten() {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = capi.read_dir() else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = name.strip_prefix("libonnxruntime.so") {
                let version = version
                    .trim_start_matches('.')
                    .split('.')
                    .filter_map(|p| p.parse().ok())
                    .collect();
                found.push((version, entry.path()));
            } else if name.starts_with("libonnxruntime") && name.ends_with(".dylib") {
                found.push((vec![], entry.path()));
            }
        }
    }
    found.into_iter().max().map(|(_, path)| path)
}
