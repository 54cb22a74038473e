//! Helpers shared by the integration tests: the devices to run on, tensor
//! construction and read-back, a seeded random source, and tolerance checks.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// The devices every device-generic f32 test runs on, chosen at run time:
/// flex (burn's current CPU backend) and ndarray (deprecated, still widely
/// used) always; wgpu too when the tests are built with `--features wgpu` and
/// an adapter is found (on CI: Mesa's lavapipe, a software Vulkan driver).
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut list = devices_f64();
    #[cfg(feature = "wgpu")]
    list.extend(wgpu_device().map(|device| ("wgpu", device)));
    list
}

/// The devices whose backends compute in f64: WGSL, and so wgpu, has no f64.
#[allow(deprecated)] // Device::ndarray is deprecated in burn 0.22 but still supported.
pub fn devices_f64() -> Vec<(&'static str, Device)> {
    vec![("flex", Device::flex()), ("ndarray", Device::ndarray())]
}

/// The default wgpu device if an adapter exists. Without one the device is
/// left out with a message, unless `BURN_DISTILL_REQUIRE_WGPU` is set (as
/// `.ci/run` does), which makes a missing adapter a failure, not a skip.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Option<Device> {
    use burn::tensor::{DeviceKind, DeviceType};
    if Device::enumerate(DeviceType::Wgpu).into_vec().is_empty() {
        assert!(
            std::env::var_os("BURN_DISTILL_REQUIRE_WGPU").is_none(),
            "BURN_DISTILL_REQUIRE_WGPU is set but wgpu found no adapter \
             (for software Vulkan install Debian's mesa-vulkan-drivers)"
        );
        eprintln!("wgpu: no adapter found; these tests run on flex and ndarray only");
        return None;
    }
    Some(Device::wgpu(DeviceKind::DefaultDevice))
}

/// Whether this crate's fused kernel is compiled in for the device named
/// `name` by [`devices`] (its feature for that backend): elsewhere a loss
/// with `fused_kernel` takes burn ops.
pub fn kernel_serves(name: &str) -> bool {
    (name == "flex" && cfg!(feature = "flex"))
        || (name == "ndarray" && cfg!(feature = "ndarray"))
        || (name == "wgpu" && cfg!(feature = "cube-kernel"))
}

/// A `[rows, cols]` f32 tensor from row-major values.
pub fn tensor2(values: &[f64], shape: [usize; 2], device: &Device) -> Tensor<2> {
    let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A `[rows, cols]` f64 tensor from row-major values. The dtype must be given
/// explicitly: burn converts data to the device's default float dtype (f32)
/// otherwise.
pub fn tensor2_f64(values: &[f64], shape: [usize; 2], device: &Device) -> Tensor<2> {
    let tensor = Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        (device, DType::F64),
    );
    assert_eq!(tensor.dtype(), DType::F64, "f64 tensor requested");
    tensor
}

/// A `[batch, seq, classes]` tensor of `dtype` from row-major values.
pub fn tensor3(values: &[f64], shape: [usize; 3], device: &Device, dtype: DType) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, dtype))
}

/// An integer label tensor.
pub fn labels(values: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// Reads any float tensor back as f64 values, row-major.
pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor.into_data().iter::<f64>().collect()
}

/// Reads a one-element tensor back as f64.
pub fn scalar(tensor: Tensor<1>) -> f64 {
    let v = values(tensor);
    assert_eq!(v.len(), 1, "expected a one-element tensor");
    v[0]
}

/// The crate's own seeded generator (SplitMix64), compiled into the tests too
/// so that there is one implementation of it.
#[path = "../../../src/specialist/rng.rs"]
mod rng;
pub(crate) use rng::SplitMix64 as Rng;

/// Normal draws for test inputs.
pub trait Normals {
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64;
    /// `n` normal values times `scale`, rounded to f32 so tensors see them exactly.
    fn normals(&mut self, n: usize, scale: f64) -> Vec<f64>;
}

impl Normals for Rng {
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| (self.normal() * scale) as f32 as f64)
            .collect()
    }
}

/// Softmax of `logits / t` for each row, in f64, written out independently of
/// the crate under test.
pub fn reference_softmax(logits: &[f64], classes: usize, t: f64) -> Vec<f64> {
    logits
        .chunks(classes)
        .flat_map(|row| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x / t));
            let exps: Vec<f64> = row.iter().map(|&x| (x / t - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.into_iter().map(move |e| e / sum)
        })
        .collect()
}

/// Asserts that `actual` matches `expected` element by element: each entry
/// within `rtol` of its own magnitude, or within a floor for rounding at the
/// tensor's scale — four f32 ulps of the largest magnitude in `expected` (an
/// f32 entry of 1e-9 beside entries of 1 carries about 1e-7 of absolute
/// rounding), never more than `rtol` of it. Entries far below the largest are
/// checked against that floor, not waved through by the largest's tolerance.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
    let floor = scale * rtol.min(4.0 * f32::EPSILON as f64);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        let bound = (rtol * e.abs()).max(floor);
        assert!(
            err <= bound || a == e,
            "{what}[{i}]: got {a}, expected {e} (error {err:.3e} > {bound:.3e}: {rtol:.1e} of it, or the floor {floor:.3e})"
        );
    }
}

/// The soft term alone, `T²·D` averaged over the rows, unweighted: the loss on
/// a transfer set without labels (`forward_parts`' `soft`).
pub fn soft_loss(
    kd: &burn_distill::KdLoss,
    student_logits: Tensor<2>,
    teacher: impl Into<burn_distill::TeacherOutput>,
) -> Tensor<1> {
    kd.forward_parts(student_logits, teacher, burn_distill::Targets::unlabelled())
        .soft
}

/// The soft term per row, `T²·D_b`, unweighted: `forward_no_reduction` without
/// labels is `soft_weight` times it.
pub fn soft_rows(
    kd: &burn_distill::KdLoss,
    student_logits: Tensor<2>,
    teacher: impl Into<burn_distill::TeacherOutput>,
) -> Tensor<1> {
    kd.forward_no_reduction(student_logits, teacher, burn_distill::Targets::unlabelled())
        .mul_scalar(1.0 / kd.config().soft_weight)
}

/// Asserts `|actual − expected| ≤ rtol·|expected| + atol` element by element
/// (numpy's `allclose`), so that small entries are held to their own size.
#[track_caller]
pub fn assert_allclose(what: &str, actual: &[f64], expected: &[f64], rtol: f64, atol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let bound = rtol * e.abs() + atol;
        assert!(
            (a - e).abs() <= bound || a == e,
            "{what}[{i}]: got {a}, expected {e} (|error| {:.3e} > {bound:.3e})",
            (a - e).abs()
        );
    }
}

/// Asserts that `error` is the crate's one shape error between `left` (of
/// `left_shape`) and an argument of `right_shape`, and that its message
/// names both shapes.
#[track_caller]
pub fn assert_shape_mismatch(
    error: &burn_distill::DistillError,
    left: &str,
    left_shape: &[usize],
    right_shape: &[usize],
) {
    match error {
        burn_distill::DistillError::ShapeMismatch {
            left_argument,
            left_shape: found_left,
            right_shape: found_right,
            ..
        } => {
            assert_eq!(
                (
                    *left_argument,
                    found_left.as_slice(),
                    found_right.as_slice()
                ),
                (left, left_shape, right_shape),
                "{error}"
            );
            let shown = error.to_string();
            for shape in [left_shape, right_shape] {
                assert!(
                    shown.contains(&format!("{shape:?}")),
                    "{shape:?} not in {shown}"
                );
            }
        }
        other => panic!("expected a ShapeMismatch of {left}, got {other:?}"),
    }
}

/// Every divergence, with parameters away from the special-cased ends.
pub const EVERY_DIVERGENCE: [burn_distill::Divergence; 8] = {
    use burn_distill::Divergence;
    [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.5 },
        Divergence::Jsd { beta: 0.1 },
        Divergence::JsdNormalized { beta: 0.9 },
        Divergence::SkewForwardKl { alpha: 0.1 },
        Divergence::SkewReverseKl { alpha: 0.3 },
        Divergence::Tvd,
    ]
};

/// Every float parameter of a module, flattened, with its id, in order.
#[derive(Default)]
pub struct Params(pub Vec<(ParamId, Vec<usize>, Tensor<1>)>);

impl ModuleVisitor for Params {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let dims = tensor.dims().to_vec();
        self.0.push((param.id, dims, tensor.flatten(0, D - 1)));
    }
}

pub fn params<M: Module>(module: &M) -> Params {
    let mut params = Params::default();
    module.visit(&mut params);
    params
}

/// Each float parameter's gradient in two sets of gradients, by id.
pub struct GradientPairs<'a> {
    pub step: &'a GradientsParams,
    pub hand: &'a GradientsParams,
    pub pairs: Vec<(Vec<f64>, Vec<f64>)>,
}

impl ModuleVisitor for GradientPairs<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let step = self.step.get::<D>(param.id).expect("a step gradient");
        let hand = self.hand.get::<D>(param.id).expect("a hand gradient");
        self.pairs.push((values(step), values(hand)));
    }
}
