//! Drawing plots as SVG with plotters: the same data always gives the same bytes (no
//! fonts are read; text is laid out by plotters' estimate and drawn by the browser).
//! Every plot is written to `plots/<name>.svg` and inlined in `index.html`.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::{Plot, PlotKind};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 520;
const FONT: &str = "sans-serif";
const POINT: RGBColor = RGBColor(31, 119, 180);
/// A qualitative palette for line series (matplotlib's tab10, first five).
const SERIES: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The SVG text of `plot`.
pub fn svg(plot: &Plot) -> Result<String, String> {
    let out = render((WIDTH, HEIGHT), |root| draw(root, plot))
        .map_err(|e| format!("plot `{}`: {e}", plot.name))?;
    Ok(match &plot.kind {
        PlotKind::Scatter { hover, points, .. } if points.len() > ONE_ELEMENT_PER_POINT_UP_TO => {
            let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
            as_paths(&out, hover, &most_extreme(&ys, HOVERED_POINTS))
        }
        PlotKind::Scatter { hover, .. } => with_hover_titles(&out, hover),
        _ => out,
    })
}

/// Scatter plots with more points than this draw them as paths of dots (a few bytes a
/// point instead of an element with its hover text: a per-token scatter of a hundred
/// stories was 1.9 MB), keeping hover text for the [`HOVERED_POINTS`] points farthest
/// from the median in y, the outliers a reader points at.
const ONE_ELEMENT_PER_POINT_UP_TO: usize = 2000;
const HOVERED_POINTS: usize = 300;

/// The indices of the `n` values farthest from their median (ties by index).
fn most_extreme(values: &[f64], n: usize) -> std::collections::BTreeSet<usize> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        let distance = |i: usize| (values[i] - median).abs();
        distance(b).total_cmp(&distance(a)).then(a.cmp(&b))
    });
    order.into_iter().take(n).collect()
}

/// Points per path: overlapping dots in one path do not darken each other (a path is
/// painted once), so the points are spread over many short paths, and a dense region
/// still looks dense.
const DOTS_PER_PATH: usize = 50;

/// Replaces the scatter's point circles with paths of round dots, except the `hovered`
/// points, which stay circles with their hover text, drawn on top.
fn as_paths(svg: &str, hover: &[String], hovered: &std::collections::BTreeSet<usize>) -> String {
    let mut out = String::with_capacity(svg.len() / 4);
    let mut dots: Vec<String> = Vec::new();
    let mut on_top = String::new();
    let mut style = None;
    let rest = each_point_circle(svg, |index, before, circle| {
        // The newline after each circle goes with it.
        out.push_str(before.trim_start_matches('\n'));
        let attribute = |name: &str| {
            let from = circle.find(&format!(" {name}=\""))? + name.len() + 3;
            circle[from..].split('"').next()
        };
        style.get_or_insert((
            attribute("r").unwrap_or("3").to_owned(),
            attribute("fill").unwrap_or("#1F77B4").to_owned(),
            attribute("opacity").unwrap_or("1").to_owned(),
        ));
        match hover
            .get(index)
            .filter(|h| hovered.contains(&index) && !h.is_empty())
        {
            Some(text) => {
                on_top.push_str(&titled(circle, text));
                on_top.push('\n');
            }
            None => {
                if let (Some(x), Some(y)) = (attribute("cx"), attribute("cy")) {
                    dots.push(format!("M{x} {y}h0"));
                }
            }
        }
    });
    if let Some((radius, fill, opacity)) = style {
        let width = radius.parse::<f64>().unwrap_or(3.0) * 2.0;
        for chunk in dots.chunks(DOTS_PER_PATH) {
            out.push_str(&format!(
                "<path d=\"{}\" fill=\"none\" stroke=\"{fill}\" stroke-opacity=\"{opacity}\" stroke-width=\"{width}\" stroke-linecap=\"round\"/>\n",
                chunk.concat()
            ));
        }
        out.push_str(&on_top);
    }
    out.push_str(rest.trim_start_matches('\n'));
    out
}

/// Walks the point circles plotters wrote for a scatter (the i-th `<circle .../>` is
/// the i-th point): `visit(i, the text before it, the circle without its closing "/>")`.
/// Returns the text after the last one.
fn each_point_circle<'a>(svg: &'a str, mut visit: impl FnMut(usize, &'a str, &'a str)) -> &'a str {
    let mut rest = svg;
    let mut index = 0;
    while let Some(start) = rest.find("<circle") {
        let Some(end) = rest[start..].find("/>") else {
            break;
        };
        visit(index, &rest[..start], &rest[start..start + end]);
        rest = &rest[start + end + 2..];
        index += 1;
    }
    rest
}

/// A circle (without its closing "/>") with a `<title>`, which browsers show on hover.
fn titled(circle: &str, text: &str) -> String {
    format!("{circle}><title>{}</title></circle>", escape(text))
}

/// An SVG of `size` on a white background, drawn by `draw`.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn draw(root: &Area<'_>, plot: &Plot) -> Result<(), Box<dyn std::error::Error>> {
    let title = (plot.title.as_str(), (FONT, 18));
    match &plot.kind {
        PlotKind::Scatter {
            x_label,
            y_label,
            points,
            marginals,
            ..
        } => {
            let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
            let (x_range, y_range) = (padded_range(&xs), padded_range(&ys));
            let titled = root.titled(title.0, title.1)?;
            let main = if *marginals {
                let (top, rest) = titled.split_vertically(90);
                let (main, right) = rest.split_horizontally(WIDTH - 110);
                let (top, _) = top.split_horizontally(WIDTH - 110);
                marginal_histogram(&top, &xs, x_range.clone(), false)?;
                marginal_histogram(&right, &ys, y_range.clone(), true)?;
                main
            } else {
                titled
            };
            let mut chart = ChartBuilder::on(&main)
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range, y_range)?;
            chart
                .configure_mesh()
                .x_desc(x_label.as_str())
                .y_desc(y_label.as_str())
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 3, POINT.mix(0.45).filled())),
            )?;
        }
        PlotKind::Histogram {
            x_label,
            values,
            bins,
        } => {
            let counts = histogram(values, *bins);
            let x_range = padded_range(values);
            let top = counts.iter().map(|c| c.2).max().unwrap_or(1) as f64 * 1.05;
            let mut chart = ChartBuilder::on(root)
                .caption(title.0, title.1)
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range, 0.0..top.max(1.0))?;
            chart
                .configure_mesh()
                .x_desc(x_label.as_str())
                .y_desc("count")
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(counts.iter().map(|&(lo, hi, n)| {
                Rectangle::new([(lo, 0.0), (hi, n as f64)], POINT.mix(0.8).filled())
            }))?;
        }
        PlotKind::Line {
            x_label,
            x,
            series,
            labels,
            top_labels,
        } => {
            let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            let mut chart = ChartBuilder::on(root)
                .caption(title.0, title.1)
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(padded_range(x), padded_range(&all))?;
            chart
                .configure_mesh()
                .x_desc(x_label.as_str())
                .light_line_style(WHITE)
                .draw()?;
            for (i, (name, values)) in series.iter().enumerate() {
                let color = SERIES[i % SERIES.len()];
                chart
                    .draw_series(LineSeries::new(
                        x.iter().copied().zip(values.iter().copied()),
                        color.stroke_width(2),
                    ))?
                    .label(name.as_str())
                    .legend(move |(lx, ly)| {
                        PathElement::new(vec![(lx, ly), (lx + 18, ly)], color.stroke_width(2))
                    });
            }
            if let Some((_, first)) = series.first() {
                let mut order: Vec<usize> = (0..first.len()).collect();
                order.sort_by(|&a, &b| first[b].total_cmp(&first[a]).then(a.cmp(&b)));
                for &i in order.iter().take(*top_labels) {
                    let point = (x[i], first[i]);
                    chart.draw_series(std::iter::once(Circle::new(point, 3, BLACK.filled())))?;
                    chart.draw_series(std::iter::once(Text::new(
                        labels[i].clone(),
                        point,
                        (FONT, 12).into_font().color(&BLACK),
                    )))?;
                }
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .draw()?;
            }
        }
        PlotKind::Bar {
            x_label,
            y_label,
            categories,
            values,
        } => {
            let n = categories.len().max(1);
            let low = values.iter().copied().fold(0.0f64, f64::min);
            let high = values.iter().copied().fold(0.0f64, f64::max);
            let span = (high - low).max(1e-12);
            let mut chart = ChartBuilder::on(root)
                .caption(title.0, title.1)
                .margin(8)
                .x_label_area_size(60)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5..n as f64 - 0.5, low - 0.05 * span..high + 0.05 * span)?;
            let category = |v: &f64| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    categories.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .x_desc(x_label.as_str())
                .y_desc(y_label.as_str())
                .x_labels(n.min(40))
                .x_label_formatter(&category)
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
                Rectangle::new(
                    [(i as f64 - 0.4, 0.0), (i as f64 + 0.4, v)],
                    POINT.mix(0.85).filled(),
                )
            }))?;
        }
        PlotKind::Heatmap {
            row_label,
            column_label,
            value_label,
            rows,
            columns,
            values,
        } => {
            let present: Vec<f64> = values.iter().flatten().flatten().copied().collect();
            let low = present.iter().copied().fold(f64::INFINITY, f64::min);
            let high = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (n_rows, n_columns) = (rows.len().max(1), columns.len().max(1));
            // The colour bar on the right says what each shade means.
            let (root, bar) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(110));
            if low.is_finite() && high.is_finite() {
                colour_bar(&bar, low, high)?;
            }
            let mut chart = ChartBuilder::on(&root)
                .caption(format!("{} ({value_label})", title.0), title.1)
                .margin(8)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..n_columns as f64, 0.0..n_rows as f64)?;
            let column_name = |v: &f64| key_at(columns, *v);
            let row_name = |v: &f64| key_at(rows, n_rows as f64 - *v);
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(column_label.as_str())
                .y_desc(row_label.as_str())
                .x_labels(n_columns * 2 + 1)
                .y_labels(n_rows * 2 + 1)
                .x_label_formatter(&column_name)
                .y_label_formatter(&row_name)
                .draw()?;
            let show_numbers = n_rows * n_columns <= 400;
            for (i, row) in values.iter().enumerate() {
                for (j, value) in row.iter().enumerate() {
                    let Some(value) = value else { continue };
                    // Row 0 at the top, as in a table.
                    let (x0, y0) = (j as f64, (n_rows - 1 - i) as f64);
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        colour(*value, low, high).filled(),
                    )))?;
                    if show_numbers {
                        chart.draw_series(std::iter::once(Text::new(
                            format!("{value:.3}"),
                            (x0 + 0.1, y0 + 0.6),
                            (FONT, 10).into_font().color(&BLACK),
                        )))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A histogram of already-counted bins `(lo, hi, count)` as a small SVG (the dashboards').
pub fn svg_bars(title: &str, counted: &str, bins: &[(f64, f64, usize)]) -> Result<String, String> {
    render((640, 220), |root| {
        let low = bins.first().map_or(0.0, |b| b.0).min(0.0);
        let high = bins.last().map_or(1.0, |b| b.1);
        let top = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 14))
            .margin(6)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(low..high, 0.0..top * 1.05)?;
        chart
            .configure_mesh()
            .y_desc(counted)
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(bins.iter().map(|&(lo, hi, n)| {
            Rectangle::new(
                [(lo, 0.0), (hi, n as f64)],
                RGBColor(255, 140, 0).mix(0.8).filled(),
            )
        }))?;
        Ok(())
    })
    .map_err(|e| format!("{title}: {e}"))
}

/// The key a tick at `v` stands for: cells span `[i, i + 1)`, labelled at their middle.
fn key_at(keys: &[String], v: f64) -> String {
    let middle = v - 0.5;
    let i = middle.round();
    if (middle - i).abs() < 1e-6 && i >= 0.0 {
        keys.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// A vertical bar of the heatmap's colours from `low` to `high`, with its values marked.
fn colour_bar(area: &Area<'_>, low: f64, high: f64) -> Result<(), Box<dyn std::error::Error>> {
    let top = if high > low { high } else { low + 1e-9 };
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(58)
        .margin_right(4)
        .y_label_area_size(62)
        .build_cartesian_2d(0.0..1.0, low..top)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_style((FONT, 12))
        .y_label_formatter(&|v: &f64| format!("{v:.3}"))
        .draw()?;
    const STEPS: usize = 64;
    let step = (top - low) / STEPS as f64;
    chart.draw_series((0..STEPS).map(|k| {
        let from = low + step * k as f64;
        Rectangle::new(
            [(0.0, from), (1.0, from + step)],
            colour(from + step / 2.0, low, high).filled(),
        )
    }))?;
    Ok(())
}

/// White to blue for values of one sign; red through white to blue across zero.
fn colour(value: f64, low: f64, high: f64) -> RGBColor {
    let mix = |from: (f64, f64, f64), to: (f64, f64, f64), t: f64| {
        let t = t.clamp(0.0, 1.0);
        RGBColor(
            (from.0 + (to.0 - from.0) * t) as u8,
            (from.1 + (to.1 - from.1) * t) as u8,
            (from.2 + (to.2 - from.2) * t) as u8,
        )
    };
    let (white, blue, red) = (
        (247.0, 251.0, 255.0),
        (8.0, 69.0, 148.0),
        (178.0, 24.0, 43.0),
    );
    if low < 0.0 && high > 0.0 {
        let extent = low.abs().max(high);
        if value >= 0.0 {
            mix(white, blue, value / extent)
        } else {
            mix(white, red, -value / extent)
        }
    } else {
        mix(white, blue, (value - low) / (high - low).max(1e-12))
    }
}

/// `[lo, hi)` bins over the values' range with their counts.
fn histogram(values: &[f64], bins: usize) -> Vec<(f64, f64, usize)> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (low, high) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if finite.is_empty() {
        return Vec::new();
    }
    let bins = bins.max(1);
    let width = ((high - low) / bins as f64).max(1e-12);
    let mut counts = vec![0usize; bins];
    for v in finite {
        counts[(((v - low) / width) as usize).min(bins - 1)] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| (low + i as f64 * width, low + (i + 1) as f64 * width, n))
        .collect()
}

/// The data's range with 5% room each side (a unit range around a constant).
fn padded_range(values: &[f64]) -> std::ops::Range<f64> {
    let (low, high) = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !low.is_finite() {
        return 0.0..1.0;
    }
    let pad = if high > low { (high - low) * 0.05 } else { 0.5 };
    low - pad..high + pad
}

fn marginal_histogram(
    area: &Area<'_>,
    values: &[f64],
    range: std::ops::Range<f64>,
    vertical: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let counts = histogram(values, 40);
    let top = counts.iter().map(|c| c.2).max().unwrap_or(1).max(1) as f64;
    let style = POINT.mix(0.6).filled();
    if vertical {
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(40)
            .build_cartesian_2d(0.0..top, range)?;
        chart.draw_series(
            counts
                .iter()
                .map(|&(lo, hi, n)| Rectangle::new([(0.0, lo), (n as f64, hi)], style)),
        )?;
    } else {
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .y_label_area_size(60)
            .build_cartesian_2d(range, 0.0..top)?;
        chart.draw_series(
            counts
                .iter()
                .map(|&(lo, hi, n)| Rectangle::new([(lo, 0.0), (hi, n as f64)], style)),
        )?;
    }
    Ok(())
}

/// Gives the i-th point (the i-th `<circle>`) a `<title>`, which browsers show on hover.
fn with_hover_titles(svg: &str, hover: &[String]) -> String {
    let mut out = String::with_capacity(svg.len() + hover.iter().map(String::len).sum::<usize>());
    let rest = each_point_circle(svg, |index, before, circle| {
        out.push_str(before);
        match hover.get(index).filter(|h| !h.is_empty()) {
            Some(text) => out.push_str(&titled(circle, text)),
            None => {
                out.push_str(circle);
                out.push_str("/>");
            }
        }
    });
    out.push_str(rest);
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(kind: PlotKind) -> Plot {
        Plot {
            name: "p".into(),
            title: "a <b>title</b> & more".into(),
            kind,
        }
    }

    const HOSTILE: &str = "<script>alert(1)</script>";

    fn all_kinds() -> Vec<PlotKind> {
        let labels = vec![
            HOSTILE.to_owned(),
            "a & b".to_owned(),
            "\"quoted\"".to_owned(),
        ];
        vec![
            PlotKind::Scatter {
                x_label: "x".into(),
                y_label: "y".into(),
                points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)],
                hover: labels.clone(),
                marginals: true,
            },
            PlotKind::Histogram {
                x_label: HOSTILE.into(),
                values: vec![0.0, 1.0, 1.5, 3.0],
                bins: 3,
            },
            PlotKind::Line {
                x_label: "pos".into(),
                x: vec![0.0, 1.0, 2.0],
                series: vec![
                    ("a".into(), vec![1.0, 3.0, 2.0]),
                    ("b".into(), vec![0.5, 0.5, 0.5]),
                ],
                labels: labels.clone(),
                top_labels: 3,
            },
            PlotKind::Bar {
                x_label: "token".into(),
                y_label: "prob".into(),
                categories: labels.clone(),
                values: vec![0.5, -0.25, 0.1],
            },
            PlotKind::Heatmap {
                row_label: "r".into(),
                column_label: "c".into(),
                value_label: "v".into(),
                rows: labels.clone(),
                columns: vec!["L1H0".into(), "L1H1".into()],
                values: vec![
                    vec![Some(0.1), None],
                    vec![Some(-0.2), Some(0.3)],
                    vec![None, None],
                ],
            },
        ]
    }

    #[test]
    fn text_from_prompts_is_escaped_in_every_kind_of_plot() {
        for kind in all_kinds() {
            let svg = svg(&plot(kind.clone())).unwrap();
            assert!(!svg.contains("<script"), "{kind:?}");
            assert!(!svg.contains("<b>"), "{kind:?}");
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        }
    }

    #[test]
    fn the_same_plot_gives_the_same_bytes_and_points_carry_their_hover_text() {
        for kind in all_kinds() {
            assert_eq!(svg(&plot(kind.clone())).unwrap(), svg(&plot(kind)).unwrap());
        }
        let scatter = svg(&plot(all_kinds().remove(0))).unwrap();
        assert_eq!(scatter.matches("<title>").count(), 3);
        assert!(scatter.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>"));
    }

    #[test]
    fn bins_cover_every_value_once() {
        let counts = histogram(&[0.0, 0.5, 1.0, 2.0, 2.0, f64::NAN], 2);
        assert_eq!(counts.iter().map(|c| c.2).sum::<usize>(), 5);
        assert_eq!(counts[1].2, 3, "the maximum lands in the last bin");
    }

    #[test]
    fn a_scatter_of_thousands_of_points_is_drawn_as_paths_with_hover_on_its_outliers() {
        let n = 5000;
        let points: Vec<(f64, f64)> = (0..n)
            .map(|i| (i as f64 / n as f64, ((i * 7919) % 1000) as f64 / 1000.0))
            .collect();
        let scatter = svg(&plot(PlotKind::Scatter {
            x_label: "x".into(),
            y_label: "y".into(),
            hover: (0..n).map(|i| format!("point {i}")).collect(),
            points: points.clone(),
            marginals: true,
        }))
        .unwrap();
        assert_eq!(
            scatter.matches("stroke-linecap=\"round\"").count(),
            (n - HOVERED_POINTS).div_ceil(DOTS_PER_PATH)
        );
        assert_eq!(scatter.matches("h0").count(), n - HOVERED_POINTS);
        assert_eq!(scatter.matches("<title>").count(), HOVERED_POINTS);
        assert!(scatter.len() < 150_000, "{} bytes", scatter.len());
        // The point farthest from the median in y keeps its hover text.
        let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
        let outlier = most_extreme(&ys, 1).into_iter().next().unwrap();
        assert!(scatter.contains(&format!("<title>point {outlier}</title>")));
    }
}
