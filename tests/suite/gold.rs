//! GOLD's cross-tokenizer loss (`burn_distill::gold`): TRL 1.16's `ULDLoss`
//! with `use_extended_uld` (`tests/fixtures/gold_trl.json`, written by
//! `scripts/gen_gold_fixtures.py`), value and gradient per element, both
//! merge strategies; the alignment's spans; one tokenizer on both sides
//! equal to `Divergence::Uld`; bad offsets, spans and tokens refused by name.

use crate::common;

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_distill::gold::{GoldLossConfig, SpanAlignment, TokenMatches, TokenMerge, Tokenization};
use burn_distill::{DistillError, Divergence, KdLossConfig, Reduction, Targets};
use common::{assert_allclose, devices, devices_f64, scalar, tensor3, values};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    trl_version: String,
    student_shape: [usize; 3],
    teacher_shape: [usize; 3],
    student_logits: Vec<f64>,
    teacher_logits: Vec<f64>,
    sequences: Vec<Sequence>,
    student_vocabulary: std::collections::HashMap<String, usize>,
    teacher_vocabulary: std::collections::HashMap<String, usize>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Sequence {
    student_start: usize,
    student_tokens: Vec<i64>,
    student_offsets: Vec<[usize; 2]>,
    teacher_start: usize,
    teacher_tokens: Vec<i64>,
    teacher_offsets: Vec<[usize; 2]>,
}

#[derive(Deserialize)]
struct Case {
    merge: String,
    student_temperature: f64,
    teacher_temperature: f64,
    hybrid: Option<Hybrid>,
    value: f64,
    grad: Vec<f64>,
}

#[derive(Deserialize)]
struct Hybrid {
    beta: f64,
    weights: Option<[f64; 2]>,
}

fn fixtures() -> Fixtures {
    let text = include_str!("../fixtures/gold_trl.json");
    let fixtures: Fixtures = serde_json::from_str(text).expect("parse gold_trl.json");
    assert!(
        fixtures.trl_version.starts_with('1'),
        "{}",
        fixtures.trl_version
    );
    assert_eq!(fixtures.cases.len(), 6);
    assert_eq!(
        fixtures.cases.iter().filter(|c| c.hybrid.is_some()).count(),
        2
    );
    fixtures
}

/// The alignments of the fixture's sequences; the first rows as TRL slices
/// them: the answer's start ("observed"), one row earlier ("bayesian").
fn alignments(f: &Fixtures, merge: TokenMerge) -> Vec<SpanAlignment> {
    let shift = usize::from(merge == TokenMerge::Bayesian);
    f.sequences
        .iter()
        .map(|s| {
            SpanAlignment::from_byte_offsets(
                Tokenization {
                    first_row: s.student_start - shift,
                    tokens: &s.student_tokens,
                    byte_offsets: &s.student_offsets,
                },
                Tokenization {
                    first_row: s.teacher_start - shift,
                    tokens: &s.teacher_tokens,
                    byte_offsets: &s.teacher_offsets,
                },
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn matches_trl_in_f64() {
    check_fixtures(devices_f64(), DType::F64, 1e-9, 1e-12);
}

#[test]
fn matches_trl_in_f32() {
    check_fixtures(devices(), DType::F32, 1e-4, 1e-6);
}

fn check_fixtures(devices: Vec<(&'static str, Device)>, dtype: DType, rtol: f64, atol: f64) {
    let f = fixtures();
    for (name, device) in devices {
        let device = device.autodiff();
        for case in &f.cases {
            let merge = match case.merge.as_str() {
                "observed" => TokenMerge::Observed,
                "bayesian" => TokenMerge::Bayesian,
                other => panic!("unknown merge {other}"),
            };
            let config = GoldLossConfig::new()
                .with_merge(merge)
                .with_student_temperature(case.student_temperature)
                .with_teacher_temperature(case.teacher_temperature);
            let loss = match &case.hybrid {
                None => config.init(),
                Some(hybrid) => config
                    .with_beta(hybrid.beta)
                    .with_hybrid_weights(hybrid.weights)
                    .init()
                    .with_matches(matches(&f)),
            };
            let z = tensor3(&f.student_logits, f.student_shape, &device, dtype).require_grad();
            let v = tensor3(&f.teacher_logits, f.teacher_shape, &device, dtype);
            let alignments = alignments(&f, merge);
            loss.check(&z, &v, &alignments).unwrap();
            let value = loss.forward(z.clone(), v, &alignments);
            assert_eq!(value.dtype(), dtype);
            let grad = values(z.grad(&value.clone().backward()).unwrap());
            let what = format!(
                "{name} {:?} T {}/{}",
                merge, case.student_temperature, case.teacher_temperature
            );
            assert_allclose(&what, &[scalar(value)], &[case.value], rtol, atol);
            assert_allclose(&format!("{what} grad"), &grad, &case.grad, rtol, atol);
        }
    }
}

/// The ids of the strings both fixture vocabularies have.
fn matches(f: &Fixtures) -> TokenMatches {
    fn side(v: &std::collections::HashMap<String, usize>) -> Vec<(&str, usize)> {
        v.iter().map(|(s, &i)| (s.as_str(), i)).collect()
    }
    TokenMatches::from_vocabularies(side(&f.student_vocabulary), side(&f.teacher_vocabulary))
        .unwrap()
}

/// "a", "c" and " sat" are in both vocabularies; a string or an id listed
/// twice on a side is refused by name.
#[test]
fn token_matches_pair_equal_strings() {
    assert_eq!(matches(&fixtures()).pairs(), &[(5, 4), (4, 6), (0, 8)]);
    let twice = TokenMatches::from_vocabularies([("a", 0), ("a", 1)], [("a", 0)]).unwrap_err();
    assert!(
        twice.to_string().contains("student_vocabulary") && twice.to_string().contains("\"a\""),
        "{twice}"
    );
    let twice = TokenMatches::from_vocabularies([("a", 0)], [("a", 3), ("b", 3)]).unwrap_err();
    assert!(
        twice.to_string().contains("teacher_vocabulary") && twice.to_string().contains("id 3"),
        "{twice}"
    );
    // An id outside the logits' vocabulary: refused by the loss's check.
    let far = TokenMatches::from_vocabularies([("a", 7)], [("a", 0)]).unwrap();
    let offsets = [[0usize, 1]];
    let side = Tokenization {
        first_row: 0,
        tokens: &[0],
        byte_offsets: &offsets,
    };
    let a = SpanAlignment::from_byte_offsets(side, side).unwrap();
    let device = Device::flex();
    let z = Tensor::<3>::zeros([1, 1, 3], &device);
    let error = GoldLossConfig::new()
        .init()
        .with_matches(far)
        .check(&z, &z, &[a])
        .unwrap_err();
    assert!(
        error.to_string().contains("student id 7") && error.to_string().contains("vocabulary of 3"),
        "{error}"
    );
}

/// The spans close where both tokenizations end a token at the same byte;
/// a zero-width token left at the end on one side (an EOS) is left out.
#[test]
fn spans_close_at_shared_boundaries() {
    let f = fixtures();
    let a = alignments(&f, TokenMerge::Observed);
    assert_eq!(a[0].spans(), &[(0..1, 0..2), (1..2, 2..4), (2..3, 4..5)]);
    assert_eq!(a[1].spans(), &[(0..2, 0..1), (2..3, 1..3)]);
}

/// One tokenizer on both sides: every span is one token, nothing merges,
/// and GOLD is ULD reduced per sequence (`Reduction::SequenceMean`).
#[test]
fn one_tokenizer_on_both_sides_is_uld() {
    let mut rng = common::Rng::new(50);
    use common::Normals;
    for (name, device) in devices() {
        let (b, s, vs, vt) = (2, 4, 5, 7);
        let zs = rng.normals(b * s * vs, 2.0);
        let vs_ = rng.normals(b * s * vt, 2.0);
        let z = tensor3(&zs, [b, s, vs], &device, DType::F32);
        let v = tensor3(&vs_, [b, s, vt], &device, DType::F32);
        // Sequence 0 has 3 tokens (rows 0..3), sequence 1 has 4.
        let lengths = [3, 4];
        let offsets: Vec<[usize; 2]> = (0..4).map(|k| [k, k + 1]).collect();
        let tokens = [0i64, 1, 2, 3];
        let alignments: Vec<SpanAlignment> = lengths
            .iter()
            .map(|&n| {
                let side = Tokenization {
                    first_row: 0,
                    tokens: &tokens[..n],
                    byte_offsets: &offsets[..n],
                };
                SpanAlignment::from_byte_offsets(side, side).unwrap()
            })
            .collect();
        let gold = scalar(
            GoldLossConfig::new()
                .init()
                .forward(z.clone(), v.clone(), &alignments),
        );
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![false, false, false, true, false, false, false, false],
                [b, s],
            ),
            &device,
        );
        let uld = KdLossConfig::new()
            .with_divergence(Divergence::Uld)
            .with_hard_weight(0.0)
            .with_soft_weight(1.0)
            .with_temperature(1.0)
            .init();
        let want = scalar(
            uld.forward(
                z,
                v,
                Targets::unlabelled()
                    .with_padding_mask(padding)
                    .with_reduction(Reduction::SequenceMean),
            ),
        );
        assert!(
            (gold - want).abs() < 1e-5 * want,
            "{name}: {gold} vs {want}"
        );
    }
}

/// Bad offsets, tokens, spans and batches: a `DistillError` naming them.
#[test]
fn bad_alignments_are_refused_by_name() {
    let offsets = [[0usize, 2], [2, 4]];
    let tokens = [1i64, 2];
    let ok = Tokenization {
        first_row: 0,
        tokens: &tokens,
        byte_offsets: &offsets,
    };
    let refused = |student: Tokenization, teacher: Tokenization, words: &[&str]| {
        let error = SpanAlignment::from_byte_offsets(student, teacher).unwrap_err();
        assert!(
            matches!(error, DistillError::InvalidAlignment { .. }),
            "{error}"
        );
        let shown = error.to_string();
        for word in words {
            assert!(shown.contains(word), "{word} not in {shown}");
        }
    };
    refused(
        Tokenization {
            tokens: &[],
            byte_offsets: &[],
            ..ok
        },
        ok,
        &["student.byte_offsets", "no token"],
    );
    refused(
        ok,
        Tokenization { tokens: &[1], ..ok },
        &["teacher.byte_offsets", "2 offsets for 1"],
    );
    refused(
        ok,
        Tokenization {
            tokens: &[1, -3],
            ..ok
        },
        &["teacher", "-3"],
    );
    refused(
        Tokenization {
            byte_offsets: &[[0, 2], [3, 1]],
            ..ok
        },
        ok,
        &["student", "[3, 1]"],
    );
    refused(
        Tokenization {
            byte_offsets: &[[0, 2], [1, 1]],
            ..ok
        },
        ok,
        &["student", "ends at byte 1"],
    );
    refused(
        ok,
        Tokenization {
            byte_offsets: &[[0, 2], [2, 5]],
            ..ok
        },
        &["byte 4", "byte 5", "same text"],
    );

    let device = Device::flex();
    let loss = GoldLossConfig::new().init();
    let a = SpanAlignment::from_byte_offsets(ok, Tokenization { first_row: 1, ..ok }).unwrap();
    let z = Tensor::<3>::zeros([1, 2, 3], &device);
    let v = Tensor::<3>::zeros([1, 3, 3], &device);
    let error = loss.check(&z, &v, &[a.clone(), a.clone()]).unwrap_err();
    assert!(
        matches!(error, DistillError::ShapeMismatch { .. }),
        "{error}"
    );
    // Teacher rows 1..3 fit a sequence of 3; of 2 they cross its end.
    loss.check(&z, &v, std::slice::from_ref(&a)).unwrap();
    let short = Tensor::<3>::zeros([1, 2, 3], &device);
    let error = loss
        .check(&z, &short, std::slice::from_ref(&a))
        .unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.contains("alignments[0]") && shown.contains("rows 1..3"),
        "{shown}"
    );
    // Token 2 is outside a vocabulary of 2.
    let narrow = Tensor::<3>::zeros([1, 2, 2], &device);
    let error = loss
        .check(&narrow, &v, std::slice::from_ref(&a))
        .unwrap_err();
    assert!(
        error.to_string().contains("token 2") && error.to_string().contains("vocabulary of 2"),
        "{error}"
    );
    let panic = std::panic::catch_unwind(|| {
        loss.forward(narrow.clone(), v.clone(), std::slice::from_ref(&a))
    });
    assert!(panic.is_err());
    let error = GoldLossConfig::new()
        .with_teacher_temperature(0.0)
        .try_init()
        .unwrap_err();
    assert!(error.to_string().contains("teacher_temperature"), "{error}");
}
