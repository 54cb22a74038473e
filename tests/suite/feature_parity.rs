//! Parity of the feature losses with torchdistill and PyTorch:
//! `tests/fixtures/feature_torch.json` holds float64 values and autograd
//! gradients from torchdistill's `SimpleLossWrapper(MSELoss)` after a 1×1
//! convolution (FitNets), `ATLoss` (both modes) and `RKDLoss`, and from
//! PyTorch's `mse_loss` / `cosine_similarity` after a `Linear`
//! (`scripts/gen_feature_fixtures.py`). Each case runs in f64 (flex,
//! ndarray) and in f32 (every device), element by element.

use crate::common;

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_distill::Targets;
use burn_distill::feature::{
    AttentionDistance, AttentionTransferLossConfig, FeatureProjection, FeatureProjectionConfig,
    HiddenStateDistance, HiddenStateLossConfig, HintLoss, HintLossConfig, RkdLossConfig,
    attention_map, rkd_angle, rkd_distance,
};
use common::{devices, devices_f64, values};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    torch_version: String,
    torchdistill_version: String,
    hint: Vec<HintCase>,
    attention: Vec<AttentionCase>,
    rkd: Vec<RkdCase>,
    hidden: Vec<HiddenCase>,
}

#[derive(Deserialize)]
struct HintCase {
    name: String,
    student_shape: Vec<usize>,
    teacher_shape: Vec<usize>,
    student: Vec<f64>,
    teacher: Vec<f64>,
    /// `[in, out]`, as burn's `Linear` stores it.
    weight: Vec<f64>,
    bias: Option<Vec<f64>>,
    loss: f64,
    per_example: Vec<f64>,
    grad_student: Vec<f64>,
    grad_weight: Vec<f64>,
    grad_bias: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct AttentionCase {
    name: String,
    student_shape: Vec<usize>,
    teacher_shape: Vec<usize>,
    student: Vec<f64>,
    teacher: Vec<f64>,
    student_map: Vec<f64>,
    code: AttentionMode,
    paper: AttentionMode,
}

#[derive(Deserialize)]
struct AttentionMode {
    loss: f64,
    per_example: Vec<f64>,
    grad_student: Vec<f64>,
}

#[derive(Deserialize)]
struct RkdCase {
    name: String,
    student_shape: Vec<usize>,
    teacher_shape: Vec<usize>,
    student: Vec<f64>,
    teacher: Vec<f64>,
    distance: RkdTerm,
    angle: RkdTerm,
    weighted: Vec<RkdWeighted>,
}

#[derive(Deserialize)]
struct RkdTerm {
    loss: f64,
    grad_student: Vec<f64>,
}

#[derive(Deserialize)]
struct RkdWeighted {
    distance_weight: f64,
    angle_weight: f64,
    loss: f64,
    grad_student: Vec<f64>,
}

#[derive(Deserialize)]
struct HiddenCase {
    name: String,
    student_shape: Vec<usize>,
    teacher_shape: Vec<usize>,
    student: Vec<f64>,
    teacher: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    mse: HiddenKind,
    cosine: HiddenKind,
}

#[derive(Deserialize)]
struct HiddenKind {
    loss: f64,
    per_position: Vec<f64>,
    grad_student: Vec<f64>,
    grad_weight: Vec<f64>,
    grad_bias: Vec<f64>,
}

fn fixtures() -> Fixtures {
    let text = include_str!("../fixtures/feature_torch.json");
    let fixtures: Fixtures = serde_json::from_str(text).expect("parse feature_torch.json");
    assert!(fixtures.torch_version.starts_with('2'), "torch 2.x");
    assert!(
        fixtures.torchdistill_version.starts_with('1'),
        "torchdistill 1.x"
    );
    assert!(fixtures.hint.len() >= 4 && fixtures.attention.len() >= 3);
    assert!(fixtures.rkd.len() >= 5 && fixtures.hidden.len() >= 2);
    fixtures
}

/// One precision's run: the devices, the dtype and the tolerance
/// `|a − e| ≤ rtol·|e| + floor·max|e|` (`floor` alone where every `e` is 0).
struct Precision {
    name: &'static str,
    devices: Vec<(&'static str, Device)>,
    dtype: DType,
    rtol: f64,
    floor: f64,
}

fn precisions() -> [Precision; 2] {
    [
        Precision {
            name: "f64",
            devices: devices_f64(),
            dtype: DType::F64,
            rtol: 1e-9,
            floor: 1e-12,
        },
        Precision {
            name: "f32",
            devices: devices(),
            dtype: DType::F32,
            rtol: 2e-4,
            floor: 2e-6,
        },
    ]
}

impl Precision {
    fn close(&self, what: &str, actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{what}: length");
        // Where every expected entry is 0 (a loss of equal structures), the
        // floor is absolute.
        let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        let scale = if scale == 0.0 { 1.0 } else { scale };
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            let bound = self.rtol * e.abs() + self.floor * scale;
            assert!(
                (a - e).abs() <= bound,
                "{what} [{}] entry {i}: {a} vs {e} (bound {bound:e})",
                self.name
            );
        }
    }

    fn tensor<const D: usize>(
        &self,
        values: &[f64],
        shape: &[usize],
        device: &Device,
    ) -> Tensor<D> {
        let shape: [usize; D] = shape.try_into().expect("the case's rank");
        let tensor = Tensor::<D>::from_data(
            TensorData::new(values.to_vec(), shape),
            (device, DType::F64),
        );
        tensor.cast(self.dtype)
    }
}

/// A projection holding the case's weight and bias, in the precision's dtype.
fn projection(
    p: &Precision,
    weight: &[f64],
    bias: Option<&[f64]>,
    widths: [usize; 2],
    device: &Device,
) -> FeatureProjection {
    let mut projection = FeatureProjectionConfig::new(widths[0], widths[1])
        .with_bias(bias.is_some())
        .init(device);
    projection.linear.weight = Param::from_tensor(p.tensor::<2>(weight, &widths, device));
    projection.linear.bias =
        bias.map(|b| Param::from_tensor(p.tensor::<1>(b, &[widths[1]], device)));
    projection
}

fn check_hint<const D: usize>(p: &Precision, case: &HintCase, device: &Device) {
    let widths = [case.student_shape[1], case.teacher_shape[1]];
    let mut hint: HintLoss = HintLossConfig::new(widths[0], widths[1])
        .with_bias(case.bias.is_some())
        .init(device);
    hint.regressor = projection(p, &case.weight, case.bias.as_deref(), widths, device);
    let student = p
        .tensor::<D>(&case.student, &case.student_shape, device)
        .require_grad();
    let teacher = p.tensor::<D>(&case.teacher, &case.teacher_shape, device);
    let what = |part: &str| format!("hint {} {part}", case.name);
    let per_example = hint.forward_no_reduction(student.clone(), teacher.clone());
    p.close(
        &what("per example"),
        &values(per_example),
        &case.per_example,
    );
    let loss = hint.forward(student.clone(), teacher);
    assert_eq!(loss.dtype(), p.dtype);
    p.close(&what("loss"), &values(loss.clone()), &[case.loss]);
    let grads = loss.backward();
    p.close(
        &what("grad student"),
        &values(student.grad(&grads).expect("student gradient")),
        &case.grad_student,
    );
    let linear = &hint.regressor.linear;
    p.close(
        &what("grad weight"),
        &values(linear.weight.val().grad(&grads).expect("weight gradient")),
        &case.grad_weight,
    );
    if let (Some(bias), Some(want)) = (&linear.bias, &case.grad_bias) {
        p.close(
            &what("grad bias"),
            &values(bias.val().grad(&grads).expect("bias gradient")),
            want,
        );
    }
}

fn check_attention<const D: usize>(p: &Precision, case: &AttentionCase, device: &Device) {
    let what = |part: &str| format!("attention {} {part}", case.name);
    let teacher = p.tensor::<D>(&case.teacher, &case.teacher_shape, device);
    let map = attention_map(p.tensor::<D>(&case.student, &case.student_shape, device));
    p.close(&what("map"), &values(map), &case.student_map);
    for (distance, mode) in [
        (AttentionDistance::MeanSquared, &case.code),
        (AttentionDistance::Norm, &case.paper),
    ] {
        let loss = AttentionTransferLossConfig::new()
            .with_distance(distance)
            .init();
        let student = p
            .tensor::<D>(&case.student, &case.student_shape, device)
            .require_grad();
        let per_example = loss.forward_no_reduction(student.clone(), teacher.clone());
        p.close(
            &what(&format!("{distance:?} per example")),
            &values(per_example),
            &mode.per_example,
        );
        let value = loss.forward(student.clone(), teacher.clone());
        p.close(
            &what(&format!("{distance:?} loss")),
            &values(value.clone()),
            &[mode.loss],
        );
        let grads = value.backward();
        p.close(
            &what(&format!("{distance:?} grad")),
            &values(student.grad(&grads).expect("student gradient")),
            &mode.grad_student,
        );
    }
}

/// The entries of a gradient compared with PyTorch's: every one, or — where
/// two student embeddings coincide (the case's students 0 and 1) and an
/// angle term counts — those of the other embeddings, PyTorch's there being
/// ~1e10 (see `rkd_angle`). Rows 0 and 1 are then checked finite and small.
fn compared_rows(case: &RkdCase, grad: &[f64], angle: bool) -> usize {
    let width = grad.len() / case.student_shape[0];
    let coincide = case.student[..width] == case.student[width..2 * width];
    if coincide && angle {
        assert!(
            grad[..2 * width]
                .iter()
                .all(|g| g.is_finite() && g.abs() < 1e3),
            "rkd {}: the coincident embeddings' gradient {:?}",
            case.name,
            &grad[..2 * width]
        );
        2 * width
    } else {
        0
    }
}

fn check_rkd<const D: usize>(p: &Precision, case: &RkdCase, device: &Device) {
    let what = |part: &str| format!("rkd {} {part}", case.name);
    let teacher = p.tensor::<D>(&case.teacher, &case.teacher_shape, device);
    let rows = |x: Tensor<D>| x.flatten::<2>(1, D - 1);
    for (term, want, angle) in [
        ("distance", &case.distance, false),
        ("angle", &case.angle, true),
    ] {
        let student = p
            .tensor::<D>(&case.student, &case.student_shape, device)
            .require_grad();
        let f = if angle { rkd_angle } else { rkd_distance };
        let value = f(rows(student.clone()), rows(teacher.clone()));
        p.close(&what(term), &values(value.clone()), &[want.loss]);
        let grads = value.backward();
        let grad = values(student.grad(&grads).expect("student gradient"));
        let from = compared_rows(case, &grad, angle);
        p.close(
            &what(&format!("{term} grad")),
            &grad[from..],
            &want.grad_student[from..],
        );
    }
    for weighted in &case.weighted {
        let loss = RkdLossConfig::new()
            .with_distance_weight(weighted.distance_weight)
            .with_angle_weight(weighted.angle_weight)
            .init();
        let student = p
            .tensor::<D>(&case.student, &case.student_shape, device)
            .require_grad();
        let value = loss.forward(student.clone(), teacher.clone());
        let name = format!(
            "λ_D {} λ_A {}",
            weighted.distance_weight, weighted.angle_weight
        );
        p.close(&what(&name), &values(value.clone()), &[weighted.loss]);
        let grads = value.backward();
        let grad = values(student.grad(&grads).expect("student gradient"));
        let from = compared_rows(case, &grad, weighted.angle_weight > 0.0);
        p.close(
            &what(&format!("{name} grad")),
            &grad[from..],
            &weighted.grad_student[from..],
        );
    }
}

fn check_hidden<const D: usize>(p: &Precision, case: &HiddenCase, device: &Device)
where
    Tensor<D>: burn_distill::LogitsShape,
    <Tensor<D> as burn_distill::LogitsShape>::PerPosition: IntoValues,
{
    let widths = [case.student_shape[D - 1], case.teacher_shape[D - 1]];
    let teacher = p.tensor::<D>(&case.teacher, &case.teacher_shape, device);
    for (distance, want) in [
        (HiddenStateDistance::Mse, &case.mse),
        (HiddenStateDistance::Cosine, &case.cosine),
    ] {
        let what = |part: &str| format!("hidden {} {distance:?} {part}", case.name);
        let projection = projection(p, &case.weight, Some(&case.bias), widths, device);
        let loss = HiddenStateLossConfig::new().with_distance(distance).init();
        let student = p
            .tensor::<D>(&case.student, &case.student_shape, device)
            .require_grad();
        let projected = projection.forward(student.clone());
        let per_position =
            loss.forward_no_reduction(projected.clone(), teacher.clone(), Targets::unlabelled());
        p.close(
            &what("per position"),
            &per_position.into_values(),
            &want.per_position,
        );
        let value = loss.forward(projected, teacher.clone(), Targets::unlabelled());
        p.close(&what("loss"), &values(value.clone()), &[want.loss]);
        let grads = value.backward();
        p.close(
            &what("grad student"),
            &values(student.grad(&grads).expect("student gradient")),
            &want.grad_student,
        );
        let linear = &projection.linear;
        p.close(
            &what("grad weight"),
            &values(linear.weight.val().grad(&grads).expect("weight gradient")),
            &want.grad_weight,
        );
        let bias = linear.bias.as_ref().expect("a bias");
        p.close(
            &what("grad bias"),
            &values(bias.val().grad(&grads).expect("bias gradient")),
            &want.grad_bias,
        );
    }
}

/// A per-position output read back.
trait IntoValues {
    fn into_values(self) -> Vec<f64>;
}

impl<const D: usize> IntoValues for Tensor<D> {
    fn into_values(self) -> Vec<f64> {
        values(self)
    }
}

/// Every case at every precision on every device, ranks 2 to 4.
#[test]
fn feature_losses_match_torchdistill_and_pytorch() {
    let fixtures = fixtures();
    for p in precisions() {
        for (_, device) in &p.devices {
            let device = device.clone().autodiff();
            for case in &fixtures.hint {
                match case.student_shape.len() {
                    2 => check_hint::<2>(&p, case, &device),
                    3 => check_hint::<3>(&p, case, &device),
                    4 => check_hint::<4>(&p, case, &device),
                    rank => panic!("rank {rank}"),
                }
            }
            for case in &fixtures.attention {
                match case.student_shape.len() {
                    3 => check_attention::<3>(&p, case, &device),
                    4 => check_attention::<4>(&p, case, &device),
                    rank => panic!("rank {rank}"),
                }
            }
            for case in &fixtures.rkd {
                match case.student_shape.len() {
                    2 => check_rkd::<2>(&p, case, &device),
                    4 => check_rkd::<4>(&p, case, &device),
                    rank => panic!("rank {rank}"),
                }
            }
            for case in &fixtures.hidden {
                match case.student_shape.len() {
                    2 => check_hidden::<2>(&p, case, &device),
                    3 => check_hidden::<3>(&p, case, &device),
                    rank => panic!("rank {rank}"),
                }
            }
        }
    }
}
