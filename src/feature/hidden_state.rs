//! The hidden-state loss: a per-position distance between the student's and
//! the teacher's hidden states, with the language-model losses' positions,
//! masks and reductions.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::Tensor;

use crate::check::{ValueChecks, check_device, check_non_empty, check_same_shape};
use crate::display::one_line_display;
use crate::error::{DistillError, or_panic};
use crate::reduction::Reducer;
use crate::shape::{LogitsShape, flatten_rows, positions_of};
use crate::targets::{Targets, blank_left_out_rows};
use crate::temperature::compute_dtype;

/// The per-position distance of a [`HiddenStateLoss`].
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum HiddenStateDistance {
    /// `mean_j (s_j − t_j)²` over the `d` features: PyTorch's `mse_loss` of a
    /// position (DistillKit's `hs_mse`).
    Mse,
    /// `1 − s·t / (max(‖s‖, ε) · max(‖t‖, ε))`, `ε = 1e-8`: one minus PyTorch's
    /// `cosine_similarity` (DistilBERT, DistillKit's `hs_cosine`, NeMo).
    Cosine,
}

/// Configuration of a [`HiddenStateLoss`].
#[derive(Config, Debug)]
pub struct HiddenStateLossConfig {
    /// The per-position distance. Default: cosine, as DistilBERT and NeMo use.
    #[config(default = "HiddenStateDistance::Cosine")]
    pub distance: HiddenStateDistance,
}

impl HiddenStateLossConfig {
    /// The loss.
    pub fn init(&self) -> HiddenStateLoss {
        HiddenStateLoss {
            distance: self.distance,
        }
    }
}

/// A distance between the student's and the teacher's hidden states, per
/// position, reduced over the positions that count; build it with
/// [`HiddenStateLossConfig`]. The teacher's states get no gradient.
///
/// # Shapes
/// - `student_hidden`: `[rows, d]`, or a language model's `[batch, seq, d]`,
///   any float dtype (f16 and bf16 are computed in f32 and the result given
///   back in their dtype); project it to the teacher's width first where the
///   widths differ
/// - `teacher_hidden`: the same shape, on the same device
/// - `targets`: [`Targets`] with the positions' padding mask (`true` =
///   padding) or row mask, and the reduction; its labels, if any, are not used
///   ([`Targets::unlabelled`] for none)
/// - output: `[1]`, or the positions' shape without reduction
///
/// # Example
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use burn_distill::Targets;
/// use burn_distill::feature::{HiddenStateDistance, HiddenStateLossConfig};
///
/// let device = Device::flex();
/// let student = Tensor::<3>::from_floats([[[3.0, 4.0], [1.0, 0.0], [9.0, 9.0]]], &device);
/// let teacher = Tensor::<3>::from_floats([[[6.0, 8.0], [0.0, 1.0], [1.0, -1.0]]], &device);
/// // The last position is padding: it does not count.
/// let padding = Tensor::<2, Bool>::from_data([[false, false, true]], &device);
/// let targets = Targets::unlabelled().with_padding_mask(padding);
///
/// let cosine = HiddenStateLossConfig::new().init();
/// // Parallel: 0; orthogonal: 1; their mean over the two counted positions.
/// let loss = cosine.forward(student.clone(), teacher.clone(), targets.clone());
/// assert!((loss.into_scalar::<f32>() - 0.5).abs() < 1e-6);
///
/// let mse = HiddenStateLossConfig::new().with_distance(HiddenStateDistance::Mse).init();
/// let per_position = mse.forward_no_reduction(student, teacher, targets);
/// assert_eq!(per_position.to_data().to_vec::<f32>().unwrap(), vec![12.5, 1.0, 0.0]);
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct HiddenStateLoss {
    #[module(skip)]
    distance: HiddenStateDistance,
}

impl ModuleDisplay for HiddenStateLoss {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        one_line_display()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("distance", &format!("{:?}", self.distance))
            .optional()
    }
}

/// `max(‖x‖, ε)` of the cosine distance.
const COSINE_EPSILON: f64 = 1e-8;

impl HiddenStateLoss {
    /// The per-position distance.
    pub fn distance(&self) -> HiddenStateDistance {
        self.distance
    }

    /// The distance averaged (or summed, as the targets' reduction says) over
    /// the positions that count, `[1]`.
    ///
    /// # Panics
    /// On bad input, with the message of the error [`check`](Self::check)
    /// returns.
    pub fn forward<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
        targets: Targets,
    ) -> Tensor<1>
    where
        Tensor<D>: LogitsShape,
    {
        or_panic(self.try_forward(student_hidden, teacher_hidden, targets))
    }

    /// The distance per position, 0 where a position does not count, in the
    /// positions' shape (`[rows]` or `[batch, seq]`).
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
        targets: Targets,
    ) -> <Tensor<D> as LogitsShape>::PerPosition
    where
        Tensor<D>: LogitsShape,
    {
        let positions = positions_of(&student_hidden);
        let (values, reducer, dtype) = or_panic(self.rows(student_hidden, teacher_hidden, targets));
        <Tensor<D> as LogitsShape>::per_position(
            reducer.per_position(values).cast(dtype),
            &positions,
        )
    }

    /// Checks the input as the forwards do, reading values back (see the
    /// crate's docs, "Checks"): shapes, devices, the targets' masks and a
    /// `GlobalCount(0)` with positions kept.
    pub fn check<const D: usize>(
        &self,
        student_hidden: &Tensor<D>,
        teacher_hidden: &Tensor<D>,
        targets: &Targets,
    ) -> Result<(), DistillError>
    where
        Tensor<D>: LogitsShape,
    {
        let (student, teacher, positions) =
            flattened(student_hidden.clone(), teacher_hidden.clone())?;
        check_rows(&student, &teacher, targets, &positions, ValueChecks::Read).map(|_| ())
    }

    /// [`forward`](Self::forward), or the error its checks found.
    pub(super) fn try_forward<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
        targets: Targets,
    ) -> Result<Tensor<1>, DistillError> {
        let (values, reducer, dtype) = self.rows(student_hidden, teacher_hidden, targets)?;
        Ok(reducer.reduce(values).cast(dtype))
    }

    /// The per-position distances and how to reduce them, after the checks.
    fn rows<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
        targets: Targets,
    ) -> Result<(Tensor<1>, Reducer, burn::tensor::DType), DistillError> {
        let (student, teacher, positions) = flattened(student_hidden, teacher_hidden)?;
        let values = ValueChecks::for_forward(&student.device());
        let bad = check_rows(&student, &teacher, &targets, &positions, values)?;
        let dtype = student.dtype();
        let compute = compute_dtype(dtype);
        let keep = targets.kept_rows(None);
        let weights = targets.position_weights(keep.as_ref(), &positions, compute);
        // Left-out rows zeroed first, so that autodiff's zero upstream
        // gradient there meets no non-finite local derivative.
        let student = blank_left_out_rows(student.cast(compute), keep.as_ref());
        let teacher = blank_left_out_rows(teacher.detach().cast(compute), keep.as_ref());
        let rows = match self.distance {
            HiddenStateDistance::Mse => mse_rows(student, teacher),
            HiddenStateDistance::Cosine => cosine_rows(student, teacher),
        };
        Ok((rows, Reducer { keep, weights, bad }, dtype))
    }
}

/// Both states as `[positions, d]` rows, their shapes checked equal.
fn flattened<const D: usize>(
    student_hidden: Tensor<D>,
    teacher_hidden: Tensor<D>,
) -> Result<(Tensor<2>, Tensor<2>, Vec<usize>), DistillError> {
    check_same_shape(
        "student_hidden",
        &student_hidden.dims(),
        "teacher_hidden",
        &teacher_hidden.dims(),
    )?;
    let positions = positions_of(&student_hidden);
    Ok((
        flatten_rows(student_hidden),
        flatten_rows(teacher_hidden),
        positions,
    ))
}

/// The checks of [`HiddenStateLoss::check`] on the flattened states.
fn check_rows(
    student: &Tensor<2>,
    teacher: &Tensor<2>,
    targets: &Targets,
    positions: &[usize],
    values: ValueChecks,
) -> Result<crate::check::BadPositions, DistillError> {
    check_pair(student, teacher)?;
    // The labels play no part: checked as absent.
    targets.without_labels().check(
        "student_hidden",
        student,
        student.dims()[1],
        positions,
        None,
        values,
    )
}

/// `mean_j (s_j − t_j)²` per row of `[rows, d]` states, `[rows]`: the
/// reference form of [`HiddenStateDistance::Mse`].
///
/// # Panics
/// If the shapes differ, a tensor is empty or they are on two devices, naming
/// both arguments.
pub fn hidden_state_mse(student_hidden: Tensor<2>, teacher_hidden: Tensor<2>) -> Tensor<1> {
    or_panic(check_pair(&student_hidden, &teacher_hidden));
    mse_rows(student_hidden, teacher_hidden)
}

/// `1 − s·t / (max(‖s‖, ε) · max(‖t‖, ε))` per row of `[rows, d]` states,
/// `ε = 1e-8`, `[rows]`: 0 for parallel states, 1 for orthogonal ones (and
/// where either is 0), 2 for opposite ones — the reference form of
/// [`HiddenStateDistance::Cosine`]. The norms are taken as `√max(‖x‖², ε²)`,
/// so a zero row has a finite gradient.
///
/// # Panics
/// As [`hidden_state_mse`].
pub fn hidden_state_cosine(student_hidden: Tensor<2>, teacher_hidden: Tensor<2>) -> Tensor<1> {
    or_panic(check_pair(&student_hidden, &teacher_hidden));
    cosine_rows(student_hidden, teacher_hidden)
}

/// Shapes equal, not empty, one device.
fn check_pair(student: &Tensor<2>, teacher: &Tensor<2>) -> Result<(), DistillError> {
    check_same_shape(
        "student_hidden",
        &student.dims(),
        "teacher_hidden",
        &teacher.dims(),
    )?;
    check_non_empty("student_hidden", &student.dims())?;
    check_device("student_hidden", student, "teacher_hidden", teacher)
}

fn mse_rows(student_hidden: Tensor<2>, teacher_hidden: Tensor<2>) -> Tensor<1> {
    let [rows, _] = student_hidden.dims();
    (student_hidden - teacher_hidden)
        .powi_scalar(2)
        .mean_dim(1)
        .reshape([rows])
}

fn cosine_rows(student_hidden: Tensor<2>, teacher_hidden: Tensor<2>) -> Tensor<1> {
    let [rows, _] = student_hidden.dims();
    let norm = |x: Tensor<2>| {
        x.powi_scalar(2)
            .sum_dim(1)
            .clamp_min(COSINE_EPSILON * COSINE_EPSILON)
            .sqrt()
    };
    let dot = (student_hidden.clone() * teacher_hidden.clone()).sum_dim(1);
    let cosine = dot / (norm(student_hidden) * norm(teacher_hidden));
    cosine.neg().add_scalar(1.0).reshape([rows])
}
