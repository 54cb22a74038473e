//! The fused path of the losses: values and the closed-form gradient with
//! respect to the student, computed by one kernel that runs inside burn as a
//! backend extension ([`extension`]) whose single autodiff node hands back
//! that gradient. Two engines implement it: a multi-threaded CPU kernel
//! ([`kernel`]) for flex and ndarray, and a CubeCL kernel ([`cube_kernel`])
//! for burn's Cube backends (wgpu, Vulkan, Metal, CUDA, ROCm).
//!
//! One engine serves every loss: `KdLoss` with each [`Divergence`] (a
//! plug-in giving per class the value term and the gradient factor
//! `h = q·∂D/∂q`, [`pointwise`], whose table of per-class terms is the one
//! text both kernels compile; the softmax's chain rule, temperature, `T²`,
//! weights, hard term and masks are shared), with a dense or a top-k teacher,
//! and DKD, whose target/non-target split adds its own chain-rule factors.
//! The Cube kernel serves the dense and the top-k teacher with every
//! divergence, and DKD.
//!
//! It serves f32 tensors on flex (with this crate's `flex` feature) and on
//! ndarray (its `ndarray` feature) — the losses cast f16 and bf16 to f32
//! before — and f32, f16 and bf16 tensors on Cube devices (its `cube-kernel`
//! feature), which the kernel reads into f32 itself;
//! [`plan`] — the one function that decides, once per call — answers `None`
//! elsewhere and the loss uses burn ops and autodiff instead. A tensor-op version of the closed form was measured 1.8×
//! slower than autodiff on ndarray (1.41 s vs 0.79 s at 512×32000), so other
//! backends do not get one.

#[cfg(feature = "cube-kernel")]
mod cube;
#[cfg(feature = "cube-kernel")]
mod cube_kernel;
#[cfg(any(feature = "flex", feature = "ndarray", feature = "cube-kernel"))]
mod extension;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod kernel;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod linear_host;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod top_k_host;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod uld_host;
// Also the top-k selection's and the teacher store's; built everywhere, so
// that the selection is too.
#[cfg_attr(not(any(feature = "flex", feature = "ndarray")), allow(dead_code))]
pub(crate) mod math;
// The divergence table: the CPU kernel's plug-ins, and the text the Cube
// kernel compiles (`divergence_table!`) with its mapping (`Plugin`).
#[cfg(any(feature = "flex", feature = "ndarray", feature = "cube-kernel"))]
#[cfg_attr(
    not(any(feature = "flex", feature = "ndarray")),
    allow(dead_code, unused_macros, unused_imports)
)]
mod pointwise;

use burn::tensor::{DType, Int, Tensor};

use crate::backend::{HostBackend, host_backend, is_cube};
use crate::divergence::Divergence;
use crate::top_k::{BadRow, Selection, TopKRows};

/// Whether any fused engine is compiled in.
const ANY_ENGINE: bool = cfg!(any(
    feature = "flex",
    feature = "ndarray",
    feature = "cube-kernel"
));

/// The loss's settings as the kernel needs them: built once per call by the
/// loss, passed by value through burn's dispatch, borrowed by the kernel.
#[derive(Debug, Clone)]
// Only the kernels read the fields; without the features nothing does.
#[cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "cube-kernel")),
    allow(dead_code)
)]
pub(crate) struct FusedSpec {
    /// The distillation temperature `T` applied to the student.
    pub temperature: f64,
    /// The temperature of the teacher's values: `T` for logits, 1 for log-probabilities.
    pub teacher_temperature: f64,
    /// Multiplies the KL divergence: T² or 1.
    pub soft_factor: f64,
    /// Output column `k` is `w_s·soft_row + w_h·hard_row` for `(w_s, w_h) = weights[k]`.
    pub weights: Vec<(f64, f64)>,
    /// Which loss: KD with a divergence, or DKD.
    pub loss: FusedLoss,
}

/// The loss the kernel computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FusedLoss {
    /// `f·D(p ‖ q)` (the soft column) and the cross-entropy (the hard column),
    /// with the divergence already checked.
    Kd(Divergence),
    /// DKD: `f·TCKD` in the soft column and `f·NCKD` in the hard column.
    Dkd,
}

impl FusedLoss {
    /// The divergence of the per-class terms: NCKD is a forward KL.
    #[cfg_attr(
        not(any(feature = "flex", feature = "ndarray", feature = "cube-kernel")),
        allow(dead_code)
    )]
    pub(crate) fn divergence(self) -> Divergence {
        match self {
            Self::Kd(divergence) => divergence,
            Self::Dkd => Divergence::ForwardKl,
        }
    }
}

/// Which fused engine would run on these tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// The CPU kernel, on flex or ndarray.
    Host,
    /// The CubeCL kernel, on a Cube device.
    Cube,
}

/// The engine for tensors on a backend whose feature compiled it in: f32
/// for the CPU kernel; f32, f16 or bf16 (each tensor) for the Cube kernel,
/// which reads half precision into f32 itself.
fn engine(student_logits: &Tensor<2>, teacher_values: &Tensor<2>) -> Option<Engine> {
    let dtypes = [student_logits.dtype(), teacher_values.dtype()];
    let device = student_logits.device();
    let engine = match host_backend(&device) {
        Some(HostBackend::Flex) if cfg!(feature = "flex") => Engine::Host,
        Some(HostBackend::NdArray) if cfg!(feature = "ndarray") => Engine::Host,
        None if cfg!(feature = "cube-kernel") && is_cube(&device) => Engine::Cube,
        _ => return None,
    };
    let served = match engine {
        Engine::Host => dtypes.iter().all(|&d| d == DType::F32),
        Engine::Cube => dtypes
            .iter()
            .all(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16)),
    };
    served.then_some(engine)
}

/// Whether the Cube kernel serves `loss` on these tensors with the student in
/// f16 or bf16 as it is: the loss then skips its f32 copy of the logits.
pub(crate) fn reads_half(
    student_logits: &Tensor<2>,
    teacher_values: &Tensor<2>,
    loss: FusedLoss,
) -> bool {
    matches!(student_logits.dtype(), DType::F16 | DType::BF16)
        && engine(student_logits, teacher_values) == Some(Engine::Cube)
        && serves(Engine::Cube, loss, false, teacher_values)
}

/// Whether `engine` computes `loss`: the CPU engine every loss (ULD by its own
/// row loop, a sort per row), the Cube kernel every loss but ULD (no sort in
/// it), with a dense teacher or a top-k one of at most [`CUBE_TOP_K_LIMIT`]
/// classes.
fn serves(engine: Engine, loss: FusedLoss, top_k: bool, teacher_values: &Tensor<2>) -> bool {
    let uld = loss == FusedLoss::Kd(Divergence::Uld);
    match engine {
        Engine::Host => !(uld && top_k),
        Engine::Cube => !uld && (!top_k || teacher_values.dims()[1] <= CUBE_TOP_K_LIMIT),
    }
}

/// A fused engine chosen for one loss call by [`plan`] — the one place that
/// decides — and taken by [`columns`], which runs it without deciding again.
/// Only `plan` makes one; without an engine compiled in there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernel {
    engine: Engine,
    /// Planned for a top-k teacher (indices given to `columns`).
    top_k: bool,
    /// Planned for DKD.
    dkd: bool,
    /// Planned for ULD (the CPU engine's own row loop).
    uld: bool,
}

/// The most classes a top-k teacher may store for the Cube kernel, which
/// keeps a row's classes sorted in the cube's shared memory (8 bytes each
/// with their entries, 8 KiB at 1,024: within the 16 KiB every WebGPU device
/// has, beside the kernel's 2 KiB of sums); more take burn ops.
pub(crate) const CUBE_TOP_K_LIMIT: usize = 1024;

/// The fused engine for this call, if one serves it: the CPU kernel for
/// f32 on flex or ndarray (every loss, dense and top-k teachers; ULD dense
/// only), the Cube kernel for f32/f16/bf16 on a Cube device (every loss but
/// ULD, with a dense teacher or a top-k one of at most [`CUBE_TOP_K_LIMIT`]
/// classes); `None` where none does, or without an engine compiled in.
/// `teacher_values` are a top-k teacher's `[batch, k]` log-probabilities
/// when `top_k`.
pub(crate) fn plan(
    student_logits: &Tensor<2>,
    teacher_values: &Tensor<2>,
    top_k: bool,
    loss: FusedLoss,
) -> Option<Kernel> {
    let engine = engine(student_logits, teacher_values)?;
    let dkd = loss == FusedLoss::Dkd;
    let uld = loss == FusedLoss::Kd(Divergence::Uld);
    let served = serves(engine, loss, top_k, teacher_values);
    (served && ANY_ENGINE).then_some(Kernel {
        engine,
        top_k,
        dkd,
        uld,
    })
}

/// ULD per row between `exp(student)` and `exp(teacher)` (log-values taken
/// as they are), `[rows]`, by the CPU engine where it serves these tensors
/// (f32 on flex or ndarray with the crate's feature); `None` elsewhere, where
/// the caller takes burn ops.
pub(crate) fn uld_of_log_values(student: &Tensor<2>, teacher: &Tensor<2>) -> Option<Tensor<1>> {
    if engine(student, teacher) != Some(Engine::Host) {
        return None;
    }
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    {
        Some(uld_host::rows_of_log_values(student, teacher))
    }
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    None
}

/// [`crate::top_k`]'s selection of `logits`' rows, on the backend's buffer
/// in place, where a CPU engine serves the logits — flex or ndarray with the
/// crate's feature, f32, f16 or bf16 (read as f32); `None` elsewhere, where
/// the caller selects on the device or reads the logits back.
pub(crate) fn host_top_k(
    logits: &Tensor<2>,
    selection: Selection,
) -> Option<Result<TopKRows, BadRow>> {
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    {
        let _ = (logits, selection);
        None
    }
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    {
        if host_backend(&logits.device()).is_none()
            || !matches!(logits.dtype(), DType::F32 | DType::F16 | DType::BF16)
        {
            return None;
        }
        let values = logits.clone().detach().without_autodiff().cast(DType::F32);
        if engine(&values, &values) != Some(Engine::Host) {
            return None;
        }
        Some(top_k_host::top_k(values, selection))
    }
}

/// See [`crate::diagnostics::cube_kernel_launches`].
pub(crate) fn cube_kernel_launches() -> u64 {
    #[cfg(feature = "cube-kernel")]
    return cube::rows_launches();
    #[cfg(not(feature = "cube-kernel"))]
    0
}

/// The teacher as the extension takes it: dense values, or top-k
/// log-probabilities with their classes where the engine reads them.
#[cfg(any(feature = "flex", feature = "ndarray", feature = "cube-kernel"))]
pub(crate) struct FusedTeacher {
    /// `[batch, classes]` logits or log-probabilities, or `[batch, k]` top-k log-probabilities.
    pub values: Tensor<2>,
    /// The top-k classes `[batch, k]`; none for a dense teacher.
    pub indices: extension::FusedInts<2>,
}

/// The KD terms by a fused kernel, `[batch, K]`: column `k` is
/// `w_s·soft_row + w_h·hard_row` for `(w_s, w_h) = spec.weights[k]`, per row
/// (not divided by the batch size), each column differentiable with respect to
/// the student through its closed-form gradient, by the engine `kernel`
/// that [`plan`] chose for these tensors.
///
/// `teacher_values` are dense `[batch, classes]` values at
/// `spec.teacher_temperature`, or, with `teacher_indices`, the `[batch, k]`
/// log-probabilities of a top-k teacher's classes.
///
/// Shapes, labels and indices must already be checked (the losses' `check`),
/// or, on a device, clamped into range. The CPU engine reads labels and
/// indices back, because it indexes with them on the host; the Cube engine
/// reads both on the device.
pub(crate) fn columns(
    kernel: Kernel,
    student_logits: &Tensor<2>,
    teacher_values: &Tensor<2>,
    teacher_indices: Option<&Tensor<2, Int>>,
    targets: Option<&Tensor<1, Int>>,
    spec: FusedSpec,
) -> Tensor<2> {
    debug_assert_eq!(
        (kernel.top_k, kernel.dkd),
        (teacher_indices.is_some(), spec.loss == FusedLoss::Dkd),
        "columns() runs what plan() was asked for"
    );
    let engine = kernel.engine;
    // ULD: the CPU engine's own row loop (`serves` plans it nowhere else).
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if kernel.uld {
        return uld_host::column(student_logits, teacher_values, &spec);
    }
    #[cfg(any(feature = "flex", feature = "ndarray", feature = "cube-kernel"))]
    {
        use crate::diagnostics::read_back;
        use extension::FusedInts;
        // The CPU engine indexes on the host; the Cube engine on the device.
        fn place<const D: usize>(ints: Option<&Tensor<D, Int>>, engine: Engine) -> FusedInts<D> {
            match (ints, engine) {
                (None, _) => FusedInts::None,
                (Some(t), Engine::Host) => {
                    let flat = t.clone().reshape([t.shape().num_elements()]);
                    FusedInts::Host(read_back(flat).iter::<i64>().collect())
                }
                (Some(t), Engine::Cube) => FusedInts::Device(t.clone()),
            }
        }
        let teacher = FusedTeacher {
            values: teacher_values.clone(),
            indices: place(teacher_indices, engine),
        };
        let labels = place(targets, engine);
        extension::fused_kd_columns(student_logits, teacher, labels, spec)
    }
    #[cfg(not(any(feature = "flex", feature = "ndarray", feature = "cube-kernel")))]
    {
        // `plan` answers `None` for every call in this build (`ANY_ENGINE`).
        let _ = (
            engine,
            student_logits,
            teacher_values,
            teacher_indices,
            targets,
            spec,
        );
        unreachable!("no fused engine is compiled in, so plan() made no Kernel")
    }
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) use linear_host::LayerGradients;

/// Without a CPU backend compiled in there are no host gradient sums.
#[cfg(not(any(feature = "flex", feature = "ndarray")))]
pub(crate) enum LayerGradients {}

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
impl LayerGradients {
    pub(crate) fn add_chunk(&self, _: usize, _: &Tensor<2>, _: &Tensor<2>, _: &Tensor<2>) {
        match *self {}
    }

    pub(crate) fn attach(
        self,
        _: Tensor<1>,
        _: Tensor<2>,
        _: Tensor<2>,
        _: Option<Tensor<1>>,
    ) -> Tensor<1> {
        match self {}
    }
}

/// Host sums for the fused linear loss's gradients (`hidden` `[rows, d]`,
/// `weight` `[d, vocab]`, `bias`), where the CPU engine serves these tensors:
/// f32 on flex or ndarray with this crate's feature for it; `None` elsewhere
/// (the loss then sums with tensor ops).
pub(crate) fn layer_gradients(
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<LayerGradients> {
    let f32s = bias.is_none_or(|b| b.dtype() == DType::F32);
    if !(f32s && engine(hidden, weight) == Some(Engine::Host)) {
        return None;
    }
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    {
        let ([rows, d], [_, vocab]) = (hidden.dims(), weight.dims());
        Some(LayerGradients::new(rows, d, vocab, bias.is_some()))
    }
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// f32 tensors on flex and ndarray (with or without autodiff) take the fused
    /// kernel when this crate's feature for that backend compiles it in;
    /// other dtypes take the tensor-op path.
    #[test]
    #[allow(deprecated)] // Device::ndarray
    fn kernel_serves_f32_on_cpu_backends() {
        let cases = [
            (Device::flex(), cfg!(feature = "flex")),
            (Device::flex().autodiff(), cfg!(feature = "flex")),
            (Device::ndarray(), cfg!(feature = "ndarray")),
            (Device::ndarray().autodiff(), cfg!(feature = "ndarray")),
        ];
        let losses = [
            (false, FusedLoss::Kd(Divergence::ForwardKl)),
            (true, FusedLoss::Kd(Divergence::Tvd)),
            (false, FusedLoss::Dkd),
        ];
        for (device, compiled_in) in cases {
            let f32s = Tensor::<2>::zeros([2, 3], &device);
            let f64s = Tensor::<2>::zeros([2, 3], (&device, DType::F64));
            for (top_k, loss) in losses {
                let planned = plan(&f32s, &f32s, top_k, loss);
                assert_eq!(planned.is_some(), compiled_in, "{device:?} {loss:?}");
                if let Some(kernel) = planned {
                    assert_eq!(kernel.engine, Engine::Host);
                }
                assert!(plan(&f64s, &f64s, top_k, loss).is_none(), "{device:?}");
            }
        }
    }

    /// The host selection serves f32 and half-precision logits on the CPU
    /// backends compiled in (with ties to the smaller class, which burn's
    /// sort does not promise); f64 is left to the caller.
    #[test]
    #[allow(deprecated)] // Device::ndarray
    fn host_top_k_serves_the_cpu_backends() {
        let selection = Selection {
            k: 2,
            temperature: 1.0,
            with_tails: false,
            refuse_bad_rows: false,
        };
        for (device, compiled_in) in [
            (Device::flex(), cfg!(feature = "flex")),
            (Device::flex().autodiff(), cfg!(feature = "flex")),
            (Device::ndarray(), cfg!(feature = "ndarray")),
            (Device::ndarray().autodiff(), cfg!(feature = "ndarray")),
        ] {
            let tied = Tensor::<2>::from_floats([[1.0, 2.0, 2.0, 2.0, 0.0]], &device);
            let selected = host_top_k(&tied, selection);
            assert_eq!(selected.is_some(), compiled_in, "{device:?}");
            if let Some(rows) = selected {
                assert_eq!(rows.unwrap().indices, [1, 2], "{device:?}");
            }
            let f64s = Tensor::<2>::zeros([2, 3], (&device, DType::F64));
            assert!(host_top_k(&f64s, selection).is_none(), "{device:?}");
        }
        let flex_f16 = Tensor::<2>::zeros([2, 3], (&Device::flex(), DType::F16));
        assert_eq!(
            host_top_k(&flex_f16, selection).is_some(),
            cfg!(feature = "flex")
        );
        // Bad rows are refused when asked, before selecting.
        let nan = Tensor::<2>::from_floats([[0.0, 1.0], [f32::NAN, 0.0]], &Device::flex());
        let refuse = Selection {
            refuse_bad_rows: true,
            ..selection
        };
        if let Some(found) = host_top_k(&nan, refuse) {
            assert_eq!(found.unwrap_err().row, 1);
        }
    }
}
