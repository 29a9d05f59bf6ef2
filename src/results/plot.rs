//! A plot's data: what it shows, decided with the results; the report draws it.

#[derive(Debug, Clone, serde::Serialize)]
pub struct Plot {
    pub name: String,
    pub title: String,
    /// Kept out of `results.json`: the points are in the tables the plot reads.
    #[serde(skip)]
    pub kind: PlotKind,
}

#[derive(Debug, Clone)]
pub enum PlotKind {
    /// Points with a text shown on hover; optionally histograms of x and y at the sides.
    Scatter {
        x_label: String,
        y_label: String,
        points: Vec<(f64, f64)>,
        hover: Vec<String>,
        marginals: bool,
    },
    Histogram {
        x_label: String,
        values: Vec<f64>,
        bins: usize,
    },
    /// Series over a shared x; the `top_labels` highest points of the first series get
    /// their row's label written next to them (the seed's `plot_line_with_top_10_labels`).
    Line {
        x_label: String,
        x: Vec<f64>,
        series: Vec<(String, Vec<f64>)>,
        labels: Vec<String>,
        top_labels: usize,
    },
    Bar {
        x_label: String,
        y_label: String,
        categories: Vec<String>,
        values: Vec<f64>,
    },
    /// A value per (row key, column key); keys in first-seen order, missing cells empty.
    Heatmap {
        row_label: String,
        column_label: String,
        value_label: String,
        rows: Vec<String>,
        columns: Vec<String>,
        values: Vec<Vec<Option<f64>>>,
    },
}
