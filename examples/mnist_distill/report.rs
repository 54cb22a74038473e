//! The results: a table next to the paper's numbers, a JSON file and a PNG
//! figure (errors per experiment; one test digit's soft targets at several
//! temperatures).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::{Deserialize, Serialize};

use crate::specialists::SpecialistsReport;
use crate::train::{EpochRecord, TrainSettings};

/// Test errors Hinton, Vinyals & Dean (2015, §3) report on MNIST's 10,000.
pub mod paper {
    pub const TEACHER: usize = 67;
    pub const STUDENT: usize = 146;
    pub const DISTILLED: usize = 74;
    /// Distilled without any 3 in the transfer set, before the bias fix…
    pub const OMIT_BEFORE: usize = 206;
    /// …of which on the test set's 3s,
    pub const OMIT_BEFORE_ON_DIGIT: usize = 133;
    /// and after raising the 3's bias (by 3.5 in the paper).
    pub const OMIT_AFTER: usize = 109;
    pub const OMIT_AFTER_ON_DIGIT: usize = 14;
}

/// One trained model's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub test_errors: usize,
    pub test_size: usize,
    pub paper_errors: Option<usize>,
    /// Wall time of the training run (0 when a checkpoint was reused).
    pub train_seconds: f64,
    pub settings: Option<TrainSettings>,
    pub history: Vec<EpochRecord>,
}

/// The omitted-digit experiment: a student that never saw the digit,
/// before and after the digit's logit bias is raised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OmitDigit {
    pub digit: u8,
    pub transfer_size: usize,
    pub validation_size: usize,
    pub bias: f32,
    pub validation_errors_before: usize,
    pub validation_errors_after: usize,
    pub test_errors_before: usize,
    pub test_errors_after: usize,
    pub test_digit_count: usize,
    pub test_errors_on_digit_before: usize,
    pub test_errors_on_digit_after: usize,
}

/// One test digit's softmax at several temperatures under the teacher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoftTargets {
    pub test_index: usize,
    pub label: u8,
    pub temperatures: Vec<f64>,
    pub probabilities: Vec<Vec<f64>>,
}

/// Everything one invocation produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    pub quick: bool,
    pub backend: String,
    pub train_size: usize,
    pub test_size: usize,
    pub temperature: f64,
    pub experiments: Vec<Experiment>,
    pub omit_digit: Option<OmitDigit>,
    pub soft_targets: Option<SoftTargets>,
    /// The teacher store `distill --teacher-store` read (absent otherwise).
    #[serde(default)]
    pub teacher_store: Option<StoreReport>,
    /// The generalist/specialist experiment (absent when not run).
    #[serde(default)]
    pub specialists: Option<SpecialistsReport>,
    pub total_seconds: f64,
}

/// The offline teacher of a `distill --teacher-store` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreReport {
    pub path: String,
    pub k: usize,
    pub precision: String,
    pub examples: usize,
    pub file_bytes: u64,
    pub bytes_per_example: f64,
    /// Time to run the teacher and write the store; `None` when it was reused.
    pub write_seconds: Option<f64>,
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let row = |label: &str, errors: usize, of: usize, paper: Option<usize>| {
            let paper = paper.map_or("-".to_string(), |p| p.to_string());
            format!("{label:<34} {errors:>6}/{of:<6} {paper:>7}\n")
        };
        let mut s = format!(
            "{:<34} {:>13} {:>7}\n",
            "experiment", "test errors", "paper"
        );
        for e in &self.experiments {
            s += &row(&e.description, e.test_errors, e.test_size, e.paper_errors);
        }
        if let Some(o) = &self.omit_digit {
            let (n, d) = (self.test_size, o.test_digit_count);
            let of_which = format!("  … of which {}s", o.digit);
            s += &row(
                &format!("no {}s in transfer set", o.digit),
                o.test_errors_before,
                n,
                Some(paper::OMIT_BEFORE),
            );
            s += &row(
                &of_which,
                o.test_errors_on_digit_before,
                d,
                Some(paper::OMIT_BEFORE_ON_DIGIT),
            );
            s += &row(
                &format!("  + bias {:.2} on the {} logit", o.bias, o.digit),
                o.test_errors_after,
                n,
                Some(paper::OMIT_AFTER),
            );
            s += &row(
                &of_which,
                o.test_errors_on_digit_after,
                d,
                Some(paper::OMIT_AFTER_ON_DIGIT),
            );
        }
        if let Some(store) = &self.teacher_store {
            s += &format!(
                "teacher store: top-{} {} log-probabilities of {} examples, {} bytes ({:.1} per example), {}\n",
                store.k,
                store.precision,
                store.examples,
                store.file_bytes,
                store.bytes_per_example,
                store
                    .write_seconds
                    .map_or("reused".to_string(), |s| format!("written in {s:.1} s")),
            );
        }
        if let Some(sp) = &self.specialists {
            s += &sp.table();
        }
        if self.quick {
            s += "(--quick: a small subset and few epochs; the paper's numbers are for the full run)\n";
        }
        s
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_string_pretty(self).expect("serialisable"),
        )
    }

    pub fn read_json(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Draws the figure: errors per experiment (ours next to the paper's) on
    /// the left, one digit's soft targets at each temperature on the right.
    pub fn write_png(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        // plotters draws text with ab_glyph from a font we supply, so the
        // figure needs no system fonts.
        static FONT: std::sync::Once = std::sync::Once::new();
        let mut font_result = Ok(());
        FONT.call_once(|| {
            font_result = plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                dejavu::sans::regular(),
            )
            .map_err(|_| "DejaVu Sans did not load");
        });
        font_result?;

        // A second row for the specialists' Table 4 layout when they ran.
        let height = if self.specialists.is_some() {
            1000
        } else {
            560
        };
        let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top_row, bottom_row) = root.split_vertically(560);
        let (left, right) = top_row.split_horizontally(760);

        // The paper's counts are out of the full 10,000: shown next to full runs only.
        let full = self.test_size == 10_000;
        let mut bars: Vec<(String, usize, Option<usize>)> = self
            .experiments
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.test_errors,
                    e.paper_errors.filter(|_| full),
                )
            })
            .collect();
        if let Some(o) = &self.omit_digit {
            bars.push((
                format!("no-{}", o.digit),
                o.test_errors_before,
                Some(paper::OMIT_BEFORE).filter(|_| full),
            ));
            bars.push((
                format!("no-{} + bias", o.digit),
                o.test_errors_after,
                Some(paper::OMIT_AFTER).filter(|_| full),
            ));
        }
        if let Some(sp) = &self.specialists {
            bars.push(("generalist".into(), sp.generalist.test_errors, None));
            for v in &sp.variants {
                bars.push((format!("+ {}", v.name), v.combined_errors, None));
            }
        }
        let top = bars
            .iter()
            .map(|(_, ours, paper)| (*ours).max(paper.unwrap_or(0)))
            .max()
            .unwrap_or(1) as f64
            * 1.3;
        let mut chart = ChartBuilder::on(&left)
            .caption(
                format!(
                    "MNIST test errors (of {}){}",
                    self.test_size,
                    if self.quick { ", --quick" } else { "" }
                ),
                ("sans-serif", 24),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..bars.len().max(1) as f64, 0.0..top.max(1.0))?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1) * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 && i < names.len() {
                    names[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("errors")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        let ours_color = RGBColor(31, 119, 180);
        let paper_color = RGBColor(255, 127, 14);
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, ours, _))| {
                let x = i as f64;
                Rectangle::new(
                    [(x + 0.12, 0.0), (x + 0.5, *ours as f64)],
                    ours_color.filled(),
                )
            }))?
            .label("burn-distill")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], ours_color.filled())
            });
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(i, (_, _, paper))| {
                paper.map(|p| {
                    let x = i as f64;
                    Rectangle::new([(x + 0.5, 0.0), (x + 0.88, p as f64)], paper_color.filled())
                })
            }))?
            .label("paper")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], paper_color.filled())
            });
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, ours, _))| {
            Text::new(
                ours.to_string(),
                (i as f64 + 0.16, *ours as f64 + top * 0.04),
                ("sans-serif", 15),
            )
        }))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        if let Some(soft) = &self.soft_targets {
            // Down to the decade of the smallest probability (T = 1 reaches 1e-10 and below).
            let smallest = soft
                .probabilities
                .iter()
                .flatten()
                .fold(1.0f64, |m, &p| if p > 0.0 { m.min(p) } else { m });
            let floor = 10f64.powf(smallest.log10().floor()).max(1e-30);
            let mut chart = ChartBuilder::on(&right)
                .caption(
                    format!(
                        "teacher's soft targets, test digit #{} (a {})",
                        soft.test_index, soft.label
                    ),
                    ("sans-serif", 22),
                )
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5..9.5f64, (floor..1.0f64).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("class")
                .x_labels(10)
                .y_desc("probability (log scale)")
                .x_label_formatter(&|x| format!("{}", x.round() as i64))
                .y_label_formatter(&|y| format!("{y:.0e}"))
                .draw()?;
            let palette = [
                RGBColor(214, 39, 40),
                RGBColor(44, 160, 44),
                RGBColor(148, 103, 189),
            ];
            let width = 0.8 / soft.temperatures.len() as f64;
            for (k, (t, probs)) in soft
                .temperatures
                .iter()
                .zip(&soft.probabilities)
                .enumerate()
            {
                let color = palette[k % palette.len()];
                chart
                    .draw_series(probs.iter().enumerate().map(|(class, &p)| {
                        let x = class as f64 - 0.4 + k as f64 * width;
                        Rectangle::new([(x, floor), (x + width, p.max(floor))], color.filled())
                    }))?
                    .label(format!("T = {t}"))
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        if let Some(sp) = &self.specialists {
            sp.draw_coverage(&bottom_row)?;
        }
        root.present()?;
        Ok(())
    }
}
