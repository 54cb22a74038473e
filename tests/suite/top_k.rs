//! `SparseTeacher::top_k`: the classes and log-probabilities it keeps, on every
//! device (the host selection on flex and ndarray, burn's `topk` on wgpu),
//! against a float64 log-softmax and a full sort written out here.

use burn::tensor::{DType, Tensor};
use burn_distill::SparseTeacher;

use crate::common::{Normals, Rng, devices, tensor2, values};

/// The `k` classes of largest logit (ties: the smaller class) and their
/// float64 log-probabilities at `t`.
fn reference(row: &[f64], k: usize, t: f64) -> (Vec<i64>, Vec<f64>) {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = row.iter().map(|v| ((v - max) / t).exp()).sum::<f64>().ln();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let kept = &order[..k];
    let log_probs = kept.iter().map(|&c| (row[c] - max) / t - log_sum).collect();
    (kept.iter().map(|&c| c as i64).collect(), log_probs)
}

fn ints(tensor: &Tensor<2, burn::tensor::Int>) -> Vec<i64> {
    tensor
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap()
}

/// Distinct logits (no ties, so every backend's order is defined), sizes
/// around the host selection's 16-logit blocks, k from 1 to every class.
#[test]
fn keeps_the_largest_classes_with_float64_log_probs_on_every_device() {
    let mut rng = Rng::new(31);
    for (name, device) in devices() {
        for (rows, classes) in [(3, 1), (2, 15), (4, 16), (3, 17), (5, 1000)] {
            // Normals rounded to f32 repeat with probability ~ classes²/2²⁴; a
            // tiny per-class offset makes them distinct.
            let v: Vec<f64> = rng
                .normals(rows * classes, 3.0)
                .iter()
                .enumerate()
                .map(|(i, x)| (x + (i % classes) as f64 * 1e-4) as f32 as f64)
                .collect();
            for k in [1, 2, 7, classes] {
                // burn's `topk` on a Cube device compiles k into its kernel:
                // on lavapipe k = 256 takes seconds to compile, k = 1000 more
                // than ten minutes.
                if k > classes || (name == "wgpu" && k > 64) {
                    continue;
                }
                for t in [1.0, 2.5] {
                    let teacher =
                        SparseTeacher::top_k(tensor2(&v, [rows, classes], &device), k, t).unwrap();
                    assert_eq!(teacher.indices().dims(), [rows, k]);
                    let (got_i, got_p) =
                        (ints(teacher.indices()), values(teacher.log_probs().clone()));
                    for (r, row) in v.chunks(classes).enumerate() {
                        let (want_i, want_p) = reference(row, k, t);
                        let what = format!("{name} {rows}x{classes} k={k} T={t} row {r}");
                        assert_eq!(got_i[r * k..(r + 1) * k], want_i[..], "{what}");
                        for (j, (&g, &w)) in got_p[r * k..].iter().zip(&want_p).enumerate() {
                            assert!(
                                (g - w).abs() <= 2e-6 * w.abs().max(1.0),
                                "{what} [{j}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Half-precision logits: the log-probabilities come back in the logits'
/// dtype, computed in f32 from the half-precision values.
#[test]
fn half_precision_logits_give_log_probs_in_their_dtype() {
    let mut rng = Rng::new(7);
    let (rows, classes, k, t) = (4, 300, 5, 2.0);
    for (name, device) in devices() {
        // Half an ulp of the dtype, relative: 2⁻¹¹ (f16) and 2⁻⁸ (bf16).
        for (dtype, rounding) in [(DType::F16, 2f64.powi(-11)), (DType::BF16, 2f64.powi(-8))] {
            if !device.supports_dtype(dtype) {
                eprintln!("{name} has no {dtype:?}; skipped");
                continue;
            }
            let v = rng.normals(rows * classes, 2.0);
            let logits = tensor2(&v, [rows, classes], &device).cast(dtype);
            // The values the teacher actually saw: the logits rounded.
            let seen = values(logits.clone().cast(DType::F32));
            let teacher = SparseTeacher::top_k(logits, k, t).unwrap();
            assert_eq!(teacher.log_probs().dtype(), dtype, "{name}");
            let got_p = values(teacher.log_probs().clone().cast(DType::F32));
            let got_i = ints(teacher.indices());
            for (r, row) in seen.chunks(classes).enumerate() {
                let (want_i, want_p) = reference(row, k, t);
                // Ties among rounded values: compare the logits kept, not the classes.
                let kept: Vec<f64> = got_i[r * k..(r + 1) * k]
                    .iter()
                    .map(|&c| row[c as usize])
                    .collect();
                let want: Vec<f64> = want_i.iter().map(|&c| row[c as usize]).collect();
                assert_eq!(kept, want, "{name} {dtype:?} row {r}");
                for (&g, &w) in got_p[r * k..].iter().zip(&want_p) {
                    // The output's rounding, plus f32's error.
                    let tolerance = rounding * w.abs() + 1e-5 * w.abs().max(1.0);
                    assert!(
                        (g - w).abs() <= tolerance,
                        "{name} {dtype:?} row {r}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// On an autodiff device the teacher is detached and stays on that device:
/// a loss on it gives the student a gradient and the logits none.
#[test]
fn autodiff_logits_are_detached() {
    use burn_distill::{KdLossConfig, Targets, TeacherOutput};
    for (name, device) in devices() {
        let device = device.autodiff();
        let teacher_logits =
            Tensor::<2>::from_floats([[3.0, 1.0, 0.0, -1.0]], &device).require_grad();
        let student = Tensor::<2>::from_floats([[1.0, 2.0, 0.5, 0.0]], &device).require_grad();
        let teacher = SparseTeacher::top_k(teacher_logits.clone(), 2, 2.0).unwrap();
        assert!(teacher.log_probs().is_autodiff(), "{name}");
        let labels = Targets::new(Tensor::from_ints([0], &device));
        let loss = KdLossConfig::new().with_temperature(2.0).init();
        let grads = loss
            .forward(student.clone(), TeacherOutput::TopK(teacher), labels)
            .backward();
        assert!(student.grad(&grads).is_some(), "{name}");
        assert!(teacher_logits.grad(&grads).is_none(), "{name}");
    }
}
