//! Relational knowledge distillation: the structure of a batch's embeddings —
//! their distances and angles — rather than the embeddings themselves.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::Tensor;

use crate::check::{check_device, check_non_empty, check_rank, check_weight, shape_mismatch};
use crate::display::one_line_display;
use crate::error::{DistillError, or_panic};
use crate::temperature::compute_dtype;

/// Configuration of an [`RkdLoss`].
#[derive(Config, Debug)]
pub struct RkdLossConfig {
    /// `λ_D`, the weight of the distance term. Default: 1, the paper's.
    #[config(default = 1.0)]
    pub distance_weight: f64,
    /// `λ_A`, the weight of the angle term. Default: 2, the paper's.
    #[config(default = 2.0)]
    pub angle_weight: f64,
}

impl RkdLossConfig {
    /// The loss.
    ///
    /// # Panics
    /// On a negative or non-finite weight, with the message of the error
    /// [`try_init`](Self::try_init) returns.
    pub fn init(&self) -> RkdLoss {
        or_panic(self.try_init())
    }

    /// [`init`](Self::init), or [`DistillError::InvalidWeight`] naming the
    /// weight.
    pub fn try_init(&self) -> Result<RkdLoss, DistillError> {
        check_weight("distance_weight", self.distance_weight)?;
        check_weight("angle_weight", self.angle_weight)?;
        Ok(RkdLoss {
            distance_weight: self.distance_weight,
            angle_weight: self.angle_weight,
        })
    }
}

/// Relational knowledge distillation (Park et al. 2019, eq. 4–7):
/// `λ_D · `[`rkd_distance`]` + λ_A · `[`rkd_angle`], the Huber distance between
/// the student's and the teacher's pairwise distances (each normalised by its
/// mean) and between their angles of every triple, over the batch. Student
/// and teacher may have different widths; only the batch's structure is
/// compared. The teacher's side gets no gradient. A term of weight 0 is not
/// computed (with both 0 the loss is 0, its gradient 0).
///
/// Distances and angles come from the batch's Gram matrix (centred), not
/// from a `batch² · width` tensor of differences: one `batch² · width`
/// matmul and `batch³` values for the angles (2 Mi at a batch of 128). In
/// f32, pairs closer than about `10⁻³ · width^¼` of their norms count as
/// coinciding (the Gram form's rounding): at the distance floor, without
/// direction or gradient.
///
/// # Shapes
/// - `student_embeddings`: `[batch, …]`, flattened to `[batch, width]`, a
///   batch of at least 2; any float dtype (f16 and bf16 are computed in f32
///   and the result given back in their dtype)
/// - `teacher_embeddings`: `[batch, …]`, the same batch, on the same device
/// - output: `[1]` (the loss is over the whole batch: there is no
///   per-example form)
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::feature::RkdLossConfig;
///
/// let device = Device::flex();
/// let teacher = Tensor::<2>::from_floats([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], &device);
/// // The same triangle, scaled and moved, in 3 dimensions: the same
/// // normalised distances and the same angles.
/// let student = Tensor::<2>::from_floats(
///     [[1.0, 1.0, 7.0], [7.0, 1.0, 7.0], [1.0, 9.0, 7.0]],
///     &device,
/// );
/// let loss = RkdLossConfig::new().init().forward(student, teacher);
/// assert!(loss.into_scalar::<f32>().abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct RkdLoss {
    #[module(skip)]
    distance_weight: f64,
    #[module(skip)]
    angle_weight: f64,
}

impl ModuleDisplay for RkdLoss {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        one_line_display()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("distance_weight", &self.distance_weight)
            .add("angle_weight", &self.angle_weight)
            .optional()
    }
}

/// The floor of squared distances (PyTorch's `pdist` in the authors' code)
/// and of the norms of differences (`F.normalize`).
const EPSILON: f64 = 1e-12;

impl RkdLoss {
    /// `λ_D · distance + λ_A · angle`, `[1]`.
    ///
    /// # Panics
    /// On bad input, with the message of the error [`check`](Self::check)
    /// returns.
    pub fn forward<const D: usize>(
        &self,
        student_embeddings: Tensor<D>,
        teacher_embeddings: Tensor<D>,
    ) -> Tensor<1> {
        or_panic(self.check(&student_embeddings, &teacher_embeddings));
        let dtype = student_embeddings.dtype();
        let student = Gram::new(student_embeddings.flatten::<2>(1, D - 1));
        let teacher = Gram::new(teacher_embeddings.detach().flatten::<2>(1, D - 1));
        // With both weights 0 the distance term (× 0) still links the loss to
        // the student, so that `backward` finds a graph (of zero gradients).
        let distance = (self.distance_weight > 0.0 || self.angle_weight == 0.0)
            .then(|| distance_term(&student, &teacher).mul_scalar(self.distance_weight));
        let angle = (self.angle_weight > 0.0)
            .then(|| angle_term(&student, &teacher).mul_scalar(self.angle_weight));
        match (distance, angle) {
            (Some(distance), Some(angle)) => distance + angle,
            (Some(term), None) | (None, Some(term)) => term,
            (None, None) => unreachable!("one term is always computed"),
        }
        .cast(dtype)
    }

    /// Checks the input as [`forward`](Self::forward) does: a rank of at
    /// least 2, a batch of at least 2 shared by both, nothing empty, one
    /// device.
    pub fn check<const D: usize>(
        &self,
        student_embeddings: &Tensor<D>,
        teacher_embeddings: &Tensor<D>,
    ) -> Result<(), DistillError> {
        check_pair(student_embeddings, teacher_embeddings)
    }
}

/// RKD's distance term (Park et al. 2019, eq. 4–5): with
/// `ψ_D(x_i, x_j) = ‖x_i − x_j‖₂ / μ`, `μ` the mean distance over the pairs
/// `i ≠ j` of the batch, the mean over every pair `(i, j)` (`batch²` of them,
/// the diagonal's terms 0) of `Huber(ψ_D(s_i, s_j) − ψ_D(t_i, t_j))`, Huber
/// being PyTorch's `smooth_l1_loss` with `β = 1` (`½x²` for `|x| < 1`,
/// `|x| − ½` beyond). Distances are `√max(‖x_i − x_j‖², 1e-12)`, as the
/// authors' `pdist` floors them, so two equal embeddings have a finite
/// gradient. The teacher's side is detached. `[1]`.
///
/// # Shapes
/// - `student_embeddings`: `[batch, width]`, a batch of at least 2
/// - `teacher_embeddings`: `[batch, teacher_width]`
///
/// # Panics
/// On bad input (as [`RkdLoss::check`]), naming the argument.
pub fn rkd_distance(student_embeddings: Tensor<2>, teacher_embeddings: Tensor<2>) -> Tensor<1> {
    or_panic(check_pair(&student_embeddings, &teacher_embeddings));
    let dtype = student_embeddings.dtype();
    let student = Gram::new(student_embeddings);
    let teacher = Gram::new(teacher_embeddings.detach());
    distance_term(&student, &teacher).cast(dtype)
}

/// RKD's angle term (Park et al. 2019, eq. 6–7): with
/// `ψ_A(x_i, x_j, x_k) = ⟨e_ij, e_ik⟩`, `e_ij = (x_j − x_i) / ‖x_j − x_i‖`
/// (the cosine of the angle at `x_i`; `e_ij = 0` where `x_j` and `x_i`
/// coincide, within `‖x_j − x_i‖ ≤ 1e-12`, with no gradient — PyTorch's
/// `F.normalize` gives the same value there, but a gradient of about 1e12, as
/// it divides by the floor), the mean
/// over every triple (`batch³` of them) of
/// `Huber(ψ_A(s_i, s_j, s_k) − ψ_A(t_i, t_j, t_k))`, Huber as in
/// [`rkd_distance`]. The teacher's side is detached. `[1]`.
///
/// # Shapes
/// As [`rkd_distance`].
///
/// # Panics
/// As [`rkd_distance`].
pub fn rkd_angle(student_embeddings: Tensor<2>, teacher_embeddings: Tensor<2>) -> Tensor<1> {
    or_panic(check_pair(&student_embeddings, &teacher_embeddings));
    let dtype = student_embeddings.dtype();
    let student = Gram::new(student_embeddings);
    let teacher = Gram::new(teacher_embeddings.detach());
    angle_term(&student, &teacher).cast(dtype)
}

/// A batch's geometry from its Gram matrix: `G = X Xᵀ` of the embeddings
/// centred on their mean (distances and angles do not move with the batch,
/// and centring keeps the Gram form's cancellation small), in the compute
/// dtype. Every distance and angle is a combination of `G`'s entries —
/// `‖x_j − x_i‖² = G_ii + G_jj − 2 G_ij`,
/// `⟨x_j − x_i, x_k − x_i⟩ = G_jk − G_ij − G_ik + G_ii` — so the cost is one
/// `batch² · width` matmul and `batch³` element-wise work, with no
/// `batch² · width` tensor of differences (15× faster than the differences
/// at a batch of 128, 2,048 wide; BENCHMARKS.md).
struct Gram {
    gram: Tensor<2>,
    /// `G_ii`, `[batch, 1]`.
    diagonal: Tensor<2>,
    /// `‖x_j − x_i‖²`, `[batch, batch]`, at least 0.
    squared: Tensor<2>,
    /// The pairs whose points coincide within the Gram form's rounding
    /// (the diagonal among them): no distance beyond the floor, no direction.
    coincide: Tensor<2, burn::tensor::Bool>,
}

impl Gram {
    fn new(embeddings: Tensor<2>) -> Self {
        let compute = compute_dtype(embeddings.dtype());
        let embeddings = embeddings.cast(compute);
        let [batch, width] = embeddings.dims();
        let centred = embeddings.clone() - embeddings.mean_dim(0);
        let gram = centred.clone().matmul(centred.transpose());
        let diagonal = (gram.clone() * identity(batch, &gram))
            .sum_dim(1)
            .reshape([batch, 1]);
        let norms = diagonal.clone() + diagonal.clone().transpose();
        let squared = (norms.clone() - gram.clone().mul_scalar(2.0)).clamp_min(0.0);
        // The rounding of `G_ii + G_jj − 2 G_ij`: a few units of the dtype's
        // epsilon per √width terms of the sums, relative to `G_ii + G_jj`.
        let epsilon = if compute == burn::tensor::DType::F64 {
            f64::EPSILON
        } else {
            f32::EPSILON as f64
        };
        let tolerance = 4.0 * epsilon * (width as f64).sqrt();
        let coincide = squared
            .clone()
            .lower_equal(norms.mul_scalar(tolerance).add_scalar(EPSILON));
        Self {
            gram,
            diagonal,
            squared,
            coincide,
        }
    }

    fn batch(&self) -> usize {
        self.gram.dims()[0]
    }

    /// `ψ_D`: the distances over their mean off the diagonal; 0 on it.
    /// Distances are `√max(‖x_j − x_i‖², 1e-12)`, as the authors' `pdist`
    /// floors them, and coinciding points sit at that floor with no gradient.
    fn normalized_distances(&self) -> Tensor<2> {
        let batch = self.batch();
        let distances = self
            .squared
            .clone()
            .clamp_min(EPSILON)
            .sqrt()
            .mask_fill(self.coincide.clone(), EPSILON.sqrt())
            * (identity(batch, &self.gram).neg().add_scalar(1.0));
        // × 1/count, not ÷ count: burn-autodiff 0.22.1 takes `div_scalar`'s
        // gradient through an f32 reciprocal (5e-8 off in f64).
        let mean = distances
            .clone()
            .sum()
            .mul_scalar(1.0 / (batch * (batch - 1)) as f64);
        distances / mean.reshape([1, 1])
    }

    /// `ψ_A`, `[batch, batch, batch]`: entry `(i, j, k)` is `⟨e_ij, e_ik⟩`,
    /// `⟨x_j − x_i, x_k − x_i⟩ / (‖x_j − x_i‖ ‖x_k − x_i‖)`.
    ///
    /// Where `x_j` and `x_i` coincide, `e_ij` is 0 and carries no gradient:
    /// the direction is undefined there. (PyTorch's `F.normalize` divides by
    /// its floor, a gradient of about 1e12 on two equal embeddings — one
    /// duplicate in a batch would wreck a step.)
    fn angles(&self) -> Tensor<3> {
        let n = self.batch();
        let cube = [n, n, n];
        let g = &self.gram;
        // G_jk − G_ij − G_ik + G_ii at (i, j, k).
        let inner = g.clone().unsqueeze_dim::<3>(0).expand(cube)
            - g.clone().unsqueeze_dim::<3>(2).expand(cube)
            - g.clone().unsqueeze_dim::<3>(1).expand(cube)
            + self.diagonal.clone().reshape([n, 1, 1]).expand(cube);
        let inverse = self
            .squared
            .clone()
            .clamp_min(EPSILON * EPSILON)
            .sqrt()
            .recip()
            .mask_fill(self.coincide.clone(), 0.0);
        inner
            * inverse.clone().unsqueeze_dim::<3>(2).expand(cube)
            * inverse.unsqueeze_dim::<3>(1).expand(cube)
    }
}

/// `I`, `[batch, batch]`, in `like`'s dtype and device.
fn identity(batch: usize, like: &Tensor<2>) -> Tensor<2> {
    Tensor::<2>::eye(batch, &like.device()).cast(like.dtype())
}

fn distance_term(student: &Gram, teacher: &Gram) -> Tensor<1> {
    huber_mean(student.normalized_distances() - teacher.normalized_distances())
}

fn angle_term(student: &Gram, teacher: &Gram) -> Tensor<1> {
    huber_mean(student.angles() - teacher.angles())
}

/// The mean of PyTorch's `smooth_l1_loss` (`β = 1`) of the differences:
/// `q (|x| − q/2)` with `q = min(|x|, 1)`, which is `½x²` below 1 and
/// `|x| − ½` beyond, with the same gradient.
fn huber_mean<const D: usize>(difference: Tensor<D>) -> Tensor<1> {
    let size = difference.abs();
    let inner = size.clone().clamp_max(1.0);
    (inner.clone() * (size - inner.mul_scalar(0.5))).mean()
}

/// Rank at least 2, batches of at least 2 and equal, nothing empty, one
/// device.
fn check_pair<const D: usize>(
    student_embeddings: &Tensor<D>,
    teacher_embeddings: &Tensor<D>,
) -> Result<(), DistillError> {
    check_rank(
        "student_embeddings",
        D,
        2,
        "a rank of at least 2: [batch, features…]",
    )?;
    let (student, teacher) = (student_embeddings.dims(), teacher_embeddings.dims());
    check_non_empty("student_embeddings", &student)?;
    check_non_empty("teacher_embeddings", &teacher)?;
    if student[0] < 2 {
        return Err(DistillError::InvalidParameter {
            argument: "student_embeddings",
            value: student[0],
            requirement: "a batch of at least 2 examples: RKD compares pairs",
        });
    }
    if teacher[0] != student[0] {
        return Err(shape_mismatch(
            "teacher_embeddings rows",
            &[teacher[0]],
            "student_embeddings rows",
            &[student[0]],
            "they must have the same batch size",
        ));
    }
    check_device(
        "student_embeddings",
        student_embeddings,
        "teacher_embeddings",
        teacher_embeddings,
    )
}
