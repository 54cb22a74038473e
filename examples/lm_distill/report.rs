//! The example's table, JSON and figure.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::{Deserialize, Serialize};

use crate::Plan;

/// One way of training the student (or the teacher), measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub what: String,
    pub test_perplexity: f64,
    /// Student–teacher top-1 agreement on the test tokens, in %.
    pub agreement: Option<f64>,
    /// Bits per byte of the test text both tokenizers read (see `cross`).
    #[serde(default)]
    pub bits_per_byte: Option<f64>,
    pub seconds: f64,
    /// Most bytes held above the row's start (CPU backends: the process's
    /// allocations).
    pub peak_bytes: usize,
    /// Training batches whose completions the student sampled (GKD).
    pub on_policy_steps: usize,
    /// `(step, validation perplexity)`.
    pub validation: Vec<(usize, f64)>,
}

impl Row {
    pub fn teacher(
        test_perplexity: f64,
        bits_per_byte: f64,
        seconds: f64,
        peak_bytes: usize,
        validation: Vec<(usize, f64)>,
    ) -> Self {
        Self {
            name: "teacher".into(),
            what: "hard labels (cached)".into(),
            test_perplexity,
            agreement: None,
            bits_per_byte: Some(bits_per_byte),
            seconds,
            peak_bytes,
            on_policy_steps: 0,
            validation,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "| {:<18} | {:<48} | {:>9.2} | {:>6} | {:>9} | {:>7.1} | {:>8.1} |",
            self.name,
            self.what,
            self.test_perplexity,
            self.bits_per_byte
                .map_or("—".to_string(), |b| format!("{b:.3}")),
            self.agreement
                .map_or("—".to_string(), |a| format!("{a:.1}")),
            self.seconds,
            self.peak_bytes as f64 / 1e6,
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub quick: bool,
    pub backend: String,
    pub plan: Plan,
    pub unknown_rate: f64,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "Brown corpus, vocabulary {}, context {}{}; test perplexity over {} test sentences\n",
            self.plan.vocab,
            self.plan.context,
            if self.quick { ", --quick" } else { "" },
            self.plan.test_sequences
        );
        out.push_str(
            "bpb: bits per byte of the test text that both tokenizers read; the BPE rows' test ppl is per word-level token of that text\n",
        );
        out.push_str(
            "| row                | how                                              | test ppl  | bpb    | agree %   | wall s  | peak MB  |\n",
        );
        out.push_str(
            "|--------------------|--------------------------------------------------|-----------|--------|-----------|---------|----------|\n",
        );
        for row in &self.rows {
            out.push_str(&row.line());
            out.push('\n');
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_string_pretty(self).expect("serialisable"),
        )
    }

    /// Validation perplexity over steps, one line per row: the word-level
    /// students in one panel, the byte-pair ones (per word-level token of
    /// the same text, another range) in a second beside it.
    pub fn write_png(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        static FONT: std::sync::Once = std::sync::Once::new();
        let mut font = Ok(());
        FONT.call_once(|| {
            font = plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                dejavu::sans::regular(),
            )
            .map_err(|_| "DejaVu Sans did not load");
        });
        font?;
        let students = self
            .rows
            .iter()
            .filter(|r| !r.validation.is_empty() && r.name != "teacher");
        let (pieces, words): (Vec<&Row>, Vec<&Row>) =
            students.partition(|r| r.name.starts_with("BPE"));
        let quick = if self.quick { " (--quick)" } else { "" };
        let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
        root.fill(&WHITE)?;
        if pieces.is_empty() {
            let title = format!("Validation perplexity of the student{quick}");
            draw_panel(&root, &title, &words, 0)?;
        } else {
            let (left, right) = root.split_horizontally(640);
            let title = format!("Word-level students{quick}");
            draw_panel(&left, &title, &words, 0)?;
            let title = format!("Byte-pair students, per word{quick}");
            draw_panel(&right, &title, &pieces, words.len())?;
        }
        root.present()?;
        Ok(())
    }
}

/// One chart of validation curves on `area`; colours from `first_colour` on.
fn draw_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    lines: &[&Row],
    first_colour: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let steps = lines
        .iter()
        .flat_map(|r| r.validation.iter().map(|v| v.0))
        .max()
        .unwrap_or(1) as f64;
    let values: Vec<f64> = lines
        .iter()
        .flat_map(|r| r.validation.iter().map(|v| v.1))
        .filter(|v| v.is_finite())
        .collect();
    // No curve (`--only` without a student row): an empty chart, not an
    // infinite axis.
    let low = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let low = if low.is_finite() { low.max(0.0) } else { 0.0 };
    let high = values.iter().cloned().fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // A linear axis: the values of a panel span about a decade or less,
        // where a log axis gets few labelled ticks.
        .build_cartesian_2d(0.0..steps, low * 0.95..high * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("validation perplexity")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, row) in lines.iter().enumerate() {
        let color = Palette99::pick(first_colour + i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                row.validation.iter().map(|&(s, p)| (s as f64, p)),
                color.stroke_width(2),
            ))?
            .label(row.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
