//! Combining a generalist with its specialists at inference (eq. 5 of §5).
//!
//! For each example, with generalist probabilities `p^g` and the probabilities
//! `p^m` of the active specialists (those whose subset meets the generalist's
//! top-n classes), find the full distribution `q` minimising
//!
//! ```text
//! J(q) = KL(p^g ‖ q) + Σ_{m active} KL(p^m ‖ A_m q)
//! ```
//!
//! where `A_m q` sums `q` over the classes outside `S_m` into the dustbin. Because
//! every `A_m` only adds up groups of classes, `J` has a parameter-free EM
//! (majorise–minimise) update that never increases it:
//!
//! ```text
//! q_i ← [ p^g_i + Σ_m q_i · p^m_{g_m(i)} / (A_m q)_{g_m(i)} ] / (1 + |active|)
//! ```
//!
//! with `g_m(i)` the output of specialist `m` that class `i` falls in. All rows are
//! updated at once, each with its own active set.
//!
//! The start is exact when one specialist is active (the dustbin's mass split
//! in the generalist's proportions, the only evidence on how it divides). With
//! several, EM slows to a crawl where they disagree (one sure of its dustbin,
//! the others of its subset: the update's rate nears 1), so each iteration is
//! an accelerated step, SQUAREM (Varadhan & Roland 2008, scheme S3): two EM
//! updates, an extrapolation along them, one more EM update from there, and
//! the plain two updates instead wherever that would leave the simplex or
//! raise `J`. `J` still never increases.

use burn::config::Config;
use burn::tensor::{Bool, IndexingUpdateOp, Tensor, TensorData};

use super::combine_host::{HostSpecialist, combine_rows};

use super::Specialist;
use crate::check::{check_device, indexed, shape_mismatch};
use crate::divergence::forward_kl_unchecked;
use crate::error::{DistillError, or_panic};

/// Denominators below this are treated as this: a group the current `q` gives
/// (numerically) no mass gets a finite ratio instead of 0/0. One value for the
/// tensor and the host solvers (representable in f32), so that they solve the
/// same problem.
pub(super) const TINY: f64 = 1e-30;

/// The smallest change in `q` a solver in f32 is asked to resolve: below a few
/// units in the last place of 1, updates are rounding noise.
const F32_TOLERANCE_FLOOR: f64 = 4.0 * f32::EPSILON as f64;

/// Settings of the [`SpecialistCombiner`].
#[derive(Config, Debug)]
pub struct SpecialistCombinerConfig {
    /// A specialist is active for an example when its subset contains one of
    /// the generalist's `top_n` classes. Default: 1.
    #[config(default = 1)]
    pub top_n: usize,
    /// Cap on iterations (each an accelerated step of three EM updates; see
    /// the module docs). Default: 1000.
    #[config(default = 1000)]
    pub max_iterations: usize,
    /// A row stops when the last EM update of an iteration moved no entry of
    /// its `q` by more than this (in f32 tensors, no less than 4 units in the
    /// last place of 1, 4.8e-7): the default leaves `q` within 1e-6 of the
    /// minimiser on well-posed rows. Default: 1e-9.
    #[config(default = 1e-9)]
    pub tolerance: f64,
}

impl SpecialistCombinerConfig {
    /// Builds the combiner.
    ///
    /// # Panics
    /// On invalid settings (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> SpecialistCombiner {
        or_panic(self.try_init())
    }

    /// Builds the combiner, or says which setting is invalid.
    pub fn try_init(&self) -> Result<SpecialistCombiner, DistillError> {
        if self.top_n == 0 {
            return Err(DistillError::InvalidParameter {
                argument: "top_n",
                value: 0,
                requirement: "at least 1",
            });
        }
        if self.max_iterations == 0 {
            return Err(DistillError::InvalidParameter {
                argument: "max_iterations",
                value: 0,
                requirement: "at least 1",
            });
        }
        crate::check::check_weight("tolerance", self.tolerance)?;
        Ok(SpecialistCombiner {
            top_n: self.top_n,
            max_iterations: self.max_iterations,
            tolerance: self.tolerance,
        })
    }
}

/// The combined prediction.
#[derive(Debug, Clone)]
pub struct CombinedPrediction {
    /// `q`, `[batch, classes]`; equal to `p^g` in rows with no active specialist.
    pub probs: Tensor<2>,
    /// `J(q)` per row, `[batch]`.
    pub objective: Tensor<1>,
    /// `[batch, specialists]`: 1 where the specialist was active, else 0.
    pub active: Tensor<2>,
    /// Iterations run, each an accelerated EM step (three EM updates and an
    /// extrapolation; see [`SpecialistCombiner`]).
    pub iterations: usize,
    /// `Σ_rows J` at the start and after each iteration (non-increasing).
    pub objective_trace: Vec<f64>,
}

/// Combines a generalist with specialists by minimising eq. 5; see the module docs.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::specialist::{ClassSubset, Specialist, SpecialistCombinerConfig};
///
/// let device = Device::flex();
/// let generalist = Tensor::<2>::from_floats([[0.5, 0.3, 0.2]], &device);
/// // A specialist for {0, 1} that is surer than the generalist it is class 1.
/// let specialist = Specialist::new(ClassSubset::new(vec![0, 1], 3).unwrap());
/// let special = Tensor::<2>::from_floats([[0.1, 0.7, 0.2]], &device);
/// let out = SpecialistCombinerConfig::new()
///     .init()
///     .combine(generalist, &[specialist], &[special])?;
/// let q = out.probs.into_data().to_vec::<f32>().unwrap();
/// assert!(q[1] > 0.3 && q[0] < 0.5); // moved towards the specialist
/// assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SpecialistCombiner {
    top_n: usize,
    max_iterations: usize,
    tolerance: f64,
}

/// One specialist's data for the iteration, in the generalist's dtype and device.
struct Member {
    index: burn::tensor::Tensor<1, burn::tensor::Int>,
    /// 1 for classes outside the subset, `[1, C]`: the dustbin's mass is summed
    /// over these directly, as `1 − Σ_S q` would cancel when `S` holds nearly all of it.
    outside: Tensor<2>,
    /// `p^m` on the subset's outputs, `[B, |S|]`.
    subset_probs: Tensor<2>,
    /// `p^m` of the dustbin, `[B, 1]`.
    dustbin_prob: Tensor<2>,
    /// 1 where active, `[B, 1]`.
    active: Tensor<2>,
}

impl SpecialistCombiner {
    /// Combines `generalist_probs` `[batch, C]` with each specialist's
    /// probabilities `[batch, |S_m| + 1]` (dustbin last).
    ///
    /// # Errors
    /// On mismatched shapes, naming the specialist argument whose width or
    /// batch is wrong (`specialist_probs[m]`).
    pub fn combine(
        &self,
        generalist_probs: Tensor<2>,
        specialists: &[Specialist],
        specialist_probs: &[Tensor<2>],
    ) -> Result<CombinedPrediction, DistillError> {
        let [batch, classes] = generalist_probs.dims();
        crate::check::check_non_empty("generalist_probs", &[batch, classes])?;
        if specialists.len() != specialist_probs.len() {
            return Err(DistillError::InvalidParameter {
                argument: "specialist_probs.len()",
                value: specialist_probs.len(),
                requirement: "equal to specialists.len()",
            });
        }
        if self.top_n > classes {
            return Err(DistillError::InvalidParameter {
                argument: "top_n",
                value: self.top_n,
                requirement: "at most the number of classes",
            });
        }
        for (m, (specialist, probs)) in specialists.iter().zip(specialist_probs).enumerate() {
            if specialist.subset().num_classes() != classes {
                return Err(shape_mismatch(
                    "generalist_probs columns",
                    &[classes],
                    indexed("specialists", m),
                    &[specialist.subset().num_classes()],
                    "each specialist's subset must be over the generalist's classes",
                ));
            }
            let argument = indexed("specialist_probs", m);
            specialist.check_outputs(argument, probs)?;
            let found = probs.dims()[0];
            if found != batch {
                return Err(shape_mismatch(
                    argument,
                    &[found],
                    "generalist_probs rows",
                    &[batch],
                    "give one row per example of the generalist's batch",
                ));
            }
            check_device("generalist_probs", &generalist_probs, argument, probs)?;
        }

        let device = generalist_probs.device();
        let dtype = generalist_probs.dtype();
        if crate::backend::is_flex(&device) {
            return Ok(self.combine_on_host(generalist_probs, specialists, specialist_probs));
        }
        let pg = generalist_probs;
        let (_, top) = pg.clone().topk_with_indices(self.top_n, 1); // [B, n]
        let members: Vec<Member> = specialists
            .iter()
            .zip(specialist_probs)
            .map(|(specialist, probs)| {
                let k = specialist.subset().classes().len();
                let membership = specialist
                    .membership(&device)
                    .cast(dtype)
                    .reshape([1, classes]);
                let active = membership
                    .clone()
                    .expand([batch, classes])
                    .gather(1, top.clone())
                    .max_dim(1); // [B, 1]
                Member {
                    index: specialist.index_tensor(&device),
                    outside: membership.clone().neg().add_scalar(1.0),
                    subset_probs: probs.clone().slice([0..batch, 0..k]),
                    dustbin_prob: probs.clone().slice([0..batch, k..k + 1]),
                    active,
                }
            })
            .collect();
        let active = if members.is_empty() {
            Tensor::<2>::zeros([batch, 0], (&device, dtype))
        } else {
            Tensor::cat(members.iter().map(|m| m.active.clone()).collect(), 1)
        };
        let denominator = active.clone().sum_dim(1).add_scalar(1.0); // 1 + |active|, [B, 1]

        // Start from the average of the generalist and each active specialist's
        // distribution spread over the classes, its dustbin mass split among the
        // classes outside S in the generalist's proportions (equally where the
        // generalist gives them nothing). With one active specialist this is the
        // minimiser itself, since only p^g says how the dustbin divides. An equal
        // split instead hands mass to classes whose p^g underflowed to 0, whose
        // optimum is 0: EM then removes it by a factor ever closer to 1 and
        // stalls at the iteration cap.
        let mut q = pg.clone();
        for (member, specialist) in members.iter().zip(specialists) {
            let outside = (classes - specialist.subset().classes().len()) as f64;
            let spread = if outside > 0.0 {
                let generalist_outside = pg.clone() * member.outside.clone(); // [B, C]
                let mass = generalist_outside.clone().sum_dim(1); // [B, 1]
                let equal = member
                    .outside
                    .clone()
                    .div_scalar(outside)
                    .expand([batch, classes]);
                (generalist_outside / mass.clone().clamp_min(TINY))
                    .mask_where(mass.lower_equal_elem(0.0).expand([batch, classes]), equal)
                    * member.dustbin_prob.clone()
            } else {
                Tensor::zeros([batch, classes], (&device, dtype))
            };
            let expanded = spread.select_assign(
                1,
                member.index.clone(),
                member.subset_probs.clone(),
                IndexingUpdateOp::Add,
            );
            q = q + expanded * member.active.clone();
        }
        q = q / denominator.clone();

        let tolerance = match dtype {
            burn::tensor::DType::F32 => self.tolerance.max(F32_TOLERANCE_FLOOR),
            _ => self.tolerance,
        };
        // The EM map (see the module docs), all rows at once.
        let em = |q: &Tensor<2>| -> Tensor<2> {
            let mut dustbin_ratios = Tensor::<2>::zeros([batch, 1], (&device, dtype));
            let mut ratios = Tensor::<2>::zeros([batch, classes], (&device, dtype));
            for member in &members {
                let q_subset = q.clone().select(1, member.index.clone());
                let q_dustbin = (q.clone() * member.outside.clone()).sum_dim(1);
                let r_subset = member.subset_probs.clone() / q_subset.clamp_min(TINY);
                let r_dustbin = member.dustbin_prob.clone() / q_dustbin.clamp_min(TINY);
                // Classes outside S get the dustbin ratio, those in S their own.
                dustbin_ratios = dustbin_ratios + r_dustbin.clone() * member.active.clone();
                ratios = ratios.select_assign(
                    1,
                    member.index.clone(),
                    (r_subset - r_dustbin) * member.active.clone(),
                    IndexingUpdateOp::Add,
                );
            }
            (pg.clone() + q.clone() * (ratios + dustbin_ratios)) / denominator.clone()
        };
        let rows = |mask: Tensor<2, Bool>| mask.expand([batch, classes]);
        let largest_move = |a: Tensor<2>, b: Tensor<2>| -> Tensor<2> { (a - b).abs().max_dim(1) }; // [B, 1]

        let mut current = objective(&pg, &q, &members);
        let mut trace = vec![current.clone().sum().into_scalar::<f64>()];
        let mut iterations = 0;
        // Rows whose q has settled keep it, as each row does on the host.
        let mut settled = Tensor::<2>::zeros([batch, 1], (&device, dtype)).greater_elem(0.0);
        while iterations < self.max_iterations {
            iterations += 1;
            // SQUAREM (Varadhan & Roland 2008, scheme S3): EM crawls where the
            // models disagree (a specialist sure of its dustbin while the others
            // put the mass in its subset: the update's rate nears 1), so two EM
            // updates are extrapolated along their difference, with step
            // α = −‖r‖/‖v‖ ≤ −1, and one more EM update is taken from there.
            // Rows whose extrapolation leaves the simplex, or ends above the
            // plain two-step objective, take the two EM updates instead, so J
            // never increases.
            let q1 = em(&q);
            let q2 = em(&q1);
            let r = q1.clone() - q.clone();
            let v = q2.clone() - q1.clone() - r.clone();
            let alpha = (r.clone().square().sum_dim(1).sqrt()
                / v.clone().square().sum_dim(1).sqrt().clamp_min(TINY))
            .clamp_min(1.0)
            .neg(); // [B, 1]
            let start = q.clone() - r * alpha.clone().mul_scalar(2.0) + v * alpha.square();
            let outside_simplex = start.clone().min_dim(1).lower_elem(0.0);
            let start = start.mask_where(rows(outside_simplex.clone()), q2.clone());
            let stepped = em(&start);
            let j_stepped = objective(&pg, &stepped, &members).reshape([batch, 1]);
            let j_two_steps = objective(&pg, &q2, &members).reshape([batch, 1]);
            // (NaN compares false: such a row takes the EM updates.)
            let plain = j_stepped
                .clone()
                .lower_equal(j_two_steps.clone())
                .bool_not()
                .bool_or(outside_simplex);
            let updated = stepped.clone().mask_where(rows(plain.clone()), q2.clone());
            let change =
                largest_move(stepped, start).mask_where(plain.clone(), largest_move(q2, q1));
            // J of the point each row keeps, from the two already computed.
            let j_updated = j_stepped.mask_where(plain, j_two_steps).reshape([batch]);
            q = updated.mask_where(rows(settled.clone()), q);
            current = j_updated.mask_where(settled.clone().reshape([batch]), current);
            settled = settled.bool_or(change.lower_elem(tolerance));
            let progress = Tensor::cat(
                vec![
                    settled.clone().bool_not().float().cast(dtype).sum(),
                    current.clone().sum(),
                ],
                0,
            )
            .into_data()
            .iter::<f64>()
            .collect::<Vec<_>>();
            trace.push(progress[1]);
            if progress[0] == 0.0 {
                break;
            }
        }
        Ok(CombinedPrediction {
            probs: q,
            objective: current,
            active,
            iterations,
            objective_trace: trace,
        })
    }
}

impl SpecialistCombiner {
    /// The same problem solved row by row on the host (flex): f64, threads,
    /// each row stopping when its own `q` settles (the same rule).
    fn combine_on_host(
        &self,
        generalist_probs: Tensor<2>,
        specialists: &[Specialist],
        specialist_probs: &[Tensor<2>],
    ) -> CombinedPrediction {
        let [batch, classes] = generalist_probs.dims();
        let device = generalist_probs.device();
        let dtype = generalist_probs.dtype();
        let host = |t: Tensor<2>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };
        let members: Vec<HostSpecialist> = specialists
            .iter()
            .zip(specialist_probs)
            .map(|(s, p)| HostSpecialist {
                classes: s.subset().classes(),
                member: (0..classes).map(|c| s.subset().contains(c)).collect(),
                probs: host(p.clone()),
            })
            .collect();
        let out = combine_rows(
            &host(generalist_probs),
            classes,
            &members,
            self.top_n,
            self.max_iterations,
            self.tolerance,
        );
        let tensor2 = |v: Vec<f64>, cols: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [batch, cols]), (&device, dtype))
        };
        CombinedPrediction {
            probs: tensor2(out.q, classes),
            objective: Tensor::from_data(TensorData::new(out.objective, [batch]), (&device, dtype)),
            active: tensor2(out.active, specialists.len()),
            iterations: out.iterations,
            objective_trace: out.trace,
        }
    }
}

/// `J(q)` per row.
fn objective(pg: &Tensor<2>, q: &Tensor<2>, members: &[Member]) -> Tensor<1> {
    let log_q = q.clone().log();
    let mut j = forward_kl_unchecked(log_q, pg.clone().log());
    for member in members {
        let q_subset = q.clone().select(1, member.index.clone());
        let q_dustbin = (q.clone() * member.outside.clone()).sum_dim(1);
        let collapsed = Tensor::cat(vec![q_subset, q_dustbin], 1);
        let target = Tensor::cat(
            vec![member.subset_probs.clone(), member.dustbin_prob.clone()],
            1,
        );
        let kl = forward_kl_unchecked(collapsed.log(), target.log());
        let [batch] = kl.dims();
        j = j + kl * member.active.clone().reshape([batch]);
    }
    j
}
