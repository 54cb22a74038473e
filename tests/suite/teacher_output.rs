//! A teacher given as a distribution (probabilities or log-probabilities at the
//! distillation temperature) is the same teacher as its logits.

use crate::common;

use burn_distill::{KdLossConfig, Targets, TeacherOutput};
use common::{
    Normals, Rng, assert_close, devices, labels, reference_softmax, scalar, tensor2, values,
};

#[test]
fn probs_and_log_probs_equal_logits() {
    let mut rng = Rng::new(21);
    let (batch, classes, t) = (5, 8, 3.0);
    let z = rng.normals(batch * classes, 2.0);
    let mut v = rng.normals(batch * classes, 2.0);
    v[3] = f64::NEG_INFINITY; // a class the teacher rules out: p = 0
    let p = reference_softmax(&v, classes, t);
    let log_p: Vec<f64> = p.iter().map(|p| p.ln()).collect();
    let y = [0i64, 1, 2, 3, 4];
    for (name, device) in devices() {
        let device = device.autodiff();
        for analytic in [true, false] {
            let kd = KdLossConfig::new()
                .with_temperature(t)
                .with_fused_kernel(analytic)
                .init();
            let run = |teacher: TeacherOutput| {
                let student = tensor2(&z, [batch, classes], &device).require_grad();
                let loss = kd.forward(student.clone(), teacher, labels(&y, &device));
                let value = scalar(loss.clone());
                let grad = values(student.grad(&loss.backward()).unwrap());
                (value, grad)
            };
            let (l_logits, g_logits) = run(TeacherOutput::Logits(tensor2(
                &v,
                [batch, classes],
                &device,
            )));
            let (l_probs, g_probs) =
                run(TeacherOutput::Probs(tensor2(&p, [batch, classes], &device)));
            let (l_log, g_log) = run(TeacherOutput::LogProbs(tensor2(
                &log_p,
                [batch, classes],
                &device,
            )));
            let what = format!("{name} analytic={analytic}");
            assert!(l_logits.is_finite(), "{what}");
            assert_close(&what, &[l_probs, l_log], &[l_logits, l_logits], 1e-5);
            assert_close(&what, &g_probs, &g_logits, 1e-5);
            assert_close(&what, &g_log, &g_logits, 1e-5);
        }
    }
}

#[test]
fn distribution_shape_mismatch_names_the_argument() {
    for (_, device) in devices() {
        let kd = KdLossConfig::new().init();
        let z = tensor2(&[0.0; 6], [2, 3], &device);
        let p = tensor2(&[0.25; 8], [2, 4], &device);
        let err = kd
            .check(&z, &TeacherOutput::Probs(p), &Targets::unlabelled())
            .unwrap_err();
        assert!(
            err.to_string().contains("teacher_probs has shape [2, 4]"),
            "{err}"
        );
    }
}

/// DKD takes the same teacher forms: its distribution at T, as probabilities or
/// log-probabilities, is the same teacher as its logits.
#[test]
fn dkd_takes_probs_and_log_probs() {
    let mut rng = Rng::new(22);
    let (batch, classes, t) = (4, 6, 4.0);
    let z = rng.normals(batch * classes, 2.0);
    let v = rng.normals(batch * classes, 2.0);
    let p = reference_softmax(&v, classes, t);
    let log_p: Vec<f64> = p.iter().map(|p| p.ln()).collect();
    let y = [0i64, 5, 2, 3];
    for (name, device) in devices() {
        let device = device.autodiff();
        let dkd = burn_distill::DkdLossConfig::new()
            .with_temperature(t)
            .init();
        let run = |teacher: TeacherOutput| {
            let student = tensor2(&z, [batch, classes], &device).require_grad();
            let loss = dkd.forward(student.clone(), teacher, labels(&y, &device));
            (
                scalar(loss.clone()),
                values(student.grad(&loss.backward()).unwrap()),
            )
        };
        let (l, g) = run(TeacherOutput::Logits(tensor2(
            &v,
            [batch, classes],
            &device,
        )));
        let (lp, gp) = run(TeacherOutput::Probs(tensor2(&p, [batch, classes], &device)));
        let (ll, gl) = run(TeacherOutput::LogProbs(tensor2(
            &log_p,
            [batch, classes],
            &device,
        )));
        assert_close(name, &[lp, ll], &[l, l], 1e-5);
        assert_close(name, &gp, &g, 1e-5);
        assert_close(name, &gl, &g, 1e-5);
    }
}
