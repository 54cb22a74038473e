//! The generalist/specialist pipeline of Hinton, Vinyals & Dean (2015, §5) on
//! real MNIST.
//!
//! 1. A generalist deliberately small (one hidden layer) is trained on the
//!    training images less a held-out split.
//! 2. Its predictions on the held-out split (never trained on, not the test
//!    set) give the class covariance that `ConfusableSubsetsConfig` clusters
//!    into confusable subsets: disjoint ones, and overlapping ones of a fixed
//!    size as the paper's JFT specialists were.
//! 3. Each specialist starts from the generalist's weights (its output layer
//!    cut down to the subset plus a dustbin unit), trains on batches half from
//!    its subset and half from the rest against the generalist's soft targets
//!    collapsed to its outputs plus the mapped labels, and has its dustbin
//!    logit corrected for that oversampling.
//! 4. On the test set the generalist and the specialists active for each image
//!    (those whose subset holds the generalist's top classes) are combined by
//!    minimising eq. 5.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use burn_distill::specialist::{
    ClassSubset, ConfusableSubsetsConfig, Specialist, SpecialistCombinerConfig, SpecialistSampler,
    SubsetOverlap,
};
use burn_distill::{KdLoss, KdLossConfig, temperature};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{CLASSES, PIXELS, Split};
use crate::model::Mlp;
use crate::report::Experiment;
use crate::train::{self, Objective, TrainSettings};

/// What the `specialists` experiment does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecialistSettings {
    /// Hidden units of the one-hidden-layer generalist.
    pub hidden: usize,
    pub generalist: TrainSettings,
    pub specialist: TrainSettings,
    /// K-means clusters of the class covariance.
    pub subsets: usize,
    /// Classes per overlapping subset (the disjoint variant uses the clusters as they are).
    pub overlap_size: usize,
    /// Temperature of the collapsed soft targets.
    pub temperature: f64,
    /// Weight of the soft term (the hard term gets 1 − this).
    pub soft_weight: f64,
    /// A specialist is active when its subset holds one of the generalist's top-n classes.
    pub top_n: usize,
    /// Training images held out of every model to find the subsets on.
    pub held_out: usize,
}

/// One variant's (disjoint or overlapping) result on the test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecialistVariant {
    pub name: String,
    pub subsets: Vec<SubsetResult>,
    pub generalist_errors: usize,
    /// Generalist and specialists combined by eq. 5, dustbin logits corrected.
    pub combined_errors: usize,
    /// The same without the dustbin correction.
    pub uncorrected_errors: usize,
    pub test_size: usize,
    pub combiner_iterations: usize,
    /// Whether every test image's combination settled before the iteration cap.
    pub combiner_converged: bool,
    /// The paper's Table 4 layout.
    pub coverage: Vec<CoverageRow>,
}

/// One specialist's subset and its errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubsetResult {
    pub classes: Vec<usize>,
    /// Test images whose label is in the subset…
    pub test_examples: usize,
    /// …that the generalist gets wrong,
    pub generalist_errors: usize,
    /// and that the combination gets wrong.
    pub combined_errors: usize,
    /// Errors of the specialist alone on its own task (subset classes + dustbin), all test images.
    pub specialist_task_errors: usize,
    pub dustbin_correction: f64,
}

/// Test images grouped by how many specialists cover their true class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoverageRow {
    pub specialists: usize,
    pub examples: usize,
    pub generalist_correct: usize,
    pub combined_correct: usize,
}

impl CoverageRow {
    /// `(combined − generalist) / generalist` correct, as the paper's Table 4.
    pub fn relative_change(&self) -> f64 {
        (self.combined_correct as f64 - self.generalist_correct as f64)
            / self.generalist_correct.max(1) as f64
    }
}

/// Everything `specialists` produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecialistsReport {
    pub settings: SpecialistSettings,
    /// Training images the generalist and the specialists learn from.
    pub fit_images: usize,
    pub generalist: Experiment,
    pub variants: Vec<SpecialistVariant>,
}

/// A trained specialist with its dustbin correction, kept by subset so that a
/// subset found by both variants is trained once.
struct Trained {
    specialist: Specialist,
    model: Mlp,
    correction: f64,
}

/// Runs the experiment.
pub fn run(
    settings: &SpecialistSettings,
    train_set: &Split,
    test: &Split,
    device: &Device,
) -> SpecialistsReport {
    let n = train_set.len();
    let fit_rows = n - settings.held_out.min(n / 2);
    let fit = train_set.select(&(0..fit_rows).collect::<Vec<_>>());
    let held_out = train_set.select(&(fit_rows..n).collect::<Vec<_>>());

    // 1. The generalist.
    device.seed(settings.generalist.seed);
    let init = Mlp::new(&[PIXELS, settings.hidden, CLASSES], 0.0, 0.0, device);
    let start = std::time::Instant::now();
    let (generalist, history) = train::train(
        init,
        &fit,
        test,
        &settings.generalist,
        Objective::Hard,
        "generalist",
        device,
    );
    let generalist_eval = generalist.valid();
    let generalist_logits = train::logits(&generalist_eval, test);
    let generalist_report = Experiment {
        name: "generalist".into(),
        description: format!("generalist {}, hard labels", settings.hidden),
        test_errors: train::count_errors(&generalist_logits, &test.labels, None, None),
        test_size: test.len(),
        paper_errors: None,
        train_seconds: start.elapsed().as_secs_f64(),
        settings: Some(settings.generalist.clone()),
        history,
    };

    // 2. Confusable subsets from the held-out predictions (no labels used).
    let eval_device = generalist_eval.devices()[0].clone();
    let held_out_probs = probabilities(
        train::logits(&generalist_eval, &held_out),
        CLASSES,
        1.0,
        &eval_device,
    );
    let clustering = ConfusableSubsetsConfig::new(settings.subsets).with_seed(settings.seed());
    let overlapping = |overlap: SubsetOverlap| {
        clustering
            .clone()
            .with_subset_size(Some(settings.overlap_size))
            .with_overlap(overlap)
            .find(held_out_probs.clone())
            .expect("valid clustering settings")
    };
    let variants = [
        (
            "disjoint",
            clustering
                .find(held_out_probs.clone())
                .expect("valid clustering settings"),
        ),
        ("correlated", overlapping(SubsetOverlap::Correlated)),
        ("nearest", overlapping(SubsetOverlap::Nearest)),
    ];

    // 3. Specialists, each trained once per distinct subset.
    // Its temperature is the one the generalist's logits are collapsed at.
    let kd = settings.loss().expect("settings checked before the run");
    let fit_labels: Vec<i64> = fit.labels.iter().map(|&l| l as i64).collect();
    let mut trained: HashMap<Vec<usize>, Trained> = HashMap::new();
    for (_, subsets) in &variants {
        for subset in subsets {
            if trained.contains_key(subset.classes()) {
                continue;
            }
            let specialist = train_specialist(
                settings,
                &kd,
                &generalist_eval,
                subset,
                &fit,
                &fit_labels,
                test,
                device,
                trained.len() as u64,
            );
            trained.insert(subset.classes().to_vec(), specialist);
        }
    }

    // 4. Combined on the test set.
    let generalist_probs = probabilities(generalist_logits.clone(), CLASSES, 1.0, &eval_device);
    let combiner = SpecialistCombinerConfig::new()
        .with_top_n(settings.top_n)
        .init();
    let variants = variants
        .iter()
        .map(|(name, subsets)| {
            let members: Vec<&Trained> = subsets.iter().map(|s| &trained[s.classes()]).collect();
            combine_variant(
                name,
                &members,
                &combiner,
                &generalist_probs,
                &generalist_logits,
                test,
            )
        })
        .collect();
    SpecialistsReport {
        settings: settings.clone(),
        fit_images: fit.len(),
        generalist: generalist_report,
        variants,
    }
}

impl SpecialistSettings {
    fn seed(&self) -> u64 {
        self.generalist.seed
    }

    /// The specialists' loss: `KdLoss` at `temperature`, `soft_weight` on the
    /// soft term and the rest on the labels.
    pub fn loss(&self) -> Result<KdLoss, burn_distill::DistillError> {
        KdLossConfig::new()
            .with_temperature(self.temperature)
            .with_soft_weight(self.soft_weight)
            .with_hard_weight(1.0 - self.soft_weight)
            .try_init()
    }
}

/// Softmax at `temperature` of row-major host logits, as a tensor on `device`.
fn probabilities(logits: Vec<f32>, width: usize, t: f64, device: &Device) -> Tensor<2> {
    let rows = logits.len() / width;
    let logits = Tensor::<2>::from_data(TensorData::new(logits, [rows, width]), device);
    temperature::softmax(logits, t, 1).expect("a valid temperature")
}

#[allow(clippy::too_many_arguments)]
fn train_specialist(
    settings: &SpecialistSettings,
    kd: &KdLoss,
    generalist: &Mlp,
    subset: &ClassSubset,
    fit: &Split,
    fit_labels: &[i64],
    test: &Split,
    device: &Device,
    index: u64,
) -> Trained {
    let specialist = Specialist::new(subset.clone());
    let sampler = SpecialistSampler::new(fit_labels, subset).expect("examples on both sides");
    // Every subset image once, and as many from the rest (the paper's half/half).
    let from_subset = fit
        .labels
        .iter()
        .filter(|&&l| subset.contains(l as usize))
        .count();
    let sample = sampler.sample(2 * from_subset, settings.seed() + 1000 + index);
    let map = |split: Split| Split {
        labels: split
            .labels
            .iter()
            .map(|&l| specialist.output_of_class()[l as usize] as u8)
            .collect(),
        images: split.images,
    };
    let data = map(fit.select(&sample.indices));
    let test_mapped = map(test.clone());
    let label = format!("spec {:?}", subset.classes());
    let model = specialist_from_generalist(generalist, &specialist, device);
    let settings_m = TrainSettings {
        seed: settings.specialist.seed + index,
        ..settings.specialist.clone()
    };
    let (model, _) = train::train(
        model,
        &data,
        &test_mapped,
        &settings_m,
        Objective::Specialist {
            generalist,
            specialist: &specialist,
            loss: kd,
            // The generalist's posterior under the oversampled prior, as the
            // labels are: the test-time correction then undoes both alike.
            dustbin_shift: -sampler.dustbin_logit_correction(),
        },
        &label,
        device,
    );
    Trained {
        specialist,
        model: model.valid(),
        correction: sampler.dustbin_logit_correction(),
    }
}

/// The generalist's hidden layers and its output layer cut to the specialist's
/// outputs (`Specialist::output_layer`), as trainable parameters on `device`.
fn specialist_from_generalist(generalist: &Mlp, specialist: &Specialist, device: &Device) -> Mlp {
    let on_device =
        |t: Tensor<2>| Param::from_tensor(Tensor::<2>::from_data(t.into_data(), device));
    let on_device1 =
        |t: Tensor<1>| Param::from_tensor(Tensor::<1>::from_data(t.into_data(), device));
    let (last, hidden) = generalist.layers.split_last().expect("output layer");
    let mut layers: Vec<Linear> = hidden
        .iter()
        .map(|layer| Linear {
            weight: on_device(layer.weight.val()),
            bias: layer.bias.as_ref().map(|b| on_device1(b.val())),
        })
        .collect();
    let output = specialist.output_layer(last);
    layers.push(Linear {
        weight: on_device(output.weight.val()),
        bias: output.bias.map(|b| on_device1(b.val())),
    });
    Mlp {
        layers,
        input_dropout: DropoutConfig::new(0.0).init(),
        hidden_dropout: DropoutConfig::new(0.0).init(),
    }
}

fn combine_variant(
    name: &str,
    members: &[&Trained],
    combiner: &burn_distill::specialist::SpecialistCombiner,
    generalist_probs: &Tensor<2>,
    generalist_logits: &[f32],
    test: &Split,
) -> SpecialistVariant {
    let device = generalist_probs.device();
    let specialists: Vec<Specialist> = members.iter().map(|m| m.specialist.clone()).collect();
    let outputs: Vec<Vec<f32>> = members
        .iter()
        .map(|m| train::logits(&m.model, test))
        .collect();
    let combine = |corrected: bool| {
        let probs: Vec<Tensor<2>> = members
            .iter()
            .zip(&outputs)
            .map(|(m, logits)| {
                let width = m.specialist.num_outputs();
                let logits = Tensor::<2>::from_data(
                    TensorData::new(logits.clone(), [test.len(), width]),
                    &device,
                );
                let logits = if corrected {
                    m.specialist
                        .correct_dustbin(logits, m.correction)
                        .expect("a finite correction")
                } else {
                    logits
                };
                temperature::softmax(logits, 1.0, 1).expect("T = 1")
            })
            .collect();
        combiner
            .combine(generalist_probs.clone(), &specialists, &probs)
            .expect("one output per class and dustbin")
    };
    let combined = combine(true);
    let uncorrected = combine(false);
    let argmax = |p: Tensor<2>| -> Vec<usize> {
        p.argmax(1)
            .into_data()
            .iter::<i64>()
            .map(|c| c as usize)
            .collect()
    };
    let g_pred: Vec<usize> = generalist_logits
        .chunks(CLASSES)
        .map(|z| (0..CLASSES).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap())
        .collect();
    let c_pred = argmax(combined.probs);
    let u_pred = argmax(uncorrected.probs);
    let labels: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    let wrong = |pred: &[usize], rows: &mut dyn Iterator<Item = usize>| {
        rows.filter(|&i| pred[i] != labels[i]).count()
    };
    let all = || 0..labels.len();
    let subsets = members
        .iter()
        .zip(&outputs)
        .map(|(m, logits)| {
            let s = m.specialist.subset();
            let in_subset = || all().filter(|&i| s.contains(labels[i]));
            let mapped: Vec<u8> = test
                .labels
                .iter()
                .map(|&l| m.specialist.output_of_class()[l as usize] as u8)
                .collect();
            SubsetResult {
                classes: s.classes().to_vec(),
                test_examples: in_subset().count(),
                generalist_errors: wrong(&g_pred, &mut in_subset()),
                combined_errors: wrong(&c_pred, &mut in_subset()),
                specialist_task_errors: train::count_errors(logits, &mapped, None, None),
                dustbin_correction: m.correction,
            }
        })
        .collect();
    let covering = |i: usize| {
        specialists
            .iter()
            .filter(|s| s.subset().contains(labels[i]))
            .count()
    };
    let coverage = (0..=specialists.len())
        .filter_map(|k| {
            let rows: Vec<usize> = all().filter(|&i| covering(i) == k).collect();
            (!rows.is_empty()).then(|| CoverageRow {
                specialists: k,
                examples: rows.len(),
                generalist_correct: rows.len() - wrong(&g_pred, &mut rows.iter().copied()),
                combined_correct: rows.len() - wrong(&c_pred, &mut rows.iter().copied()),
            })
        })
        .collect();
    SpecialistVariant {
        name: name.into(),
        subsets,
        generalist_errors: wrong(&g_pred, &mut all()),
        combined_errors: wrong(&c_pred, &mut all()),
        uncorrected_errors: wrong(&u_pred, &mut all()),
        test_size: labels.len(),
        combiner_iterations: combined.iterations,
        combiner_converged: combined.iterations < combiner_cap(),
        coverage,
    }
}

/// The combiner's default iteration cap (the experiment does not change it).
fn combiner_cap() -> usize {
    SpecialistCombinerConfig::new().max_iterations
}

impl SpecialistsReport {
    /// The experiment's part of the printed table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "\nspecialists (§5): generalist {PIXELS}-{}-{CLASSES} on {} images ({} held out to find \
             the subsets), T = {}, soft weight {}, top-{} activation\n",
            s.hidden, self.fit_images, s.held_out, s.temperature, s.soft_weight, s.top_n
        );
        out += &format!(
            "{:<12} {:>8} {:>9} {:>14} {:>10}  subsets\n",
            "variant", "general.", "combined", "no dustbin fix", "combiner"
        );
        for v in &self.variants {
            let subsets: Vec<String> = v
                .subsets
                .iter()
                .map(|r| format!("{:?}", r.classes))
                .collect();
            out += &format!(
                "{:<12} {:>8} {:>9} {:>14} {:>10}  {}\n",
                v.name,
                v.generalist_errors,
                v.combined_errors,
                v.uncorrected_errors,
                format!(
                    "{} it.{}",
                    v.combiner_iterations,
                    if v.combiner_converged { "" } else { " (cap)" }
                ),
                subsets.join(" ")
            );
        }
        for v in &self.variants {
            out += &format!(
                "{} subsets: test images of the subset's classes, errors of the generalist → combined; \
                 the specialist alone on its own task (subset + dustbin)\n",
                v.name
            );
            for r in &v.subsets {
                out += &format!(
                    "  {:<16} {:>6} images  {:>5} → {:<5}  specialist {:>5} errors  dustbin +{:.2}\n",
                    format!("{:?}", r.classes),
                    r.test_examples,
                    r.generalist_errors,
                    r.combined_errors,
                    r.specialist_task_errors,
                    r.dustbin_correction
                );
            }
            out += &format!(
                "  Table 4 layout: {:>9} {:>9} {:>11} {:>9}\n",
                "covering", "examples", "Δ correct", "relative"
            );
            for c in &v.coverage {
                out += &format!(
                    "                  {:>9} {:>9} {:>+11} {:>+8.1}%\n",
                    c.specialists,
                    c.examples,
                    c.combined_correct as i64 - c.generalist_correct as i64,
                    100.0 * c.relative_change()
                );
            }
        }
        out
    }
}

impl SpecialistsReport {
    /// The Table 4 layout as a chart: relative change in correct test images
    /// by the number of specialists covering the true class, one bar per variant.
    pub fn draw_coverage<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        DB::ErrorType: 'static,
    {
        let most = self
            .variants
            .iter()
            .flat_map(|v| v.coverage.iter().map(|c| c.specialists))
            .max()
            .unwrap_or(1);
        let changes: Vec<f64> = self
            .variants
            .iter()
            .flat_map(|v| v.coverage.iter().map(|c| 100.0 * c.relative_change()))
            .collect();
        let high = changes.iter().fold(0.5f64, |m, &c| m.max(c)) * 1.25;
        let low = changes.iter().fold(0.0f64, |m, &c| m.min(c)) * 1.25;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "specialists: relative change in correct test images by specialists covering \
                     the true class (generalist {} errors)",
                    self.generalist.test_errors
                ),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..most as f64 + 0.5, low..high)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(most + 1)
            .x_desc("specialists covering the true class")
            .y_desc("relative change in correct (%)")
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| format!("{y:+.1}"))
            .draw()?;
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
        ];
        let width = 0.8 / self.variants.len().max(1) as f64;
        for (k, v) in self.variants.iter().enumerate() {
            let color = palette[k % palette.len()];
            chart
                .draw_series(v.coverage.iter().map(|c| {
                    let x = c.specialists as f64 - 0.4 + k as f64 * width;
                    Rectangle::new(
                        [(x, 0.0), (x + width, 100.0 * c.relative_change())],
                        color.filled(),
                    )
                }))?
                .label(format!(
                    "{}: {} → {} errors",
                    v.name, v.generalist_errors, v.combined_errors
                ))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}
