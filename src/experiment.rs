//! An experiment file on disk, read into a checked plan: its source parsed, the facts
//! the checker may not read itself gathered from the files it names (the model's
//! manifest, SAE configs, whether each output folder may be written, the machine's
//! memory), then checked. The CLI's `check`, `plan`, `run` and `sae train` start here.

use std::path::{Path, PathBuf};

use crate::manifest::Manifest;
use crate::output::Scope;
use crate::plan::{Plan, Value};
use crate::syntax::ast::{DeclKind, ExprKind, File, Spanned, Statement};
use crate::{check, report, syntax};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Problems in the experiment file, rendered with their source lines.
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Read(#[from] syntax::SourceError),
    #[error("cannot save to {path}: {why}")]
    Refused { path: String, why: String },
    #[error("{0}")]
    Sae(String),
}

/// Whether a check needs the model's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// A model that cannot be read is an error (what running needs).
    Required,
    /// The file alone is checked; model-dependent checks are skipped without one.
    Optional,
}

/// The experiment at `path` and its source. `reports`: where its report would be
/// written (checked too), or `None` when nothing will be written.
pub fn load(
    path: &Path,
    reports: Option<&Path>,
    scope: &Scope,
    model: Model,
) -> Result<(Plan, String), LoadError> {
    let (file, source) = parse(path)?;
    let mut context = context_for(&file, reports, scope, model);
    let name = path.display().to_string();
    let render = |d: Vec<syntax::Diagnostic>| LoadError::Source(syntax::render(&d, &name, &source));
    let plan = check::check(&file, &context).map_err(render)?;
    // A `save` given through a `let` is known only once checked: verify the plan's own
    // paths, and check again to place any refusal in the source.
    for sae in &plan.saes {
        if let Some(Value::Str(save)) = sae.value.args.get("save") {
            refuse_if_unsafe(&mut context, scope, save);
        }
    }
    if let Some((save, why)) = context.refused_outputs.iter().next() {
        return Err(match check::check(&file, &context) {
            Err(diagnostics) => render(diagnostics),
            Ok(_) => LoadError::Refused {
                path: save.clone(),
                why: why.clone(),
            },
        });
    }
    Ok((plan, source))
}

/// The experiment at `path` parsed (not checked), and its source.
pub fn parse(path: &Path) -> Result<(File, String), LoadError> {
    let source = syntax::read_source(path)?;
    let name = path.display().to_string();
    let file = syntax::parse(&source)
        .map_err(|d| LoadError::Source(syntax::render(&d, &name, &source)))?;
    Ok((file, source))
}

/// `plan` cut down to training one SAE, `name`, and saving it to `out` (by default its
/// `save =` path, else `saes/<name>`): no step runs and no other SAE is saved. Returns
/// where it will be saved.
pub fn only_training(
    plan: &mut Plan,
    name: &str,
    out: Option<PathBuf>,
) -> Result<PathBuf, LoadError> {
    let Some(sae) = plan.saes.iter().find(|s| s.name == name) else {
        let declared: Vec<&str> = plan.saes.iter().map(|s| s.name.as_str()).collect();
        return Err(LoadError::Sae(format!(
            "the experiment declares no SAE `{name}` (it declares: {})",
            if declared.is_empty() {
                "none".to_owned()
            } else {
                declared.join(", ")
            }
        )));
    };
    if sae.value.function != "train" {
        return Err(LoadError::Sae(format!(
            "`{name}` is made with `{}`, not trained",
            sae.value.function
        )));
    }
    let out = out
        .or_else(|| match sae.value.args.get("save") {
            Some(Value::Str(path)) => Some(PathBuf::from(path)),
            _ => None,
        })
        .unwrap_or_else(|| Path::new("saes").join(name));
    plan.steps.clear();
    for other in &mut plan.saes {
        if other.name == name {
            other
                .value
                .args
                .insert("save", Value::Str(out.display().to_string()));
        } else {
            other.value.args.remove("save");
        }
    }
    Ok(out)
}

/// The files a check consults: the model's manifest, every loaded SAE's cfg.json, and
/// the folders the run would write (every `save =` of a `train`, and the report).
fn context_for(file: &File, reports: Option<&Path>, scope: &Scope, model: Model) -> check::Context {
    let mut context = check::Context {
        memory_bytes: crate::machine::total_memory(),
        ..check::Context::default()
    };
    let mut statements: Vec<&Spanned<Statement>> = file.statements.iter().collect();
    while let Some(statement) = statements.pop() {
        match &statement.node {
            Statement::Model { path, .. } => match Manifest::read(Path::new(&path.node)) {
                Ok(manifest) => context.manifest = Some(manifest),
                Err(why) if model == Model::Required => {
                    context.model_unreadable = Some(why.to_string())
                }
                Err(_) => {}
            },
            Statement::Declare {
                kind: DeclKind::Sae,
                value,
                ..
            } => {
                if let ExprKind::Call { function, args } = &value.kind
                    && function.node == "load"
                    && let Some(ExprKind::Str(path)) = args.first().map(|a| &a.value.kind)
                {
                    context
                        .saes
                        .insert(path.clone(), crate::sae::read_shape(Path::new(path)));
                }
                if let ExprKind::Call { function, args } = &value.kind
                    && function.node == "train"
                {
                    for arg in args {
                        if arg.name.as_ref().is_some_and(|n| n.node == "save")
                            && let ExprKind::Str(path) = &arg.value.kind
                        {
                            refuse_if_unsafe(&mut context, scope, path);
                        }
                    }
                }
            }
            Statement::Experiment(name) => {
                if let Some(reports) = reports
                    && let Err(why) = report::check_folder(reports, &name.node, scope)
                {
                    context.refused_report = Some(why.to_string());
                }
            }
            Statement::For { body, .. } => statements.extend(body),
            _ => {}
        }
    }
    context
}

/// Records in `context` why an SAE may not be saved to `save`, if it may not.
fn refuse_if_unsafe(context: &mut check::Context, scope: &Scope, save: &str) {
    if !context.refused_outputs.contains_key(save)
        && let Err(why) = crate::session::check_save_paths(scope, Path::new(save))
    {
        context
            .refused_outputs
            .insert(save.to_owned(), why.to_string());
    }
}
