//! Property tests (proptest) of the temperature softmax and the KD loss, on f32
//! tensors on every device: 256 cases each for the softmax and KL identities,
//! 64 for the wide comparison of the fused kernel, autodiff and the f64 closed
//! form (up to 300 classes, |logits| ≤ 1e4, T in [0.01, 1000], `−inf` masks).

use crate::common;

use burn_distill::KdLossConfig;
use burn_distill::temperature::{log_softmax, softmax};
use common::{devices, scalar, soft_loss, soft_rows, tensor2, values};
use proptest::prelude::*;

/// A `[rows, classes]` matrix of f32-representable logits in `±range`.
fn logits(range: f64) -> impl Strategy<Value = (usize, usize, Vec<f64>)> {
    (1usize..5, 2usize..17).prop_flat_map(move |(rows, classes)| {
        (
            Just(rows),
            Just(classes),
            prop::collection::vec(
                (-range..range).prop_map(|x| x as f32 as f64),
                rows * classes,
            ),
        )
    })
}

/// Temperatures spread log-uniformly over [0.05, 100].
fn temperature() -> impl Strategy<Value = f64> {
    ((0.05f64).ln()..(100.0f64).ln()).prop_map(f64::exp)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Rows sum to 1, probabilities lie in [0, 1], and the order of the logits is
    /// kept (a larger logit never gets a smaller probability; the argmax stays).
    #[test]
    fn softmax_rows_sum_to_one_and_keep_order((rows, classes, z) in logits(50.0), t in temperature()) {
        for (name, device) in devices() {
            let q = values(softmax(tensor2(&z, [rows, classes], &device), t, 1).unwrap());
            for (row_q, row_z) in q.chunks(classes).zip(z.chunks(classes)) {
                let sum: f64 = row_q.iter().sum();
                prop_assert!((sum - 1.0).abs() < 1e-5, "{name}: row sums to {sum}");
                prop_assert!(row_q.iter().all(|&p| (0.0..=1.0).contains(&p)), "{name}");
                for i in 0..classes {
                    for j in 0..classes {
                        if row_z[i] > row_z[j] {
                            prop_assert!(row_q[i] >= row_q[j], "{name}: order broken at {i},{j}");
                        }
                    }
                }
                let argmax = |r: &[f64]| r.iter().enumerate().fold(0, |b, (i, &x)| if x > r[b] { i } else { b });
                prop_assert_eq!(row_q[argmax(row_z)], row_q.iter().cloned().fold(0.0, f64::max));
            }
        }
    }

    /// log_softmax is the log of softmax, and adding a constant to a row changes
    /// neither. The tolerance is f32's rounding of (z + c)/T: about ε·(|z| + |c|)/T.
    #[test]
    fn shift_invariance((rows, classes, z) in logits(50.0), c in -100.0f64..100.0, t in temperature()) {
        for (name, device) in devices() {
            let shifted: Vec<f64> = z.iter().map(|x| ((x + c) as f32) as f64).collect();
            let q = values(softmax(tensor2(&z, [rows, classes], &device), t, 1).unwrap());
            let q_shifted = values(softmax(tensor2(&shifted, [rows, classes], &device), t, 1).unwrap());
            let log_q = values(log_softmax(tensor2(&z, [rows, classes], &device), t, 1).unwrap());
            let tol = 1e-5 + 8.0 * f32::EPSILON as f64 * (50.0 + c.abs()) / t;
            for i in 0..q.len() {
                prop_assert!((q[i] - q_shifted[i]).abs() <= tol, "{name}: {} vs {} (tol {tol})", q[i], q_shifted[i]);
                if q[i] > 1e-30 {
                    prop_assert!((log_q[i].exp() - q[i]).abs() <= 1e-5 * q[i].max(1e-3), "{name}: exp(log q) {} vs q {}", log_q[i].exp(), q[i]);
                }
            }
        }
    }

    /// KL(p‖q) ≥ 0, and it is 0 when the student equals the teacher.
    #[test]
    fn kl_is_non_negative_and_zero_on_equality((rows, classes, z) in logits(50.0), seed in any::<u64>(), t in temperature()) {
        let mut rng = common::Rng::new(seed);
        let v: Vec<f64> = (0..z.len()).map(|_| ((rng.uniform() * 2.0 - 1.0) * 50.0) as f32 as f64).collect();
        let kd = KdLossConfig::new().with_temperature(t).with_scale_by_t_squared(false).init();
        for (name, device) in devices() {
            let kl = values(soft_rows(&kd, tensor2(&z, [rows, classes], &device), tensor2(&v, [rows, classes], &device)));
            // f32 rounding of log-probabilities of size up to 100/T can make a tiny KL
            // come out slightly negative; anything below that is a real error.
            let rounding = 4.0 * f32::EPSILON as f64 * (1.0 + 100.0 / t);
            prop_assert!(kl.iter().all(|&k| k >= -rounding), "{name}: negative KL {kl:?}");
            let same = values(soft_rows(&kd, tensor2(&z, [rows, classes], &device), tensor2(&z, [rows, classes], &device)));
            prop_assert!(same.iter().all(|&k| k.abs() <= 1e-6), "{name}: KL(p‖p) = {same:?}");
        }
    }

    /// At very high temperature the softmax is uniform: q_i → 1/N with error
    /// about max|z|/T.
    #[test]
    fn very_high_temperature_is_uniform((rows, classes, z) in logits(50.0), t in 1e5f64..1e7) {
        for (name, device) in devices() {
            let q = values(softmax(tensor2(&z, [rows, classes], &device), t, 1).unwrap());
            let tol = 2.0 * 50.0 / t + 1e-5;
            for p in q {
                prop_assert!((p * classes as f64 - 1.0).abs() <= tol, "{name}: {p} vs 1/{classes}");
            }
        }
    }

    /// Logits up to |z| = 1e4 at any T in [0.05, 100]: finite softmax, loss and
    /// gradient.
    #[test]
    fn finite_for_extreme_logits((rows, classes, z) in logits(1e4), seed in any::<u64>(), t in temperature()) {
        let mut rng = common::Rng::new(seed);
        let v: Vec<f64> = (0..z.len()).map(|_| ((rng.uniform() * 2.0 - 1.0) * 1e4) as f32 as f64).collect();
        let kd = KdLossConfig::new().with_temperature(t).init();
        for (name, device) in devices() {
            let device = device.autodiff();
            let q = values(log_softmax(tensor2(&z, [rows, classes], &device), t, 1).unwrap());
            prop_assert!(q.iter().all(|x| x.is_finite()), "{name}: log_softmax");
            let student = tensor2(&z, [rows, classes], &device).require_grad();
            let loss = soft_loss(&kd, student.clone(), tensor2(&v, [rows, classes], &device));
            let value = scalar(loss.clone());
            prop_assert!(value.is_finite(), "{name}: loss {value}");
            let grad = values(student.grad(&loss.backward()).unwrap());
            prop_assert!(grad.iter().all(|x| x.is_finite()), "{name}: gradient");
        }
    }
}

/// Wide inputs: up to 300 classes, |logits| ≤ 1e4, T log-uniform in [0.01, 1000],
/// some classes masked with `−inf` in both models.
fn wide_case() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<f64>, Vec<i64>, f64)> {
    (1usize..5, 2usize..300, 0.01f64.ln()..1000f64.ln()).prop_flat_map(|(rows, classes, ln_t)| {
        let n = rows * classes;
        let value = (-1e4f64..1e4).prop_map(|x| x as f32 as f64);
        (
            Just(rows),
            Just(classes),
            prop::collection::vec(value.clone(), n),
            prop::collection::vec(value, n),
            prop::collection::vec(0.0f64..1.0, n),
            prop::collection::vec(0usize..classes, rows),
            Just(ln_t.exp()),
        )
            .prop_map(|(rows, classes, mut z, mut v, masks, labels, t)| {
                // Mask about a tenth of the classes, never a row's label.
                for (i, m) in masks.iter().enumerate() {
                    if *m < 0.1 && i % classes != labels[i / classes] {
                        z[i] = f64::NEG_INFINITY;
                        v[i] = f64::NEG_INFINITY;
                    }
                }
                let labels = labels.into_iter().map(|y| y as i64).collect();
                (rows, classes, z, v, labels, t)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The fused kernel, autodiff through burn ops, and the f64 closed form agree
    /// on the loss and on every gradient entry (`|a − e| ≤ 2e-3·|e| + 1e-6·T`), and
    /// each gradient row sums to 0.
    #[test]
    fn fused_equals_autodiff_equals_closed_form((rows, classes, z, v, y, t) in wide_case()) {
        let (ws, wh) = (0.7, 0.3);
        // In log space: at T = 0.01 and |z| ~ 1e4 a probability underflows f64
        // long before its log-probability stops being a finite number.
        let log_softmax = |x: &[f64], t: f64| -> Vec<f64> {
            x.chunks(classes)
                .flat_map(|row| {
                    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x / t));
                    let lse = max + row.iter().map(|&x| (x / t - max).exp()).sum::<f64>().ln();
                    row.iter().map(move |&x| x / t - lse)
                })
                .collect()
        };
        let (log_p, log_q, log_q1) = (log_softmax(&v, t), log_softmax(&z, t), log_softmax(&z, 1.0));
        let exp = |x: &[f64]| -> Vec<f64> { x.iter().map(|x| x.exp()).collect() };
        let (p, q, q1) = (exp(&log_p), exp(&log_q), exp(&log_q1));
        let b = rows as f64;
        let mut loss = 0.0;
        let mut grad = vec![0.0; rows * classes];
        for (r, &y_r) in y.iter().enumerate() {
            let label = r * classes + y_r as usize;
            for i in r * classes..(r + 1) * classes {
                if p[i] > 0.0 {
                    loss += ws * t * t * p[i] * (log_p[i] - log_q[i]) / b;
                }
                let onehot = if i == label { 1.0 } else { 0.0 };
                grad[i] = (ws * t * (q[i] - p[i]) + wh * (q1[i] - onehot)) / b;
            }
            loss -= wh * log_q1[label] / b;
        }
        for (name, device) in devices() {
            let device = device.autodiff();
            for fused in [true, false] {
                let kd = KdLossConfig::new()
                    .with_temperature(t)
                    .with_soft_weight(ws)
                    .with_hard_weight(wh)
                    .with_fused_kernel(fused)
                    .init();
                let student = tensor2(&z, [rows, classes], &device).require_grad();
                let value = kd.forward(student.clone(), tensor2(&v, [rows, classes], &device), common::labels(&y, &device));
                let g = values(student.grad(&value.clone().backward()).unwrap());
                let value = scalar(value);
                let what = format!("{name} fused {fused} {rows}×{classes} T={t}");
                prop_assert!((value - loss).abs() <= 2e-3 * loss.abs() + 1e-5 * t * t.max(1.0), "{what}: loss {value} vs {loss}");
                for (i, (&a, &e)) in g.iter().zip(&grad).enumerate() {
                    prop_assert!((a - e).abs() <= 2e-3 * e.abs() + 1e-6 * t.max(1.0), "{what}: gradient[{i}] {a} vs {e}");
                }
                for row in g.chunks(classes) {
                    let sum: f64 = row.iter().sum();
                    prop_assert!(sum.abs() <= 1e-6 * classes as f64 * t.max(1.0), "{what}: row sums to {sum}");
                }
            }
        }
    }
}
