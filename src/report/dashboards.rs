//! Feature dashboard pages: `dashboards/<name>/index.html` (every feature with its
//! density and strength) and one `feature_<f>.html` per feature (activation histogram,
//! neuron alignment, correlated hook dimensions and features, promoted/suppressed tokens
//! and the logit histogram where defined, top examples and examples by quantile band,
//! each a window of tokens shaded by the feature's activation, with the model's next-token
//! predictions on hover). Self-contained, escaped.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior, context};

use super::ReportError;
use crate::results::{Dashboards, Example, FeatureDashboard, WINDOW};

fn environment() -> Result<Environment<'static>, ReportError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_template("dashboard.css", include_str!("templates/dashboard.css"))?;
    env.add_template(
        "dashboard_index.html",
        include_str!("templates/dashboard_index.html"),
    )?;
    env.add_template(
        "dashboard_feature.html",
        include_str!("templates/dashboard_feature.html"),
    )?;
    env.add_template(
        "dashboard_example.html",
        include_str!("templates/dashboard_example.html"),
    )?;
    Ok(env)
}

/// Writes the pages of `dashboards` under `dir` (the report's `dashboards/<name>`).
pub fn write(dir: &Path, dashboards: &Dashboards) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir)?;
    let env = environment()?;
    let summary: Vec<_> = dashboards
        .features
        .iter()
        .map(|f| {
            context! {
                feature => f.feature,
                density => format!("{:.6}", f.density),
                max => format!("{:.4}", f.max_activation),
                mean => format!("{:.4}", f.mean_activation),
            }
        })
        .collect();
    let common = context! {
        name => dashboards.name,
        sae => dashboards.sae,
        hook => dashboards.hook,
        tokens => dashboards.tokens,
    };
    std::fs::write(
        dir.join("index.html"),
        env.get_template("dashboard_index.html")?
            .render(context! { features => summary, ..common.clone() })?,
    )?;
    let page = env.get_template("dashboard_feature.html")?;
    for feature in &dashboards.features {
        let html =
            page.render(context! { f => feature_context(dashboards, feature)?, ..common.clone() })?;
        std::fs::write(dir.join(format!("feature_{}.html", feature.feature)), html)?;
    }
    Ok(())
}

fn feature_context(
    dashboards: &Dashboards,
    f: &FeatureDashboard,
) -> Result<minijinja::Value, ReportError> {
    let histogram_svg = super::plots::svg_bars(
        &format!(
            "activations of feature {} when it fires (a sample)",
            f.feature
        ),
        "sampled firings",
        &f.histogram,
    )
    .map_err(ReportError::Plot)?;
    let logit_histogram_svg = match &f.logit_effects {
        Some(effects) if !effects.histogram.is_empty() => Some(
            super::plots::svg_bars(
                &format!(
                    "logit change of every token from feature {}'s decoder direction",
                    f.feature
                ),
                "tokens",
                &effects.histogram,
            )
            .map_err(ReportError::Plot)?,
        ),
        _ => None,
    };
    // Only features of this dashboards step have a page to link to (never dimensions).
    let has_page = |index: usize| dashboards.features.iter().any(|g| g.feature == index);
    let correlations = |list: &[crate::results::Correlation], features: bool| {
        list.iter()
            .map(|c| {
                context! {
                    index => c.index,
                    page => features && has_page(c.index),
                    pearson => format!("{:+.3}", c.pearson),
                    cosine => format!("{:+.3}", c.cosine),
                }
            })
            .collect::<Vec<_>>()
    };
    let example = |e: &Example| example_context(dashboards, f, e);
    Ok(context! {
        feature => f.feature,
        density_percent => format!("{:.3}", 100.0 * f.density),
        max => format!("{:.4}", f.max_activation),
        mean => format!("{:.4}", f.mean_activation),
        histogram_svg,
        logit_histogram_svg,
        alignment => f.neuron_alignment.iter().map(|n| context! {
            index => n.index,
            value => format!("{:+.3}", n.value),
            share => format!("{:.1}%", 100.0 * n.share_of_l1),
        }).collect::<Vec<_>>(),
        correlated_neurons => correlations(&f.correlated_neurons, false),
        correlated_features => f.correlated_features.as_deref().map(|list| correlations(list, true)),
        logits => f.logit_effects.as_ref().map(|effects| {
            let rows = |list: &[(String, f64)]| list.iter().map(|(t, v)| (t.clone(), format!("{v:+.3}"))).collect::<Vec<_>>();
            context! { up => rows(&effects.promoted), down => rows(&effects.suppressed) }
        }),
        top => f.top.iter().map(example).collect::<Vec<_>>(),
        bands => f.quantiles.iter().map(|band| context! {
            label => band.label,
            examples => band.examples.iter().map(example).collect::<Vec<_>>(),
        }).collect::<Vec<_>>(),
    })
}

fn example_context(dashboards: &Dashboards, f: &FeatureDashboard, e: &Example) -> minijinja::Value {
    let strs = &dashboards.str_tokens[e.prompt];
    let from = e.pos.saturating_sub(WINDOW);
    let peak = f.max_activation.max(1e-12);
    let tokens: Vec<_> = e
        .window
        .iter()
        .enumerate()
        .map(|(i, &act)| {
            let p = from + i;
            let next = dashboards.predictions.get(&(e.prompt, p)).map(|top| {
                top.iter()
                    .map(|(token, prob)| format!("{token:?} {prob:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            context! {
                text => strs.get(p).cloned().unwrap_or_default(),
                act => format!("{act:.3}"),
                next,
                shade => format!("{:.2}", (f64::from(act) / peak).clamp(0.0, 1.0)),
                here => p == e.pos,
            }
        })
        .collect();
    context! {
        activation => format!("{:.3}", e.activation),
        prompt => e.prompt,
        pos => e.pos,
        attends_to => e.attends_to.map(|(j, score)| format!("{:?} at {j} (score {score:+.3})", strs.get(j).cloned().unwrap_or_default())),
        tokens,
    }
}
