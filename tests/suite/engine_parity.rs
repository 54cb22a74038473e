//! `KdLoss` with every `Divergence`, dense and top-k teachers, row masks,
//! `ignore_index` and the global normaliser, against float64 references written
//! out in numpy with closed-form gradients checked by finite differences
//! (`scripts/gen_engine_fixtures.py` → `tests/fixtures/engine_numpy.json`):
//! values and student gradients, through `forward`, `forward_parts` and
//! `forward_no_reduction`, on every device, fused kernel on and off.

use crate::common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_distill::{
    Divergence, KdLoss, KdLossConfig, Reduction, SparseTeacher, Targets, TeacherOutput,
};
use common::{assert_allclose, devices, devices_f64, labels, tensor2, tensor2_f64, values};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    batch: usize,
    classes: usize,
    student_logits: Vec<f64>,
    teacher_logits: Vec<f64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    divergence: String,
    param: Option<f64>,
    temperature: f64,
    soft_weight: f64,
    hard_weight: f64,
    scale_by_t_squared: bool,
    top_k: usize,
    keep_rows: Option<Vec<bool>>,
    ignore_index: Option<i64>,
    global_count: Option<usize>,
    labels: Option<Vec<i64>>,
    teacher_indices: Option<Vec<i64>>,
    teacher_top_log_probs: Option<Vec<f64>>,
    total: f64,
    soft: f64,
    hard: f64,
    rows: Vec<f64>,
    grad: Vec<f64>,
}

fn fixtures() -> Fixtures {
    let text = include_str!("../fixtures/engine_numpy.json");
    serde_json::from_str(text).expect("engine_numpy.json parses")
}

fn divergence(case: &Case) -> Divergence {
    let param = || case.param.expect("parameter");
    match case.divergence.as_str() {
        "forward_kl" => Divergence::ForwardKl,
        "reverse_kl" => Divergence::ReverseKl,
        "jsd" => Divergence::Jsd { beta: param() },
        "jsd_normalized" => Divergence::JsdNormalized { beta: param() },
        "skew_forward_kl" => Divergence::SkewForwardKl { alpha: param() },
        "skew_reverse_kl" => Divergence::SkewReverseKl { alpha: param() },
        "tvd" => Divergence::Tvd,
        other => panic!("unknown divergence {other}"),
    }
}

fn loss(case: &Case, fused: bool) -> KdLoss {
    KdLossConfig::new()
        .with_temperature(case.temperature)
        .with_soft_weight(case.soft_weight)
        .with_hard_weight(case.hard_weight)
        .with_scale_by_t_squared(case.scale_by_t_squared)
        .with_divergence(divergence(case))
        .with_ignore_index(case.ignore_index)
        .with_fused_kernel(fused)
        .init()
}

fn targets(case: &Case, device: &Device) -> Targets {
    let mut targets = match &case.labels {
        Some(y) => Targets::new(labels(y, device)),
        None => Targets::unlabelled(),
    };
    if let Some(keep) = &case.keep_rows {
        targets = targets.with_keep_rows(Tensor::<1, Bool>::from_data(
            TensorData::new(keep.clone(), [keep.len()]),
            device,
        ));
    }
    if let Some(count) = case.global_count {
        targets = targets.with_reduction(Reduction::GlobalCount(count));
    }
    targets
}

fn teacher(
    case: &Case,
    fx: &Fixtures,
    make: fn(&[f64], [usize; 2], &Device) -> Tensor<2>,
    device: &Device,
) -> TeacherOutput {
    if case.top_k == 0 {
        return TeacherOutput::Logits(make(&fx.teacher_logits, [fx.batch, fx.classes], device));
    }
    let shape = [fx.batch, case.top_k];
    let indices = case.teacher_indices.clone().expect("indices");
    let indices = Tensor::<2, Int>::from_data(TensorData::new(indices, shape), device);
    let log_probs = make(
        case.teacher_top_log_probs.as_ref().expect("log-probs"),
        shape,
        device,
    );
    TeacherOutput::TopK(SparseTeacher::new(indices, log_probs).unwrap())
}

fn check(
    fx: &Fixtures,
    device: &Device,
    make: fn(&[f64], [usize; 2], &Device) -> Tensor<2>,
    (rtol, atol): (f64, f64),
) {
    let device = device.clone().autodiff();
    for case in &fx.cases {
        for fused in [true, false] {
            let kd = loss(case, fused);
            let what = |part: &str| format!("{} {part} (fused {fused}, {device:?})", case.name);
            let z = make(&fx.student_logits, [fx.batch, fx.classes], &device).require_grad();
            let t = || teacher(case, fx, make, &device);
            let y = || targets(case, &device);

            let total = kd.forward(z.clone(), t(), y());
            let grads = total.clone().backward();
            let grad = values(z.grad(&grads).expect("student gradient"));
            assert_allclose(&what("total"), &values(total), &[case.total], rtol, atol);
            assert_allclose(&what("gradient"), &grad, &case.grad, rtol, atol);

            let parts = kd.forward_parts(z.clone(), t(), y());
            assert_allclose(&what("soft"), &values(parts.soft), &[case.soft], rtol, atol);
            assert_allclose(&what("hard"), &values(parts.hard), &[case.hard], rtol, atol);
            let parts_grad = values(z.grad(&parts.total.backward()).expect("gradient"));
            assert_allclose(&what("parts gradient"), &parts_grad, &case.grad, rtol, atol);

            let rows = values(kd.forward_no_reduction(z.clone(), t(), y()));
            assert_allclose(&what("rows"), &rows, &case.rows, rtol, atol);
        }
    }
}

#[test]
fn every_divergence_matches_numpy_f64() {
    let fx = fixtures();
    for (_, device) in devices_f64() {
        check(&fx, &device, tensor2_f64, (1e-9, 1e-12));
    }
}

#[test]
fn every_divergence_matches_numpy_f32() {
    let fx = fixtures();
    for (_, device) in devices() {
        check(&fx, &device, tensor2, (2e-4, 2e-6));
    }
}
