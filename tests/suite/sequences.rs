//! A language model's shapes: `[batch, seq, vocab]` logits with `[batch, seq]`
//! labels and a padding mask in burn's convention (`true` = padding), taken by
//! `KdLoss`, `DkdLoss` and `FusedLinearKdLoss` directly. The reference is the
//! same loss on the flattened `[batch·seq, vocab]` tensors with the inverted
//! mask as `keep_rows` (itself checked against PyTorch and f64 elsewhere),
//! and, for the reductions, per-token values by hand in f64.

use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use burn_distill::dkd::DkdLossConfig;
use burn_distill::{
    DistillError, FusedLinearKdLossConfig, KdLossConfig, LinearTeacher, Reduction, SparseTeacher,
    Targets, TeacherOutput,
};

use crate::common::{
    EVERY_DIVERGENCE, Normals, Rng, assert_allclose, assert_shape_mismatch, devices, devices_f64,
    reference_softmax, values,
};

const BATCH: usize = 3;
const SEQ: usize = 4;
const VOCAB: usize = 6;

/// Sequence 0 is full, sequence 1 has its last two tokens padded, sequence 2
/// is all padding.
fn padding() -> Vec<bool> {
    let mut pad = vec![false; BATCH * SEQ];
    pad[SEQ + 2] = true;
    pad[SEQ + 3] = true;
    for p in &mut pad[2 * SEQ..] {
        *p = true;
    }
    pad
}

fn tensor3(values: &[f64], dims: [usize; 3], device: &Device, dtype: DType) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), (device, dtype))
}

fn ints2(values: &[i64], dims: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), device)
}

fn bools<const D: usize>(values: &[bool], dims: [usize; D], device: &Device) -> Tensor<D, Bool> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), device)
}

struct Case {
    z: Vec<f64>,
    v: Vec<f64>,
    y: Vec<i64>,
}

fn case(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    Case {
        z: rng.normals(BATCH * SEQ * VOCAB, 2.0),
        v: rng.normals(BATCH * SEQ * VOCAB, 2.0),
        y: (0..BATCH * SEQ)
            .map(|_| (rng.uniform() * VOCAB as f64) as i64 % VOCAB as i64)
            .collect(),
    }
}

/// `[batch, seq, vocab]` with a padding mask equals `[batch·seq, vocab]` with
/// the inverted mask as `keep_rows`: value, parts, per-token values and the
/// gradient, for every divergence, fused and not, on every device.
#[test]
fn kd_on_sequences_equals_the_flattened_rows() {
    let c = case(1);
    let pad = padding();
    let keep: Vec<bool> = pad.iter().map(|p| !p).collect();
    for (name, device) in devices() {
        let device = device.autodiff();
        for divergence in EVERY_DIVERGENCE {
            for fused in [true, false] {
                let kd = KdLossConfig::new()
                    .with_temperature(2.0)
                    .with_divergence(divergence)
                    .with_fused_kernel(fused)
                    .init();
                let what = format!("{name} {divergence:?} fused {fused}");
                let z3 = tensor3(&c.z, [BATCH, SEQ, VOCAB], &device, DType::F32).require_grad();
                let v3 = tensor3(&c.v, [BATCH, SEQ, VOCAB], &device, DType::F32);
                let targets3 = Targets::for_sequences(ints2(&c.y, [BATCH, SEQ], &device))
                    .with_padding_mask(bools(&pad, [BATCH, SEQ], &device));
                let loss3 = kd.forward(z3.clone(), v3.clone(), targets3.clone());
                let grad3 = values(z3.grad(&loss3.clone().backward()).unwrap());
                let parts3 = kd.forward_parts(z3.clone(), v3.clone(), targets3.clone());
                let per_token: Tensor<2> = kd.forward_no_reduction(z3, v3, targets3);
                assert_eq!(per_token.dims(), [BATCH, SEQ], "{what}");

                let z2 = Tensor::<2>::from_data(
                    TensorData::new(c.z.clone(), [BATCH * SEQ, VOCAB]),
                    (&device, DType::F32),
                )
                .require_grad();
                let v2 = Tensor::<2>::from_data(
                    TensorData::new(c.v.clone(), [BATCH * SEQ, VOCAB]),
                    (&device, DType::F32),
                );
                let targets2 = Targets::new(Tensor::<1, Int>::from_data(
                    TensorData::new(c.y.clone(), [BATCH * SEQ]),
                    &device,
                ))
                .with_keep_rows(bools(&keep, [BATCH * SEQ], &device));
                let loss2 = kd.forward(z2.clone(), v2.clone(), targets2.clone());
                let grad2 = values(z2.grad(&loss2.clone().backward()).unwrap());
                let parts2 = kd.forward_parts(z2.clone(), v2.clone(), targets2.clone());
                let per_row = kd.forward_no_reduction(z2, v2, targets2);

                let close = |what: &str, a: Vec<f64>, b: Vec<f64>| {
                    assert_allclose(what, &a, &b, 1e-6, 1e-7)
                };
                close(&what, values(loss3), values(loss2));
                close(&what, grad3.clone(), grad2);
                close(&what, values(parts3.soft), values(parts2.soft));
                close(&what, values(parts3.hard), values(parts2.hard));
                close(&what, values(per_token), values(per_row));
                // Padding gets exactly no gradient, the all-padding sequence included.
                for (token, &p) in pad.iter().enumerate() {
                    if p {
                        let g = &grad3[token * VOCAB..(token + 1) * VOCAB];
                        assert!(g.iter().all(|&x| x == 0.0), "{what}: token {token}: {g:?}");
                    }
                }
            }
        }
    }
}

/// burn's own padding mask (`generate_padding_mask`, `true` on padding) goes
/// straight in: the loss equals the one over the unpadded tokens alone.
#[test]
fn burn_padding_mask_passes_as_it_is() {
    use burn::nn::attention::{SeqLengthOption, generate_padding_mask};
    let device = Device::flex();
    let c = case(2);
    // Two sequences of lengths 4 and 2, padded with token 0.
    let tokens = vec![vec![1, 2, 3, 4], vec![5, 1]];
    let mask = generate_padding_mask(0, tokens, SeqLengthOption::Fixed(SEQ), &device);
    let kd = KdLossConfig::new().init();
    let (z, v) = (&c.z[..2 * SEQ * VOCAB], &c.v[..2 * SEQ * VOCAB]);
    let y = &c.y[..2 * SEQ];
    let z3 = tensor3(z, [2, SEQ, VOCAB], &device, DType::F32);
    let v3 = tensor3(v, [2, SEQ, VOCAB], &device, DType::F32);
    let masked = kd.forward(
        z3,
        v3,
        Targets::for_sequences(ints2(y, [2, SEQ], &device)).with_padding_mask(mask.mask),
    );
    // The six real tokens: rows 0..4 and 4..6.
    let real: Vec<usize> = vec![0, 1, 2, 3, 4, 5];
    let pick = |x: &[f64]| -> Vec<f64> {
        real.iter()
            .flat_map(|&r| x[r * VOCAB..(r + 1) * VOCAB].to_vec())
            .collect()
    };
    let z2 = Tensor::<2>::from_data(TensorData::new(pick(z), [6, VOCAB]), &device);
    let v2 = Tensor::<2>::from_data(TensorData::new(pick(v), [6, VOCAB]), &device);
    let y2: Vec<i64> = real.iter().map(|&r| y[r]).collect();
    let alone = kd.forward(
        z2,
        v2,
        Tensor::<1, Int>::from_data(TensorData::new(y2, [6]), &device),
    );
    assert_allclose("burn mask", &values(masked), &values(alone), 1e-6, 0.0);
}

/// Per-token soft term `T²·KL(p‖q)` at `T` in f64, written out here.
fn reference_kl_tokens(z: &[f64], v: &[f64], t: f64) -> Vec<f64> {
    let q = reference_softmax(z, VOCAB, t);
    let p = reference_softmax(v, VOCAB, t);
    p.chunks(VOCAB)
        .zip(q.chunks(VOCAB))
        .map(|(p, q)| t * t * p.iter().zip(q).map(|(p, q)| p * (p / q).ln()).sum::<f64>())
        .collect()
}

/// Mean, sum, a global count and the per-sequence mean against sums of the
/// f64 per-token KL written out here, in f64 on the CPU backends.
#[test]
fn reductions_match_hand_sums() {
    let c = case(3);
    let pad = padding();
    let t = 2.0;
    let tokens = reference_kl_tokens(&c.z, &c.v, t);
    let kept: Vec<usize> = (0..BATCH * SEQ).filter(|&i| !pad[i]).collect();
    let sum: f64 = kept.iter().map(|&i| tokens[i]).sum();
    // Sequence 0: 4 tokens, sequence 1: 2, sequence 2: none (left out of the mean).
    let seq0: f64 = tokens[..SEQ].iter().sum::<f64>() / SEQ as f64;
    let seq1: f64 = tokens[SEQ..SEQ + 2].iter().sum::<f64>() / 2.0;
    let expected = [
        (Reduction::Mean, sum / kept.len() as f64),
        (Reduction::Sum, sum),
        (Reduction::GlobalCount(10), sum / 10.0),
        (Reduction::SequenceMean, (seq0 + seq1) / 2.0),
    ];
    for (name, device) in devices_f64() {
        for fused in [true, false] {
            let kd = KdLossConfig::new()
                .with_temperature(t)
                .with_soft_weight(1.0)
                .with_hard_weight(0.0)
                .with_fused_kernel(fused)
                .init();
            for (reduction, want) in expected {
                let loss = kd.forward(
                    tensor3(&c.z, [BATCH, SEQ, VOCAB], &device, DType::F64),
                    tensor3(&c.v, [BATCH, SEQ, VOCAB], &device, DType::F64),
                    Targets::unlabelled()
                        .with_padding_mask(bools(&pad, [BATCH, SEQ], &device))
                        .with_reduction(reduction),
                );
                let what = format!("{name} fused {fused} {reduction:?}");
                assert_allclose(&what, &values(loss), &[want], 1e-12, 1e-14);
            }
        }
    }
}

/// Micro-batches with unequal padding, each divided by the whole step's kept
/// tokens, sum to the whole batch's loss and gradient (f64, 1e-12).
#[test]
fn global_count_over_micro_batches_is_the_whole_batch() {
    let c = case(4);
    let pad = padding();
    let kept = pad.iter().filter(|p| !**p).count();
    for (name, device) in devices_f64() {
        let device = device.autodiff();
        for divergence in EVERY_DIVERGENCE {
            let kd = KdLossConfig::new().with_divergence(divergence).init();
            let run = |seqs: std::ops::Range<usize>, reduction: Reduction| {
                let n = seqs.len();
                let cut = |x: &[f64], width: usize| {
                    x[seqs.start * SEQ * width..seqs.end * SEQ * width].to_vec()
                };
                let z =
                    tensor3(&cut(&c.z, VOCAB), [n, SEQ, VOCAB], &device, DType::F64).require_grad();
                let v = tensor3(&cut(&c.v, VOCAB), [n, SEQ, VOCAB], &device, DType::F64);
                let y = ints2(&c.y[seqs.start * SEQ..seqs.end * SEQ], [n, SEQ], &device);
                let mask = bools(&pad[seqs.start * SEQ..seqs.end * SEQ], [n, SEQ], &device);
                let targets = Targets::for_sequences(y)
                    .with_padding_mask(mask)
                    .with_reduction(reduction);
                let loss = kd.forward(z.clone(), v, targets);
                let grad = values(z.grad(&loss.clone().backward()).unwrap());
                (values(loss)[0], grad)
            };
            let (whole, whole_grad) = run(0..BATCH, Reduction::Mean);
            let (a, ga) = run(0..1, Reduction::GlobalCount(kept));
            let (b, gb) = run(1..BATCH, Reduction::GlobalCount(kept));
            let what = format!("{name} {divergence:?}");
            assert_allclose(&what, &[a + b], &[whole], 1e-12, 1e-14);
            assert_allclose(&what, &[ga, gb].concat(), &whole_grad, 1e-12, 1e-14);
        }
    }
}

/// A batch that is all padding: exactly 0 and a zero gradient, under every
/// reduction (a global count of 0 is allowed there).
#[test]
fn all_padding_is_exactly_zero() {
    let c = case(5);
    let pad = vec![true; BATCH * SEQ];
    for (name, device) in devices() {
        let device = device.autodiff();
        for reduction in [
            Reduction::Mean,
            Reduction::Sum,
            Reduction::GlobalCount(0),
            Reduction::SequenceMean,
        ] {
            let kd = KdLossConfig::new().init();
            let z = tensor3(&c.z, [BATCH, SEQ, VOCAB], &device, DType::F32).require_grad();
            let v = tensor3(&c.v, [BATCH, SEQ, VOCAB], &device, DType::F32);
            let targets = Targets::for_sequences(ints2(&c.y, [BATCH, SEQ], &device))
                .with_padding_mask(bools(&pad, [BATCH, SEQ], &device))
                .with_reduction(reduction);
            let loss = kd.forward(z.clone(), v, targets);
            let grad = values(z.grad(&loss.clone().backward()).unwrap());
            assert_eq!(values(loss), vec![0.0], "{name} {reduction:?}");
            assert!(grad.iter().all(|&g| g == 0.0), "{name} {reduction:?}");
        }
    }
}

/// Shapes and polarities that must be refused, by name.
#[test]
fn sequence_shapes_are_checked() {
    let device = Device::flex();
    let kd = KdLossConfig::new().init();
    let z = Tensor::<3>::zeros([2, 3, 5], &device);
    let v = TeacherOutput::Logits(Tensor::<3>::zeros([2, 3, 5], &device));
    let y = Tensor::<2, Int>::zeros([2, 3], &device);
    let err = |targets: Targets| kd.check(&z, &v, &targets).unwrap_err();

    // Labels of the wrong positions.
    let e = err(Targets::for_sequences(Tensor::<2, Int>::zeros(
        [3, 2],
        &device,
    )));
    assert!(
        matches!(
            e,
            DistillError::ShapeMismatch {
                left_argument: "targets",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("[3, 2]") && e.to_string().contains("[2, 3]"),
        "{e}"
    );
    // Flattened labels for sequence logits.
    let e = err(Targets::new(Tensor::<1, Int>::zeros([6], &device)));
    assert!(matches!(e, DistillError::ShapeMismatch { .. }), "{e}");
    // A padding mask of the wrong shape.
    let e = err(Targets::for_sequences(y.clone()).with_padding_mask(bools(
        &[false; 8],
        [2, 4],
        &device,
    )));
    assert!(
        e.to_string().contains("padding_mask has shape [2, 4]"),
        "{e}"
    );
    // A keep mask cannot be passed with sequences: its polarity is not burn's.
    let e = err(Targets::for_sequences(y.clone()).with_keep_rows(bools(&[true; 6], [6], &device)));
    assert!(e.to_string().contains("with_padding_mask"), "{e}");
    // A teacher with other positions.
    let bad_teacher = TeacherOutput::Logits(Tensor::<3>::zeros([2, 4, 5], &device));
    let e = kd
        .check(&z, &bad_teacher, &Targets::for_sequences(y.clone()))
        .unwrap_err();
    assert!(matches!(e, DistillError::ShapeMismatch { .. }), "{e}");
    // A global count of 0 while tokens are kept.
    let e = err(Targets::for_sequences(y.clone()).with_reduction(Reduction::GlobalCount(0)));
    assert_eq!(e, DistillError::ZeroGlobalCount { kept: 6 });
    let partly = bools(&[true, false, true, true, true, true], [2, 3], &device);
    let e = err(Targets::for_sequences(y.clone())
        .with_padding_mask(partly)
        .with_reduction(Reduction::GlobalCount(0)));
    assert_eq!(e, DistillError::ZeroGlobalCount { kept: 1 });
    // Rows: a padding mask of the wrong length is named too.
    let z2 = Tensor::<2>::zeros([4, 5], &device);
    let e = kd
        .check(
            &z2,
            &TeacherOutput::Logits(Tensor::<2>::zeros([4, 5], &device)),
            &Targets::unlabelled().with_padding_mask(bools(&[false; 3], [3], &device)),
        )
        .unwrap_err();
    assert!(e.to_string().contains("padding_mask has shape [3]"), "{e}");
}

/// A top-k teacher gives one row per token (a store's layout) for sequence
/// logits, and equals the flattened call.
#[test]
fn top_k_teacher_rows_serve_sequences() {
    let c = case(6);
    let device = Device::flex();
    let kd = KdLossConfig::new().with_temperature(2.0).init();
    let v2 = Tensor::<2>::from_data(TensorData::new(c.v.clone(), [BATCH * SEQ, VOCAB]), &device);
    let sparse = SparseTeacher::top_k(v2, 3, 2.0).unwrap();
    let z3 = tensor3(&c.z, [BATCH, SEQ, VOCAB], &device, DType::F32);
    let y = ints2(&c.y, [BATCH, SEQ], &device);
    let on_sequences = kd.forward(
        z3.clone(),
        sparse.clone(),
        Targets::for_sequences(y.clone()),
    );
    let flat = kd.forward(
        z3.reshape([BATCH * SEQ, VOCAB]),
        sparse,
        y.reshape([BATCH * SEQ]),
    );
    assert_allclose("top-k", &values(on_sequences), &values(flat), 1e-6, 0.0);
}

/// DKD on sequences equals DKD on the flattened rows.
#[test]
fn dkd_on_sequences_equals_the_flattened_rows() {
    let c = case(7);
    let pad = padding();
    let keep: Vec<bool> = pad.iter().map(|p| !p).collect();
    for (name, device) in devices() {
        for fused in [true, false] {
            let dkd = DkdLossConfig::new().with_fused_kernel(fused).init();
            let z3 = tensor3(&c.z, [BATCH, SEQ, VOCAB], &device, DType::F32);
            let v3 = tensor3(&c.v, [BATCH, SEQ, VOCAB], &device, DType::F32);
            let targets3 = Targets::for_sequences(ints2(&c.y, [BATCH, SEQ], &device))
                .with_padding_mask(bools(&pad, [BATCH, SEQ], &device));
            let targets2 = Targets::new(Tensor::<1, Int>::from_data(
                TensorData::new(c.y.clone(), [BATCH * SEQ]),
                &device,
            ))
            .with_keep_rows(bools(&keep, [BATCH * SEQ], &device));
            let (z2, v2) = (
                z3.clone().reshape([BATCH * SEQ, VOCAB]),
                v3.clone().reshape([BATCH * SEQ, VOCAB]),
            );
            let what = format!("{name} fused {fused}");
            let a = dkd.forward(z3.clone(), v3.clone(), targets3.clone());
            let b = dkd.forward(z2.clone(), v2.clone(), targets2.clone());
            assert_allclose(&what, &values(a), &values(b), 1e-6, 1e-7);
            let a: Tensor<2> = dkd.forward_no_reduction(z3, v3, targets3);
            let b = dkd.forward_no_reduction(z2, v2, targets2);
            assert_allclose(&what, &values(a), &values(b), 1e-6, 1e-7);
        }
    }
}

/// The fused linear loss on `[batch, seq, d]` hidden states equals the dense
/// `KdLoss` on the logits, with padding and the per-sequence mean, in chunks
/// that cut across sequences.
#[test]
fn fused_linear_on_sequences_equals_dense() {
    let mut rng = Rng::new(8);
    let d = 5;
    let pad = padding();
    let hidden = rng.normals(BATCH * SEQ * d, 1.0);
    let weight = rng.normals(d * VOCAB, 1.0);
    let teacher = rng.normals(BATCH * SEQ * VOCAB, 2.0);
    let y: Vec<i64> = (0..BATCH * SEQ).map(|i| (i % VOCAB) as i64).collect();
    for (name, device) in devices() {
        let device = device.autodiff();
        for reduction in [Reduction::Mean, Reduction::SequenceMean, Reduction::Sum] {
            let kd = KdLossConfig::new().with_temperature(2.0);
            let targets = || {
                Targets::for_sequences(ints2(&y, [BATCH, SEQ], &device))
                    .with_padding_mask(bools(&pad, [BATCH, SEQ], &device))
                    .with_reduction(reduction)
            };
            let h = tensor3(&hidden, [BATCH, SEQ, d], &device, DType::F32).require_grad();
            let w = Tensor::<2>::from_data(TensorData::new(weight.clone(), [d, VOCAB]), &device)
                .require_grad();
            let v = tensor3(&teacher, [BATCH, SEQ, VOCAB], &device, DType::F32);
            let fused = FusedLinearKdLossConfig::new(kd.clone())
                .with_chunk_size(Some(5))
                .init()
                .forward(
                    h.clone(),
                    w.clone(),
                    None,
                    LinearTeacher::Logits(v.clone()),
                    targets(),
                );
            let grads = fused.clone().backward();
            let (gh, gw) = (
                values(h.grad(&grads).unwrap()),
                values(w.grad(&grads).unwrap()),
            );

            let h2 = tensor3(&hidden, [BATCH, SEQ, d], &device, DType::F32).require_grad();
            let w2 = Tensor::<2>::from_data(TensorData::new(weight.clone(), [d, VOCAB]), &device)
                .require_grad();
            let logits = h2
                .clone()
                .reshape([BATCH * SEQ, d])
                .matmul(w2.clone())
                .reshape([BATCH, SEQ, VOCAB]);
            let dense = kd.init().forward(logits, v, targets());
            let grads = dense.clone().backward();
            let (dh, dw) = (
                values(h2.grad(&grads).unwrap()),
                values(w2.grad(&grads).unwrap()),
            );
            let what = format!("{name} {reduction:?}");
            assert_allclose(&what, &values(fused), &values(dense), 1e-5, 1e-6);
            assert_allclose(&what, &gh, &dh, 1e-4, 1e-6);
            assert_allclose(&what, &gw, &dw, 1e-4, 1e-6);
        }
    }
}

/// The fused linear loss refuses, by name, targets or masks of another length
/// than its rows (it used to accept 7 labels for 6 rows) and layers on
/// different devices (it used to panic inside burn's matmul).
#[test]
fn fused_linear_checks_the_whole_batch() {
    let device = Device::flex();
    let loss = FusedLinearKdLossConfig::new(KdLossConfig::new())
        .with_chunk_size(Some(4))
        .init();
    let h = Tensor::<2>::zeros([6, 3], &device);
    let w = Tensor::<2>::zeros([3, 5], &device);
    let v = || LinearTeacher::Logits(Tensor::<2>::zeros([6, 5], &device));
    let run = |targets: Targets| loss.check(&h, &w, None, &v(), &targets).unwrap_err();
    let e = run(Targets::new(Tensor::<1, Int>::zeros([7], &device)));
    assert_shape_mismatch(&e, "targets", &[7], &[6]);
    let e = run(Targets::new(Tensor::<1, Int>::zeros([5], &device)));
    assert_shape_mismatch(&e, "targets", &[5], &[6]);
    let e = run(Targets::unlabelled().with_keep_rows(bools(&[true; 7], [7], &device)));
    assert_shape_mismatch(&e, "keep_rows", &[7], &[6]);
    #[allow(deprecated)] // Device::ndarray is deprecated in burn 0.22 but still supported.
    let other = Device::ndarray();
    let e = loss
        .check(
            &h,
            &Tensor::<2>::zeros([3, 5], &other),
            None,
            &v(),
            &Targets::unlabelled(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            DistillError::DeviceMismatch {
                right_argument: "weight",
                ..
            }
        ),
        "{e}"
    );
    // Sequences: hidden [2, 3, d] with a teacher of other positions.
    let h3 = Tensor::<3>::zeros([2, 3, 3], &device);
    let e = loss
        .check(
            &h3,
            &w,
            None,
            &LinearTeacher::Logits(Tensor::<3>::zeros([3, 2, 5], &device)),
            &Targets::unlabelled(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            DistillError::ShapeMismatch {
                left_argument: "teacher_logits",
                ..
            }
        ),
        "{e}"
    );
    // The teacher's vocabulary against the student's (5 classes): a teacher
    // output layer of 6 columns, and a top-k class 5 out of range, are refused
    // by `check` as by the forward.
    let wide_teacher = LinearTeacher::Hidden {
        hidden: Tensor::<2>::zeros([6, 2], &device),
        weight: Tensor::<2>::zeros([2, 6], &device),
        bias: None,
    };
    let e = loss
        .check(&h, &w, None, &wide_teacher, &Targets::unlabelled())
        .unwrap_err();
    assert_shape_mismatch(&e, "weight columns", &[5], &[6]);
    assert!(e.to_string().contains("teacher.weight columns"), "{e}");
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        loss.forward(
            h.clone(),
            w.clone(),
            None,
            wide_teacher,
            Targets::unlabelled(),
        )
    }))
    .expect_err("a wider teacher panics");
    assert_eq!(panic.downcast_ref::<String>(), Some(&e.to_string()));
    let out_of_range = SparseTeacher::new(
        Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 5], [6, 1]), &device),
        Tensor::<2>::full([6, 1], -1.0, &device),
    )
    .unwrap();
    let e = loss
        .check(
            &h,
            &w,
            None,
            &LinearTeacher::TopK(out_of_range),
            &Targets::unlabelled(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            DistillError::LabelOutOfRange {
                label: 5,
                num_classes: 5,
                ..
            }
        ),
        "{e:?}"
    );
}

/// The causal shift, done once by `TokenBatch`: the loss over a batch's
/// next-token targets equals the loss over the hand-picked positions whose
/// next token is neither padding nor prompt, labelled with that token.
#[test]
fn next_token_targets_score_exactly_the_completions() {
    use burn_distill::lm::TokenBatch;
    let device = Device::flex();
    let vocab = 8;
    let tokens = ints2(&[1, 2, 3, 4, 5, 6, 0, 0], [2, 4], &device);
    let padding = bools(
        &[false, false, false, false, false, false, true, true],
        [2, 4],
        &device,
    );
    let prompt = bools(
        &[true, true, false, false, true, false, false, false],
        [2, 4],
        &device,
    );
    let batch = TokenBatch::new(tokens)
        .with_padding_mask(padding)
        .with_prompt_mask(prompt);
    assert_eq!(batch.counted_tokens().unwrap(), 3);
    let mut rng = Rng::new(9);
    let z = rng.normals(2 * 4 * vocab, 2.0);
    let v = rng.normals(2 * 4 * vocab, 2.0);
    let kd = KdLossConfig::new().init();
    let shifted = kd.forward(
        tensor3(&z, [2, 4, vocab], &device, DType::F32),
        tensor3(&v, [2, 4, vocab], &device, DType::F32),
        batch.next_token_targets().unwrap(),
    );
    // Positions (0, 1) → 3, (0, 2) → 4, (1, 0) → 6; rows 1, 2 and 4.
    let rows = [1usize, 2, 4];
    let pick = |x: &[f64]| -> Vec<f64> {
        rows.iter()
            .flat_map(|&r| x[r * vocab..(r + 1) * vocab].to_vec())
            .collect()
    };
    let by_hand = kd.forward(
        Tensor::<2>::from_data(TensorData::new(pick(&z), [3, vocab]), &device),
        Tensor::<2>::from_data(TensorData::new(pick(&v), [3, vocab]), &device),
        Tensor::<1, Int>::from_data(TensorData::new(vec![3i64, 4, 6], [3]), &device),
    );
    assert_allclose("shift", &values(shifted), &values(by_hand), 1e-6, 0.0);

    // Masks of another shape are refused by name.
    let bad = TokenBatch::new(ints2(&[1, 2, 3, 4], [1, 4], &device)).with_prompt_mask(bools(
        &[true; 3],
        [1, 3],
        &device,
    ));
    let e = bad.next_token_targets().unwrap_err();
    assert!(
        matches!(
            e,
            DistillError::ShapeMismatch {
                left_argument: "prompt_mask",
                ..
            }
        ),
        "{e}"
    );
}
