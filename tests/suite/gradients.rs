//! Gradients of the KD loss, checked through burn's autodiff against closed
//! forms written out here in f64 (not taken from the crate):
//! - eq. 2 of Hinton et al.: ∂KL/∂z = (q − p)/T per example, so with the batch
//!   mean ∂soft/∂z = T(q − p)/B with T² scaling and (q − p)/(T·B) without;
//! - eq. 4: at high T with zero-mean logits, (q − p)/T ≈ (z − v)/(N·T²);
//! - the teacher receives no gradient, the student does;
//! - masked (−inf) classes give exactly zero gradient, never NaN;
//! - T = 1 with only the hard term is burn-nn's `CrossEntropyLoss`.

use crate::common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn_distill::KdLossConfig;
use common::{
    Normals, Rng, assert_close, devices, devices_f64, labels, reference_softmax, scalar, soft_loss,
    tensor2, tensor2_f64, values,
};

/// Both implementations: the closed-form backward (default) and plain autodiff.
fn both_paths() -> [(&'static str, bool); 2] {
    [("analytic", true), ("autodiff", false)]
}

/// ∂soft/∂z from autodiff equals T(q − p)/B (T² on) or (q − p)/(T·B) (T² off).
#[test]
fn soft_gradient_matches_eq2() {
    let mut rng = Rng::new(7);
    for (name, device) in devices_f64() {
        let device = device.autodiff();
        for &(batch, classes, t) in &[(6, 9, 0.5), (4, 17, 2.0), (8, 5, 10.0), (3, 100, 30.0)] {
            let z = rng.normals(batch * classes, 3.0);
            let v = rng.normals(batch * classes, 3.0);
            let q = reference_softmax(&z, classes, t);
            let p = reference_softmax(&v, classes, t);
            for (scale_by_t_squared, (path, analytic)) in [true, false]
                .into_iter()
                .flat_map(|s| both_paths().map(|p| (s, p)))
            {
                let kd = KdLossConfig::new()
                    .with_temperature(t)
                    .with_scale_by_t_squared(scale_by_t_squared)
                    .with_fused_kernel(analytic)
                    .init();
                let student = tensor2_f64(&z, [batch, classes], &device).require_grad();
                let teacher = tensor2_f64(&v, [batch, classes], &device);
                let grads = soft_loss(&kd, student.clone(), teacher).backward();
                let got = values(student.grad(&grads).unwrap());
                let factor = if scale_by_t_squared {
                    t / batch as f64
                } else {
                    1.0 / (t * batch as f64)
                };
                let expected: Vec<f64> = q.iter().zip(&p).map(|(q, p)| factor * (q - p)).collect();
                let what =
                    format!("{name} {path} B={batch} C={classes} T={t} T²={scale_by_t_squared}");
                assert_close(&what, &got, &expected, 1e-12);
            }
        }
    }
}

/// The full loss's gradient adds hard_weight·(softmax(z) − onehot)/B.
#[test]
fn total_gradient_adds_hard_term() {
    let mut rng = Rng::new(11);
    let (batch, classes, t) = (5, 7, 3.0);
    let (soft_weight, hard_weight) = (0.7, 0.3);
    for ((name, device), (path, analytic)) in devices_f64()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let device = device.autodiff();
        let z = rng.normals(batch * classes, 2.0);
        let v = rng.normals(batch * classes, 2.0);
        let y: Vec<i64> = (0..batch).map(|_| rng.below(classes) as i64).collect();
        let q_t = reference_softmax(&z, classes, t);
        let p_t = reference_softmax(&v, classes, t);
        let q_1 = reference_softmax(&z, classes, 1.0);
        let expected: Vec<f64> = (0..batch * classes)
            .map(|i| {
                let onehot = if y[i / classes] as usize == i % classes {
                    1.0
                } else {
                    0.0
                };
                (soft_weight * t * (q_t[i] - p_t[i]) + hard_weight * (q_1[i] - onehot))
                    / batch as f64
            })
            .collect();
        let kd = KdLossConfig::new()
            .with_fused_kernel(analytic)
            .with_temperature(t)
            .with_soft_weight(soft_weight)
            .with_hard_weight(hard_weight)
            .init();
        let student = tensor2_f64(&z, [batch, classes], &device).require_grad();
        let teacher = tensor2_f64(&v, [batch, classes], &device);
        let grads = kd
            .forward(student.clone(), teacher, labels(&y, &device))
            .backward();
        assert_close(
            name,
            &values(student.grad(&grads).unwrap()),
            &expected,
            1e-12,
        );
    }
}

/// Eq. 4: for zero-mean logits the soft gradient without T² tends to
/// (z − v)/(N·T²·B), with an error that shrinks like 1/T.
#[test]
fn high_temperature_limit_is_logit_matching() {
    let mut rng = Rng::new(3);
    let (batch, classes) = (4, 10);
    let zero_mean = |x: Vec<f64>| -> Vec<f64> {
        x.chunks(classes)
            .flat_map(|row| {
                let mean = row.iter().sum::<f64>() / classes as f64;
                row.iter().map(move |v| v - mean).collect::<Vec<_>>()
            })
            .collect()
    };
    let z = zero_mean(rng.normals(batch * classes, 2.0));
    let v = zero_mean(rng.normals(batch * classes, 2.0));
    for ((name, device), (path, analytic)) in devices()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let device = device.autodiff();
        let mut errors = Vec::new();
        for t in [10.0, 100.0, 1000.0] {
            let kd = KdLossConfig::new()
                .with_fused_kernel(analytic)
                .with_temperature(t)
                .with_scale_by_t_squared(false)
                .init();
            let student = tensor2(&z, [batch, classes], &device).require_grad();
            let teacher = tensor2(&v, [batch, classes], &device);
            let grads = soft_loss(&kd, student.clone(), teacher).backward();
            let got = values(student.grad(&grads).unwrap());
            let limit: Vec<f64> = z
                .iter()
                .zip(&v)
                .map(|(z, v)| (z - v) / (classes as f64 * t * t * batch as f64))
                .collect();
            let scale = limit.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let error = got
                .iter()
                .zip(&limit)
                .fold(0.0f64, |m, (g, l)| m.max((g - l).abs()))
                / scale;
            errors.push(error);
        }
        // Relative error O(max|z|/T): under 50% at T = 10, and shrinking ~10× per decade.
        assert!(errors[0] < 0.5, "{name}: {errors:?}");
        assert!(errors[1] < errors[0] / 5.0, "{name}: {errors:?}");
        assert!(errors[2] < errors[1] / 5.0, "{name}: {errors:?}");
        assert!(errors[2] < 5e-3, "{name}: {errors:?}");
    }
}

/// The teacher gets no gradient even when its tensor is tracked; the student does.
#[test]
fn teacher_is_detached_and_student_trains() {
    let mut rng = Rng::new(5);
    let (batch, classes) = (3, 6);
    for ((name, device), (path, analytic)) in devices()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let device = device.autodiff();
        let (z, v) = (
            rng.normals(batch * classes, 1.0),
            rng.normals(batch * classes, 1.0),
        );
        let student = tensor2(&z, [batch, classes], &device).require_grad();
        let teacher = tensor2(&v, [batch, classes], &device).require_grad();
        let kd = KdLossConfig::new().with_fused_kernel(analytic).init();
        let grads = kd
            .forward(
                student.clone(),
                teacher.clone(),
                labels(&[0, 1, 2], &device),
            )
            .backward();
        assert!(
            teacher.grad(&grads).is_none(),
            "{name}: teacher got a gradient"
        );
        let g = values(student.grad(&grads).expect("student gradient"));
        // The student's gradient is the closed form of the defaults (T = 4,
        // 0.9 soft with T², 0.1 hard, batchmean), written out in f64:
        // (0.9·T·(softmax(z/T) − softmax(v/T)) + 0.1·(softmax(z) − onehot)) / B.
        let t = 4.0;
        let (q, p, s) = (
            reference_softmax(&z, classes, t),
            reference_softmax(&v, classes, t),
            reference_softmax(&z, classes, 1.0),
        );
        for (r, label) in [0usize, 1, 2].into_iter().enumerate() {
            for c in 0..classes {
                let i = r * classes + c;
                let onehot = if c == label { 1.0 } else { 0.0 };
                let expected = (0.9 * t * (q[i] - p[i]) + 0.1 * (s[i] - onehot)) / batch as f64;
                let got = g[i];
                assert!(
                    (got - expected).abs() <= 1e-4 * expected.abs() + 2e-6,
                    "{name}: gradient [{r}, {c}] {got} vs closed form {expected}"
                );
            }
        }
    }
}

/// Classes that are −inf in both models: loss and gradient equal those of the
/// problem with the classes removed, and their own gradient is exactly 0.
#[test]
fn masked_classes_contribute_nothing() {
    let ninf = f64::NEG_INFINITY;
    let z_full = [1.0, ninf, 0.5, -2.0, ninf, 3.0, 0.0, ninf];
    let v_full = [0.3, ninf, 1.5, -1.0, ninf, 2.0, 1.0, ninf];
    let z_kept = [1.0, 0.5, -2.0, 3.0, 0.0];
    let v_kept = [0.3, 1.5, -1.0, 2.0, 1.0];
    for ((name, device), (path, analytic)) in devices()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let device = device.autodiff();
        for t in [0.5, 4.0, 20.0] {
            let kd = KdLossConfig::new()
                .with_fused_kernel(analytic)
                .with_temperature(t)
                .init();
            let zf = tensor2(&z_full, [2, 4], &device).require_grad();
            let loss_full = kd.forward(
                zf.clone(),
                tensor2(&v_full, [2, 4], &device),
                labels(&[0, 1], &device),
            );
            let grads = loss_full.clone().backward();
            let gf = values(zf.grad(&grads).unwrap());

            // The same rows with the masked columns dropped (labels remapped).
            let zk = tensor2(&z_kept[..3], [1, 3], &device).require_grad();
            let zk2 = tensor2(&z_kept[3..], [1, 2], &device).require_grad();
            let row1 = kd.forward_no_reduction(
                zk.clone(),
                tensor2(&v_kept[..3], [1, 3], &device),
                labels(&[0], &device),
            );
            let row2 = kd.forward_no_reduction(
                zk2.clone(),
                tensor2(&v_kept[3..], [1, 2], &device),
                labels(&[0], &device),
            );
            let expected_loss = (scalar(row1.clone()) + scalar(row2.clone())) / 2.0;
            // The CPU paths sum a row with extra −inf columns in the same order
            // as without them; the Cube kernel's threads split the row by its
            // length, so the f32 sums round differently, and at T = 20 the
            // soft term's T² = 400 turns that into up to ~1e-4 of the value.
            let rtol = if name.starts_with("wgpu/analytic") {
                2e-4
            } else {
                1e-6
            };
            assert_close(name, &[scalar(loss_full)], &[expected_loss], rtol);

            let g1 = values(zk.grad(&row1.backward()).unwrap());
            let g2 = values(zk2.grad(&row2.backward()).unwrap());
            let expected_grad = [
                g1[0] / 2.0,
                0.0,
                g1[1] / 2.0,
                g1[2] / 2.0,
                0.0,
                g2[0] / 2.0,
                g2[1] / 2.0,
                0.0,
            ];
            assert!(gf.iter().all(|g| g.is_finite()), "{name} T={t}: {gf:?}");
            assert_eq!(
                [gf[1], gf[4], gf[7]],
                [0.0; 3],
                "{name} T={t}: masked gradient"
            );
            assert_close(name, &gf, &expected_grad, rtol);
        }
    }
}

/// A class the teacher considers possible but the student has at −inf is an
/// infinite divergence, reported as +inf (not NaN).
#[test]
fn student_minus_inf_where_teacher_finite_is_infinite_loss() {
    for ((name, device), (path, analytic)) in devices()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let kd = KdLossConfig::new().with_fused_kernel(analytic).init();
        let z = tensor2(&[1.0, f64::NEG_INFINITY, 0.0], [1, 3], &device);
        let v = tensor2(&[1.0, 0.5, 0.0], [1, 3], &device);
        let soft = scalar(soft_loss(&kd, z, v));
        assert_eq!(soft, f64::INFINITY, "{name}");
    }
}

/// T = 1, soft weight 0, hard weight 1 is exactly burn-nn's cross-entropy.
#[test]
fn hard_only_equals_burn_cross_entropy() {
    let mut rng = Rng::new(13);
    let (batch, classes) = (16, 12);
    for ((name, device), (path, analytic)) in devices()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let device = device.autodiff();
        let z = rng.normals(batch * classes, 4.0);
        let v = rng.normals(batch * classes, 4.0);
        let y: Vec<i64> = (0..batch).map(|_| rng.below(classes) as i64).collect();
        let kd = KdLossConfig::new()
            .with_fused_kernel(analytic)
            .with_temperature(1.0)
            .with_soft_weight(0.0)
            .with_hard_weight(1.0)
            .init();
        let ce = CrossEntropyLossConfig::new().init(&device);

        let s1 = tensor2(&z, [batch, classes], &device).require_grad();
        let ours = kd.forward(
            s1.clone(),
            tensor2(&v, [batch, classes], &device),
            labels(&y, &device),
        );
        let s2 = tensor2(&z, [batch, classes], &device).require_grad();
        let theirs = ce.forward(s2.clone(), labels(&y, &device));
        let (ours_value, theirs_value) = (scalar(ours.clone()), scalar(theirs.clone()));
        assert_close(name, &[ours_value], &[theirs_value], 1e-6);
        let g1 = values(s1.grad(&ours.backward()).unwrap());
        let g2 = values(s2.grad(&theirs.backward()).unwrap());
        assert_close(name, &g1, &g2, 1e-6);
    }
}

/// f32 logits up to |z| = 1e4 at T from 0.05 to 100 give a finite loss and gradient.
#[test]
fn extreme_logits_stay_finite() {
    let mut rng = Rng::new(17);
    let (batch, classes) = (4, 32);
    for ((name, device), (path, analytic)) in devices()
        .into_iter()
        .flat_map(|d| both_paths().map(move |p| (d.clone(), p)))
    {
        let name: &str = &format!("{name}/{path}");
        let device = device.autodiff();
        for t in [0.05, 0.3, 1.0, 20.0, 100.0] {
            let z: Vec<f64> = (0..batch * classes)
                .map(|_| (rng.uniform() * 2.0 - 1.0) * 1e4)
                .collect();
            let v: Vec<f64> = (0..batch * classes)
                .map(|_| (rng.uniform() * 2.0 - 1.0) * 1e4)
                .collect();
            let kd = KdLossConfig::new()
                .with_fused_kernel(analytic)
                .with_temperature(t)
                .init();
            let student = tensor2(&z, [batch, classes], &device).require_grad();
            let loss = kd.forward(
                student.clone(),
                tensor2(&v, [batch, classes], &device),
                labels(&[0, 5, 9, 31], &device),
            );
            let value = scalar(loss.clone());
            let g = values(student.grad(&loss.backward()).unwrap());
            assert!(value.is_finite(), "{name} T={t}: loss {value}");
            assert!(g.iter().all(|x| x.is_finite()), "{name} T={t}: gradient");
        }
    }
}

/// The fused CPU kernel reads burn's buffers in place; views must read the
/// elements they show. A transposed student and a teacher cut out of a wider
/// tensor (strided and offset views) give the closed-form loss and gradient of
/// eq. 2 plus cross-entropy, with and without autodiff, and `forward_parts`'
/// two columns each carry their own gradient.
#[test]
fn views_and_parts_match_the_closed_form() {
    let mut rng = Rng::new(29);
    let (batch, classes, t, ws, wh) = (6, 11, 2.5, 0.8, 0.2);
    let z = rng.normals(batch * classes, 3.0);
    let v = rng.normals(batch * classes, 3.0);
    let y: Vec<i64> = (0..batch).map(|_| rng.below(classes) as i64).collect();
    let (q, p, q1) = (
        reference_softmax(&z, classes, t),
        reference_softmax(&v, classes, t),
        reference_softmax(&z, classes, 1.0),
    );
    let row = |b: usize| b * classes..(b + 1) * classes;
    let kl: Vec<f64> = (0..batch)
        .map(|b| row(b).map(|i| p[i] * (p[i] / q[i]).ln()).sum())
        .collect();
    let ce: Vec<f64> = (0..batch)
        .map(|b| -q1[row(b).start + y[b] as usize].ln())
        .collect();
    let mean = |x: &[f64]| x.iter().sum::<f64>() / batch as f64;
    let (soft, hard) = (t * t * mean(&kl), mean(&ce));
    let grad = |w_soft: f64, w_hard: f64| -> Vec<f64> {
        (0..batch * classes)
            .map(|i| {
                let onehot = if i % classes == y[i / classes] as usize {
                    1.0
                } else {
                    0.0
                };
                (w_soft * t * (q[i] - p[i]) + w_hard * (q1[i] - onehot)) / batch as f64
            })
            .collect()
    };
    // z laid out transposed ([classes, batch]) and v inside a [batch, classes + 3] tensor.
    let z_t: Vec<f64> = (0..classes * batch)
        .map(|i| z[(i % batch) * classes + i / batch])
        .collect();
    let v_wide: Vec<f64> = (0..batch * (classes + 3))
        .map(|i| match i % (classes + 3) {
            c if c >= 3 => v[(i / (classes + 3)) * classes + c - 3],
            _ => 99.0,
        })
        .collect();
    let kd = KdLossConfig::new()
        .with_temperature(t)
        .with_soft_weight(ws)
        .with_hard_weight(wh)
        .init();
    for (name, device) in devices() {
        let inputs = |device: &burn::tensor::Device| {
            let student = tensor2(&z_t, [classes, batch], device).transpose();
            let teacher =
                tensor2(&v_wide, [batch, classes + 3], device).slice([0..batch, 3..classes + 3]);
            (student, teacher)
        };
        // Inference: values only.
        let (student, teacher) = inputs(&device);
        let total = scalar(kd.forward(student, teacher, labels(&y, &device)));
        assert_close(name, &[total], &[ws * soft + wh * hard], 1e-5);

        let device = device.autodiff();
        let (student, teacher) = inputs(&device);
        let student = student.require_grad();
        let loss = kd.forward(student.clone(), teacher, labels(&y, &device));
        assert_close(
            name,
            &[scalar(loss.clone())],
            &[ws * soft + wh * hard],
            1e-5,
        );
        let got = values(student.grad(&loss.backward()).unwrap());
        assert_close(name, &got, &grad(ws, wh), 1e-5);

        // Each part, and a combination the config's weights do not give.
        let (student, teacher) = inputs(&device);
        let student = student.require_grad();
        let parts = kd.forward_parts(student.clone(), teacher, labels(&y, &device));
        assert_close(name, &[scalar(parts.soft.clone())], &[soft], 1e-5);
        assert_close(name, &[scalar(parts.hard.clone())], &[hard], 1e-5);
        let mixed = parts.soft.mul_scalar(0.3) - parts.hard.mul_scalar(2.0);
        let got = values(student.grad(&mixed.backward()).unwrap());
        assert_close(name, &got, &grad(0.3, -2.0), 1e-5);
    }
}
