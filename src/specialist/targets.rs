//! One specialist: its subset `S`, its `|S| + 1` outputs (dustbin last), and the
//! maps between the full problem and those outputs.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::ClassSubset;
use crate::check::{check_temperature, check_width};
use crate::error::DistillError;

/// A specialist for the classes of a [`ClassSubset`] `S`: output `k < |S|` is
/// class `S[k]`, output `|S|` is the dustbin ("any other class").
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::specialist::{ClassSubset, Specialist};
///
/// let device = Device::flex();
/// let specialist = Specialist::new(ClassSubset::new(vec![2, 5], 6).unwrap());
/// let labels = Tensor::<1, Int>::from_ints([5, 0, 2, 3], &device);
/// let mapped: Vec<i64> = specialist.map_labels(labels)?.into_data().iter::<i64>().collect();
/// assert_eq!(mapped, vec![1, 2, 0, 2]); // 5 → 1, 2 → 0, others → dustbin 2
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specialist {
    subset: ClassSubset,
    /// For every class of the full problem, its output index.
    output_of_class: Vec<usize>,
}

impl Specialist {
    /// The specialist for `subset`.
    pub fn new(subset: ClassSubset) -> Self {
        let dustbin = subset.classes().len();
        let mut output_of_class = vec![dustbin; subset.num_classes()];
        for (k, &class) in subset.classes().iter().enumerate() {
            output_of_class[class] = k;
        }
        Self {
            subset,
            output_of_class,
        }
    }

    /// Its subset `S`.
    pub fn subset(&self) -> &ClassSubset {
        &self.subset
    }

    /// Number of outputs, `|S| + 1`.
    pub fn num_outputs(&self) -> usize {
        self.subset.classes().len() + 1
    }

    /// Index of the dustbin output, `|S|`.
    pub fn dustbin(&self) -> usize {
        self.subset.classes().len()
    }

    /// The output index of each class of the full problem (the dustbin for
    /// classes outside `S`).
    pub fn output_of_class(&self) -> &[usize] {
        &self.output_of_class
    }

    /// Maps full-problem labels `[batch]` to specialist outputs `[batch]`.
    ///
    /// # Errors
    /// On a label outside `0..C` (the labels' range is read back from the
    /// device to check it).
    pub fn map_labels(&self, labels: Tensor<1, Int>) -> Result<Tensor<1, Int>, DistillError> {
        crate::check::check_index_bounds("labels", &labels, self.subset.num_classes())?;
        let table: Vec<i64> = self.output_of_class.iter().map(|&o| o as i64).collect();
        let table = Tensor::<1, Int>::from_data(
            TensorData::new(table, [self.subset.num_classes()]),
            &labels.device(),
        );
        Ok(table.gather(0, labels))
    }

    /// The `[C, |S| + 1]` 0/1 matrix `A` with `A[c, output_of_class(c)] = 1`:
    /// `probs · A` sums each row's probabilities into the specialist's outputs.
    pub(crate) fn aggregation_matrix(&self, device: &Device) -> Tensor<2> {
        let (c, k) = (self.subset.num_classes(), self.num_outputs());
        let mut a = vec![0.0f32; c * k];
        for (class, &output) in self.output_of_class.iter().enumerate() {
            a[class * k + output] = 1.0;
        }
        Tensor::from_data(TensorData::new(a, [c, k]), device)
    }

    /// Collapses full-problem probabilities `[batch, C]` to `[batch, |S| + 1]`:
    /// the subset's columns, and the dustbin as the sum of all others. Rows keep
    /// their total probability.
    ///
    /// # Errors
    /// If `probs` does not have `C` columns.
    pub fn collapse_probs(&self, probs: Tensor<2>) -> Result<Tensor<2>, DistillError> {
        self.check_width("probs", &probs)?;
        let a = self.aggregation_matrix(&probs.device()).cast(probs.dtype());
        Ok(probs.matmul(a))
    }

    /// Collapses full-problem logits `[batch, C]` at temperature `T` to
    /// `[batch, |S| + 1]` logits with the same meaning: the subset's logits
    /// unchanged, and the dustbin logit `T · logsumexp(v_rest / T)`, so that
    /// `softmax(collapsed / T)` equals [`collapse_probs`](Self::collapse_probs) of
    /// `softmax(v / T)`. For fine-tuning a specialist on the generalist's soft
    /// targets with [`KdLoss`](crate::KdLoss) at the same `T`.
    ///
    /// # Errors
    /// On a bad width or temperature.
    pub fn collapse_logits(
        &self,
        logits: Tensor<2>,
        temperature: f64,
    ) -> Result<Tensor<2>, DistillError> {
        self.check_width("logits", &logits)?;
        check_temperature("temperature", temperature)?;
        let [batch, classes] = logits.dims();
        let device = logits.device();
        let subset = self.index_tensor(&device);
        let kept = logits.clone().select(1, subset);
        if self.subset.classes().len() == classes {
            // Nothing outside S: the dustbin is impossible.
            let dustbin =
                Tensor::<2>::full([batch, 1], f32::NEG_INFINITY, (&device, logits.dtype()));
            return Ok(Tensor::cat(vec![kept, dustbin], 1));
        }
        let in_subset: Vec<bool> = (0..classes).map(|c| self.subset.contains(c)).collect();
        let mask = Tensor::<1, burn::tensor::Bool>::from_data(
            TensorData::new(in_subset, [classes]),
            &device,
        )
        .reshape([1, classes])
        .expand([batch, classes]);
        let rest = logits
            .mask_fill(mask, f32::NEG_INFINITY)
            .mul_scalar(1.0 / temperature);
        let max = rest.clone().max_dim(1);
        let dustbin = ((rest - max.clone()).exp().sum_dim(1).log() + max).mul_scalar(temperature);
        Ok(Tensor::cat(vec![kept, dustbin], 1))
    }

    /// Adds `correction` to the dustbin column of specialist logits `[batch, |S| + 1]`.
    ///
    /// Use [`SpecialistSampler::dustbin_logit_correction`](super::SpecialistSampler::dustbin_logit_correction):
    /// training on half subset / half rest makes the specialist believe in the
    /// subset more than the data warrant; adding the log of the oversampling ratio
    /// to the dustbin logit undoes that prior shift (the paper's §5 correction).
    ///
    /// Soft targets from the generalist carry the data's prior, not the
    /// oversampled one: a specialist trained on both would get the correction
    /// on the labels' part only. Shift the collapsed soft targets to the
    /// training prior first, `correct_dustbin(collapse_logits(v, T), −correction)`,
    /// so that the one correction at test time undoes the shift of both.
    ///
    /// # Errors
    /// If `logits` does not have `|S| + 1` columns or `correction` is not
    /// finite.
    pub fn correct_dustbin(
        &self,
        logits: Tensor<2>,
        correction: f64,
    ) -> Result<Tensor<2>, DistillError> {
        self.check_outputs("logits", &logits)?;
        if !correction.is_finite() {
            return Err(DistillError::NotFinite {
                argument: "correction",
                value: correction,
            });
        }
        let [batch, k] = logits.dims();
        let mut bias = vec![0.0f32; k];
        bias[k - 1] = correction as f32;
        let bias = Tensor::<2>::from_data(
            TensorData::new(bias, [1, k]),
            (&logits.device(), logits.dtype()),
        );
        Ok(logits + bias.expand([batch, k]))
    }

    /// The specialist's output layer cut from the generalist's (the paper's
    /// specialists start from the generalist's weights): the generalist's
    /// output units for the subset's classes, in order, then one dustbin unit
    /// whose weights and bias are the mean of the other classes' units (zero
    /// weights and a bias of −10⁴ when the subset holds every class). Detached from any graph, on the generalist layer's device; give it
    /// the generalist's hidden layers to make the whole specialist.
    ///
    /// ```
    /// use burn::nn::LinearConfig;
    /// use burn::tensor::Device;
    /// use burn_distill::specialist::{ClassSubset, Specialist};
    ///
    /// let device = Device::flex();
    /// let generalist_output = LinearConfig::new(8, 5).init(&device); // 8 hidden → 5 classes
    /// let specialist = Specialist::new(ClassSubset::new(vec![1, 3], 5).unwrap());
    /// let layer = specialist.output_layer(&generalist_output);
    /// assert_eq!(layer.weight.dims(), [8, 3]); // classes 1, 3 and the dustbin
    /// let w = generalist_output.weight.val().into_data().to_vec::<f32>().unwrap();
    /// let cut = layer.weight.val().into_data().to_vec::<f32>().unwrap();
    /// assert_eq!(cut[0], w[1]); // row 0: class 1's weight…
    /// assert!((cut[2] - (w[0] + w[2] + w[4]) / 3.0).abs() < 1e-6); // …and the dustbin's
    /// ```
    ///
    /// # Panics
    /// If the layer does not have one output per class of the full problem.
    pub fn output_layer(&self, generalist_output: &Linear) -> Linear {
        let [_, outputs] = generalist_output.weight.dims();
        let classes = self.subset.num_classes();
        assert_eq!(
            outputs, classes,
            "generalist_output has {outputs} outputs but the subset's problem has {classes} classes"
        );
        let device = generalist_output.weight.val().device();
        let rest: Vec<i64> = (0..classes)
            .filter(|&c| !self.subset.contains(c))
            .map(|c| c as i64)
            .collect();
        let rest = (!rest.is_empty()).then(|| {
            Tensor::<1, Int>::from_data(TensorData::new(rest.clone(), [rest.len()]), &device)
        });
        let subset = self.index_tensor(&device);
        let w = generalist_output.weight.val().detach(); // [hidden, classes]
        let dustbin_w = match &rest {
            Some(rest) => w.clone().select(1, rest.clone()).mean_dim(1),
            // No class outside S: the dustbin never fires.
            None => w.clone().slice([0..w.dims()[0], 0..1]).zeros_like(),
        };
        let weight = Tensor::cat(vec![w.select(1, subset.clone()), dustbin_w], 1);
        let bias = generalist_output.bias.as_ref().map(|b| {
            let b = b.val().detach();
            let dustbin_b = match &rest {
                Some(rest) => b.clone().select(0, rest.clone()).mean_dim(0),
                None => Tensor::<1>::full([1], -1e4, (&b.device(), b.dtype())),
            };
            Param::from_tensor(Tensor::cat(vec![b.select(0, subset), dustbin_b], 0).detach())
        });
        // Fresh leaves (an autodiff device would refuse to track a result).
        Linear {
            weight: Param::from_tensor(weight.detach()),
            bias,
        }
    }

    /// The subset's classes as an index tensor.
    pub(crate) fn index_tensor(&self, device: &Device) -> Tensor<1, Int> {
        let idx: Vec<i64> = self.subset.classes().iter().map(|&c| c as i64).collect();
        Tensor::from_data(TensorData::new(idx, [self.subset.classes().len()]), device)
    }

    /// A `[C]` 0/1 float vector marking the subset's classes.
    pub(crate) fn membership(&self, device: &Device) -> Tensor<1> {
        let m: Vec<f32> = (0..self.subset.num_classes())
            .map(|c| if self.subset.contains(c) { 1.0 } else { 0.0 })
            .collect();
        Tensor::from_data(TensorData::new(m, [self.subset.num_classes()]), device)
    }

    /// `t` has one column per class of the full problem.
    fn check_width(&self, argument: &'static str, t: &Tensor<2>) -> Result<(), DistillError> {
        check_columns(argument, t, self.subset.num_classes())
    }

    /// `t` has one column per specialist output.
    pub(crate) fn check_outputs(
        &self,
        argument: &'static str,
        t: &Tensor<2>,
    ) -> Result<(), DistillError> {
        check_columns(argument, t, self.num_outputs())
    }
}

fn check_columns(
    argument: &'static str,
    t: &Tensor<2>,
    expected: usize,
) -> Result<(), DistillError> {
    check_width(argument, t.dims()[1], expected)
}
