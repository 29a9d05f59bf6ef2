//! `sae_metrics(sae, dataset; baseline)`: SAELens' quality metrics over a dataset: L0,
//! MSE, explained variance, CE loss recovered and KL score (against `baseline`, or
//! zero-ablating the SAE's hook), dead and dense (firing on over 10% of tokens) feature
//! fractions.

use ndarray::Axis;

use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::compile::Intervention;
use crate::compile::interventions::Zero;
use crate::hooks::LOGITS;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::runtime::NextTokenLogits;
use crate::session::{Failure, SaeSplice, Session, length_sorted_chunks};

pub const SPEC: Builtin = Builtin {
    name: "sae_metrics",
    produces: Produces::Table,
    summary: "L0, MSE, explained variance, CE loss recovered, KL, dead/dense fractions",
    params: &[
        req("sae", Type::Sae),
        req("dataset", Type::Dataset),
        opt("baseline", Type::Variant),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct SaeMetrics {
    pub sae: String,
    pub dataset: String,
    /// The variant CE loss recovered and the KL score compare against; zero-ablating the
    /// SAE's hook when absent.
    pub baseline: Option<String>,
}

/// What `sae_metrics` compares a splice against.
enum Baseline {
    Variant(String),
    Zero(Intervention),
}

impl Measure for SaeMetrics {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            sae: args.name("sae")?,
            dataset: args.name("dataset")?,
            baseline: args.opt_name("baseline")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::Number;
        columns(&[
            ("l0", Number),
            ("mse", Number),
            ("explained_variance", Number),
            ("ce_loss_recovered", Number),
            ("kl_score", Number),
            ("dead_fraction", Number),
            ("dense_fraction", Number),
            ("clean_loss", Number),
            ("spliced_loss", Number),
            ("baseline_loss", Number),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads
            .add(Graph::Clean, plan.sae_hook(&self.sae))
            .add(Graph::Clean, LOGITS)
            .add(Graph::Spliced(self.sae.clone()), LOGITS);
        match &self.baseline {
            Some(variant) => reads.add(Graph::Variant(variant.clone()), LOGITS),
            None => reads.add(Graph::Ablated(self.sae.clone()), LOGITS),
        };
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let dataset = &self.dataset;
        let SaeSplice {
            sae,
            target,
            edit: splice,
            graph: splice_graph,
        } = s.sae_splice(&self.sae)?;
        let (x, _) = s.hook_activations(&target, dataset, None)?;
        let acts = sae.encode(x.view());
        let recon = sae.reconstruct(x.view(), acts.view());
        let n = x.nrows() as f64;
        let squared_error = (&recon - &x).mapv(|e| f64::from(e * e)).sum();
        let centred = &x - &x.mean_axis(Axis(0)).ok_or("no activations")?;
        let variance = centred.mapv(|v| f64::from(v * v)).sum();
        let firing: Vec<usize> = (0..sae.d_sae)
            .map(|f| acts.column(f).iter().filter(|&&a| a > 0.0).count())
            .collect();

        let baseline = match &self.baseline {
            Some(variant) => Baseline::Variant(variant.clone()),
            None => Baseline::Zero(Intervention::Zero(Zero {
                target: target.clone(),
            })),
        };
        let sequences = s.dataset(dataset)?;
        let (
            mut clean_loss,
            mut spliced_loss,
            mut baseline_loss,
            mut kl_spliced,
            mut kl_baseline,
            mut tokens,
        ) = (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
        // Sums over tokens: prompts of similar length batch together to pad less.
        for prompts in length_sorted_chunks(&sequences, s.batch_size()) {
            let batch = s.batch_of(&sequences, &prompts)?;
            let clean = s
                .forward(None, &batch, &[LOGITS])?
                .logits
                .expect("logits requested");
            let spliced = s
                .forward_edits(&splice_graph, std::slice::from_ref(&splice), &batch, &[LOGITS])?
                .logits
                .expect("logits");
            let base = match &baseline {
                Baseline::Variant(variant) => s.forward(Some(variant), &batch, &[LOGITS])?,
                Baseline::Zero(edit) => s.forward_edits(
                    &Graph::Ablated(self.sae.clone()),
                    std::slice::from_ref(edit),
                    &batch,
                    &[LOGITS],
                )?,
            }
            .logits
            .expect("logits requested");
            let (clean, spliced, base) = (
                NextTokenLogits::new(&clean, &batch),
                NextTokenLogits::new(&spliced, &batch),
                NextTokenLogits::new(&base, &batch),
            );
            let sum = |v: Vec<Vec<f32>>| v.iter().flatten().map(|&l| f64::from(l)).sum::<f64>();
            clean_loss += sum(clean.losses());
            spliced_loss += sum(spliced.losses());
            baseline_loss += sum(base.losses());
            let sum = |v: Vec<Vec<f64>>| v.iter().flatten().sum::<f64>();
            kl_spliced += sum(clean.kl_divergences(&spliced));
            kl_baseline += sum(clean.kl_divergences(&base));
            tokens += batch
                .lengths
                .iter()
                .map(|l| l.saturating_sub(1))
                .sum::<usize>();
        }
        let per = |x: f64| x / tokens.max(1) as f64;
        let mut table = table(name, &self.columns());
        table.rows.push(vec![
            Cell::Number(acts.iter().filter(|&&a| a > 0.0).count() as f64 / n),
            Cell::Number(squared_error / n),
            Cell::Number(1.0 - squared_error / variance.max(f64::MIN_POSITIVE)),
            Cell::Number((baseline_loss - spliced_loss) / (baseline_loss - clean_loss)),
            Cell::Number(1.0 - kl_spliced / kl_baseline.max(f64::MIN_POSITIVE)),
            Cell::Number(firing.iter().filter(|&&c| c == 0).count() as f64 / sae.d_sae as f64),
            Cell::Number(
                firing.iter().filter(|&&c| c as f64 > 0.1 * n).count() as f64 / sae.d_sae as f64,
            ),
            Cell::Number(per(clean_loss)),
            Cell::Number(per(spliced_loss)),
            Cell::Number(per(baseline_loss)),
        ]);
        Ok(table)
    }
}
