//! AST -> checked [`Plan`]: every name resolved, every option typed and in range. Reports
//! all problems at once, sorted by position. Pure: no I/O, no ONNX.

use std::path::PathBuf;

use crate::plan::{ModelSpec, Plan, Step};
use crate::runtime::{Device, Sampling};
use crate::syntax::ast::{File, Opt, Spanned, Statement, Value};
use crate::syntax::{Diagnostic, Span};

/// TransformerLens' `evals.sanity_check` text (the opening of "Zoom In"): a loss under
/// about 5 means the model is sane, over 7 that something is broken.
pub const SANITY_CHECK_TEXT: &str = "Many important transition points in the history of science have been moments when science 'zoomed in.' At these points, we develop a visualization or tool that allows us to see the world in a new level of detail, and a new field of science develops to study the world through this lens.";

pub fn check(file: &File) -> Result<Plan, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut name: Option<Spanned<String>> = None;
    let mut model: Option<(Span, ModelSpec)> = None;
    let mut steps = Vec::new();

    for statement in &file.statements {
        match &statement.node {
            Statement::Experiment { name: n } => {
                if name.is_some() {
                    errors.push(
                        Diagnostic::new(statement.span, "a second `experiment` name")
                            .with_hint("an experiment file names one experiment"),
                    );
                }
                name = Some(n.clone());
            }
            Statement::Model { path, options } => {
                if let Some((first, _)) = &model {
                    errors.push(
                        Diagnostic::new(statement.span, "a second `model`").with_hint(format!(
                            "the model is already set at byte {}; an experiment runs one model",
                            first.start
                        )),
                    );
                    continue;
                }
                let mut opts = Options::new(options, &["device", "batch_size"], &mut errors);
                let device = opts.device("device").unwrap_or_default();
                let batch_size = opts.integer("batch_size", 1, 4096).unwrap_or(8);
                model = Some((
                    statement.span,
                    ModelSpec {
                        path: PathBuf::from(&path.node),
                        device,
                        batch_size,
                    },
                ));
            }
            Statement::SanityCheck { text } => steps.push(Step::SanityCheck {
                text: text
                    .as_ref()
                    .map_or_else(|| SANITY_CHECK_TEXT.to_owned(), |t| t.node.clone()),
            }),
            Statement::Generate { prompt, options } => {
                let mut opts = Options::new(
                    options,
                    &["max_new_tokens", "temperature", "seed"],
                    &mut errors,
                );
                let max_new_tokens = opts.integer("max_new_tokens", 1, 4096).unwrap_or(20);
                let temperature = opts.number("temperature", 0.0, 100.0).unwrap_or(0.0);
                let seed = opts.integer("seed", 0, usize::MAX).unwrap_or(0) as u64;
                if prompt.node.is_empty() {
                    errors.push(
                        Diagnostic::new(prompt.span, "an empty prompt")
                            .with_hint("give the text to continue"),
                    );
                }
                steps.push(Step::Generate {
                    prompt: prompt.node.clone(),
                    max_new_tokens,
                    sampling: if temperature > 0.0 {
                        Sampling::Temperature {
                            temperature: temperature as f32,
                            seed,
                        }
                    } else {
                        Sampling::Greedy
                    },
                });
            }
            Statement::Paragraph { text } => steps.push(Step::Paragraph(text.node.clone())),
        }
    }

    let end = Span::default();
    if name.is_none() {
        errors.push(
            Diagnostic::new(end, "the file names no experiment")
                .with_hint("start it with `experiment my_name`; the name becomes reports/my_name/"),
        );
    }
    if model.is_none() {
        errors.push(
            Diagnostic::new(end, "the file names no model")
                .with_hint("add `model \"models/smollm2-135m\"` (a folder made by `qexp export`)"),
        );
    }
    if let Some(n) = &name
        && !n
            .node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        errors.push(
            Diagnostic::new(n.span, "experiment names become folder names")
                .with_hint("use letters, digits, `_` and `-`"),
        );
    }
    if !errors.is_empty() {
        errors.sort_by_key(|d| d.span);
        return Err(errors);
    }
    Ok(Plan {
        name: name.expect("checked above").node,
        model: model.expect("checked above").1,
        steps,
    })
}

/// Typed access to a statement's options; unknown and repeated names become diagnostics.
struct Options<'a, 'e> {
    options: &'a [Opt],
    errors: &'e mut Vec<Diagnostic>,
}

impl<'a, 'e> Options<'a, 'e> {
    fn new(options: &'a [Opt], known: &[&str], errors: &'e mut Vec<Diagnostic>) -> Self {
        for (i, opt) in options.iter().enumerate() {
            if !known.contains(&opt.name.node.as_str()) {
                let nearest = known
                    .iter()
                    .min_by_key(|k| strsim::damerau_levenshtein(k, &opt.name.node))
                    .expect("every statement knows an option");
                errors.push(
                    Diagnostic::new(opt.name.span, format!("unknown option `{}`", opt.name.node))
                        .with_hint(format!(
                            "did you mean `{nearest}`? options here: {}",
                            known.join(", ")
                        )),
                );
            }
            if options[..i].iter().any(|o| o.name.node == opt.name.node) {
                errors.push(Diagnostic::new(
                    opt.name.span,
                    format!("`{}` is given twice", opt.name.node),
                ));
            }
        }
        Self { options, errors }
    }

    fn get(&self, name: &str) -> Option<&'a Spanned<Value>> {
        self.options
            .iter()
            .find(|o| o.name.node == name)
            .map(|o| &o.value)
    }

    fn number(&mut self, name: &str, min: f64, max: f64) -> Option<f64> {
        let value = self.get(name)?;
        match value.node {
            Value::Number(n) if (min..=max).contains(&n) => Some(n),
            Value::Number(n) => {
                self.errors.push(
                    Diagnostic::new(value.span, format!("`{name}` = {n} is out of range"))
                        .with_hint(format!("use a value from {min} to {max}")),
                );
                None
            }
            ref other => {
                self.errors.push(Diagnostic::new(
                    value.span,
                    format!("`{name}` takes a number, not {}", other.describe()),
                ));
                None
            }
        }
    }

    fn integer(&mut self, name: &str, min: usize, max: usize) -> Option<usize> {
        let span = self.get(name)?.span;
        let n = self.number(name, min as f64, max as f64)?;
        if n.fract() != 0.0 {
            self.errors.push(Diagnostic::new(
                span,
                format!("`{name}` takes a whole number"),
            ));
            return None;
        }
        Some(n as usize)
    }

    fn device(&mut self, name: &str) -> Option<Device> {
        let value = self.get(name)?;
        let device = match &value.node {
            Value::Ident(d) | Value::String(d) => match d.as_str() {
                "cpu" => Some(Device::Cpu),
                "cuda" => Some(Device::Cuda),
                "coreml" => Some(Device::Coreml),
                _ => None,
            },
            Value::Number(_) => None,
        };
        if device.is_none() {
            self.errors.push(
                Diagnostic::new(value.span, "unknown device").with_hint("use cpu, cuda or coreml"),
            );
        }
        device
    }
}
