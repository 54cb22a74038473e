//! Dashboard metrics of a distillation run: the soft and hard terms of the
//! loss, and how often the student agrees with the teacher.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorReadError};

use crate::feature::FeatureValue;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

/// `Metric` and `Numeric` for a metric with an `average: RowAverage` field and
/// a `batch_value(&self, &Input) -> Result<(Option<f64>, usize), _>` method.
macro_rules! row_average_metric {
    ($metric:ty, $input:ty, higher_is_better: $higher:expr) => {
        impl Metric for $metric {
            type Input = $input;

            fn update(
                &mut self,
                input: &$input,
                _metadata: &MetricMetadata,
            ) -> Result<SerializedEntry, TensorReadError> {
                let (value, rows) = self.batch_value(input)?;
                Ok(self.average.update(value, rows))
            }

            fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
                Ok(self.average.compute())
            }

            fn clear(&mut self) {
                self.average.clear();
            }

            fn name(&self) -> MetricName {
                self.average.name.clone()
            }

            fn attributes(&self) -> MetricAttributes {
                self.average.attributes($higher)
            }
        }

        impl Numeric for $metric {
            fn value(&self) -> Option<NumericEntry> {
                self.average.value()
            }

            fn running_value(&self) -> Option<NumericEntry> {
                self.average.running_value()
            }

            fn final_value(&self) -> NumericEntry {
                self.average.final_value()
            }
        }
    };
}

/// A term of the KD loss, as a [`DistillLossMetric`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LossTerm {
    /// `T² · D(p_T, q_T)` (or `D` alone without the `T²` scaling), before weighting.
    Soft,
    /// The student's cross-entropy with the labels at `T = 1`, before weighting.
    Hard,
}

/// The [`DistillLossMetric`] input: the two terms, read from a
/// [`DistillOutput`](super::DistillOutput).
#[derive(Debug, Clone)]
pub struct DistillLossInput {
    /// The soft term, `[1]` (`None`: the teacher did not run).
    pub soft: Option<Tensor<1>>,
    /// The hard term, `[1]`.
    pub hard: Tensor<1>,
    /// The rows it is averaged over (the metric's weight for this batch).
    pub rows: usize,
}

/// One term of the KD loss, averaged over the epoch (weighted by batch rows).
///
/// Logs the soft and hard terms separately: the total alone hides which of
/// the two the student is still learning. "N/A" where the teacher did not run
/// (a validation step without it).
///
/// ```
/// use burn_distill::train::DistillLossMetric;
/// use burn::train::metric::Metric;
///
/// assert_eq!(DistillLossMetric::soft().name().as_str(), "Soft loss");
/// assert_eq!(DistillLossMetric::hard().name().as_str(), "Hard loss");
/// ```
#[derive(Clone)]
pub struct DistillLossMetric {
    term: LossTerm,
    average: RowAverage,
}

impl DistillLossMetric {
    /// The metric of `term`.
    fn of(term: LossTerm) -> Self {
        let name = match term {
            LossTerm::Soft => "Soft loss",
            LossTerm::Hard => "Hard loss",
        };
        Self {
            term,
            average: RowAverage::new(name, None, 4),
        }
    }

    /// The soft term's metric.
    pub fn soft() -> Self {
        Self::of(LossTerm::Soft)
    }

    /// The hard term's metric.
    pub fn hard() -> Self {
        Self::of(LossTerm::Hard)
    }
}

impl DistillLossMetric {
    /// The batch's term and its rows (`None`: the teacher did not run).
    fn batch_value(
        &self,
        input: &DistillLossInput,
    ) -> Result<(Option<f64>, usize), TensorReadError> {
        let term = match self.term {
            LossTerm::Soft => input.soft.as_ref(),
            LossTerm::Hard => Some(&input.hard),
        };
        let value = match term {
            Some(term) => Some(term.clone().mean().try_into_scalar::<f64>()?),
            None => None,
        };
        Ok((value, input.rows))
    }
}

row_average_metric!(DistillLossMetric, DistillLossInput, higher_is_better: false);

/// The [`FeatureLossMetric`] input: the feature terms' values, read from a
/// [`DistillOutput`](super::DistillOutput).
#[derive(Debug, Clone)]
pub struct FeatureLossInput {
    /// Each term's value before weighting (empty: no feature terms ran).
    pub features: Vec<FeatureValue>,
    /// The rows they are averaged over (the metric's weight for this batch).
    pub rows: usize,
}

/// One feature term of a distiller, before weighting, averaged over the
/// epoch (weighted by batch rows): named `"Feature loss (<term>)"`, the term
/// as [`FeatureTerm::name`](crate::feature::FeatureTerm::name) names it.
/// "N/A" where the term did not run (a validation step without the teacher).
///
/// ```
/// use burn::train::metric::Metric;
/// use burn_distill::train::FeatureLossMetric;
///
/// let hint = FeatureLossMetric::new("hint block2");
/// assert_eq!(hint.name().as_str(), "Feature loss (hint block2)");
/// ```
#[derive(Clone)]
pub struct FeatureLossMetric {
    term: String,
    average: RowAverage,
}

impl FeatureLossMetric {
    /// The metric of the term named `term`.
    pub fn new(term: impl Into<String>) -> Self {
        let term = term.into();
        Self {
            average: RowAverage::new(&format!("Feature loss ({term})"), None, 4),
            term,
        }
    }

    /// The batch's value of the term and its rows (`None`: it did not run).
    fn batch_value(
        &self,
        input: &FeatureLossInput,
    ) -> Result<(Option<f64>, usize), TensorReadError> {
        let value = match input.features.iter().find(|term| term.name == self.term) {
            Some(term) => Some(term.value.clone().mean().try_into_scalar::<f64>()?),
            None => None,
        };
        Ok((value, input.rows))
    }
}

row_average_metric!(FeatureLossMetric, FeatureLossInput, higher_is_better: false);

/// The [`AgreementMetric`] input: the student's and the teacher's top-1
/// classes of the rows (or tokens) that count.
#[derive(Debug, Clone)]
pub struct AgreementInput {
    /// The student's most probable class per row, `[rows]`.
    pub student_top1: Tensor<1, Int>,
    /// The teacher's most probable class per row, `[rows]` (`None`: the
    /// teacher did not run).
    pub teacher_top1: Option<Tensor<1, Int>>,
}

/// Student–teacher top-1 agreement: the percentage of rows whose most
/// probable class is the same for both, averaged over the epoch.
///
/// A student can match the labels and still disagree with its teacher (or the
/// reverse); this is the number that says how far the distillation itself
/// has got. "N/A" where the teacher did not run.
///
/// ```
/// use burn::train::metric::Metric;
/// use burn_distill::train::AgreementMetric;
///
/// assert_eq!(AgreementMetric::new().name().as_str(), "Teacher agreement");
/// ```
#[derive(Clone)]
pub struct AgreementMetric {
    average: RowAverage,
}

impl Default for AgreementMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl AgreementMetric {
    /// The metric.
    pub fn new() -> Self {
        Self {
            average: RowAverage::new("Teacher agreement", Some("%"), 2),
        }
    }
}

impl AgreementMetric {
    /// The batch's agreement in percent and its rows (`None`: the teacher did
    /// not run).
    fn batch_value(&self, input: &AgreementInput) -> Result<(Option<f64>, usize), TensorReadError> {
        let [rows] = input.student_top1.dims();
        let Some(teacher) = &input.teacher_top1 else {
            return Ok((None, rows));
        };
        if rows == 0 {
            return Ok((None, 0));
        }
        let same = input
            .student_top1
            .clone()
            .equal(teacher.clone())
            .int()
            .sum()
            .try_into_scalar::<i64>()?;
        Ok((Some(100.0 * same as f64 / rows as f64), rows))
    }
}

row_average_metric!(AgreementMetric, AgreementInput, higher_is_better: true);

/// An epoch average weighted by batch rows, and its formatting: the state the
/// two metrics share. Reports "N/A" until a batch has counted.
#[derive(Clone)]
struct RowAverage {
    name: MetricName,
    unit: Option<&'static str>,
    precision: usize,
    state: NumericMetricState,
    /// Rows counted since the last clear.
    rows: usize,
}

impl RowAverage {
    fn new(name: &str, unit: Option<&'static str>, precision: usize) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            unit,
            precision,
            state: NumericMetricState::default(),
            rows: 0,
        }
    }

    fn format(&self) -> FormatOptions {
        let format = FormatOptions::new(self.name.clone()).precision(self.precision);
        match self.unit {
            Some(unit) => format.unit(unit),
            None => format,
        }
    }

    /// Counts `value` for `rows` rows; `None` or no rows (nothing to count)
    /// reports "N/A".
    fn update(&mut self, value: Option<f64>, rows: usize) -> SerializedEntry {
        match value {
            Some(value) if rows > 0 => {
                self.state.update(value, rows);
                self.rows += rows;
                self.state.compute_update(self.format())
            }
            _ => SerializedEntry::not_available(self.unit),
        }
    }

    fn compute(&self) -> SerializedEntry {
        if self.rows == 0 {
            SerializedEntry::not_available(self.unit)
        } else {
            self.state.compute_final(self.format())
        }
    }

    fn clear(&mut self) {
        self.state.reset();
        self.rows = 0;
    }

    fn attributes(&self, higher_is_better: bool) -> MetricAttributes {
        NumericAttributes {
            unit: self.unit.map(str::to_string),
            higher_is_better,
        }
        .into()
    }

    fn value(&self) -> Option<NumericEntry> {
        (self.rows > 0).then(|| self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        (self.rows > 0).then(|| self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}
