//! Generalist/specialist ensembles (§5): subsets, collapse, sampler, clustering
//! and the eq. 5 combiner, against closed forms and `combiner_torch.json`
//! (`scripts/gen_combiner_fixtures.py`: L-BFGS on q = softmax(r).unwrap(), float64).

use crate::common;

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_distill::DistillError;
use burn_distill::specialist::{
    ClassSubset, ConfusableSubsetsConfig, Specialist, SpecialistCombinerConfig, SpecialistSampler,
    SubsetOverlap,
};
use common::{
    Normals, Rng, assert_allclose, assert_close, assert_shape_mismatch, devices, devices_f64,
    labels, reference_softmax, tensor2, tensor2_f64, values,
};
use serde::Deserialize;

fn specialist(classes: &[usize], num_classes: usize) -> Specialist {
    Specialist::new(ClassSubset::new(classes.to_vec(), num_classes).unwrap())
}

/// Random probability rows `[rows, classes]` (f32-representable), softmax of normals.
fn random_probs(rng: &mut Rng, rows: usize, classes: usize, scale: f64) -> Vec<f64> {
    reference_softmax(&rng.normals(rows * classes, scale), classes, 1.0)
}

/// `A_m p`: sums of `p` into a specialist's outputs, in f64 on the host.
fn collapse_host(p: &[f64], classes: usize, specialist: &Specialist) -> Vec<f64> {
    let k = specialist.num_outputs();
    p.chunks(classes)
        .flat_map(|row| {
            let mut out = vec![0.0; k];
            for (c, &v) in row.iter().enumerate() {
                out[specialist.output_of_class()[c]] += v;
            }
            out
        })
        .collect()
}

// ---------- ClassSubset and Specialist ----------

#[test]
fn subset_validation_errors() {
    assert_eq!(
        ClassSubset::new(vec![], 5).unwrap_err(),
        DistillError::EmptySubset
    );
    assert_eq!(
        ClassSubset::new(vec![1, 5], 5).unwrap_err(),
        DistillError::ClassOutOfRange {
            class: 5,
            num_classes: 5
        }
    );
    assert_eq!(
        ClassSubset::new(vec![2, 1, 2], 5).unwrap_err(),
        DistillError::DuplicateClass { class: 2 }
    );
    let err = ClassSubset::new(vec![1, 9], 5).unwrap_err().to_string();
    assert!(
        err.contains("class 9") && err.contains("5 classes"),
        "{err}"
    );
}

#[test]
fn labels_map_to_subset_outputs_and_dustbin() {
    for (name, device) in devices() {
        let s = specialist(&[4, 1, 7], 8);
        assert_eq!(s.num_outputs(), 4);
        assert_eq!(s.dustbin(), 3);
        let mapped: Vec<i64> = s
            .map_labels(labels(&[0, 1, 2, 3, 4, 5, 6, 7], &device))
            .unwrap()
            .into_data()
            .iter::<i64>()
            .collect();
        assert_eq!(mapped, vec![3, 0, 3, 3, 1, 3, 3, 2], "{name}");
        let err = s.map_labels(labels(&[0, 8], &device)).unwrap_err();
        assert!(
            matches!(err, DistillError::LabelOutOfRange { label: 8, .. }),
            "{err:?}"
        );
    }
}

#[test]
fn collapsed_probs_keep_total_mass() {
    let mut rng = Rng::new(1);
    let (batch, classes) = (6, 9);
    let s = specialist(&[0, 3, 8], classes);
    let p = random_probs(&mut rng, batch, classes, 2.0);
    for (name, device) in devices() {
        let got = values(
            s.collapse_probs(tensor2(&p, [batch, classes], &device))
                .unwrap(),
        );
        assert_close(name, &got, &collapse_host(&p, classes, &s), 1e-6);
        for row in got.chunks(4) {
            assert!(
                (row.iter().sum::<f64>() - 1.0).abs() < 1e-5,
                "{name}: {row:?}"
            );
        }
    }
}

/// softmax(collapse_logits(v, T) / T).unwrap() = collapse_probs(softmax(v / T).unwrap()), at several T.
#[test]
fn dustbin_logit_is_t_logsumexp_of_the_rest() {
    let mut rng = Rng::new(2);
    let (batch, classes) = (5, 11);
    let s = specialist(&[2, 5, 6, 10], classes);
    let v = rng.normals(batch * classes, 3.0);
    for (name, device) in devices() {
        for t in [0.5, 1.0, 4.0, 20.0] {
            let collapsed = values(
                s.collapse_logits(tensor2(&v, [batch, classes], &device), t)
                    .unwrap(),
            );
            let from_logits = reference_softmax(&collapsed, s.num_outputs(), t);
            let expected = collapse_host(&reference_softmax(&v, classes, t), classes, &s);
            assert_close(&format!("{name} T={t}"), &from_logits, &expected, 1e-5);
            // The subset's own logits are unchanged.
            for b in 0..batch {
                for (k, &c) in s.subset().classes().iter().enumerate() {
                    assert_eq!(collapsed[b * 5 + k], v[b * classes + c]);
                }
            }
        }
    }
}

#[test]
fn dustbin_correction_adds_to_last_column_only() {
    for (_, device) in devices() {
        let s = specialist(&[0, 1], 5);
        let logits = tensor2(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], &device);
        let got = values(s.correct_dustbin(logits, 9f64.ln()).unwrap());
        let l9 = 9f64.ln();
        assert_close(
            "correct_dustbin",
            &got,
            &[1.0, 2.0, 3.0 + l9, 4.0, 5.0, 6.0 + l9],
            1e-6,
        );
    }
}

#[test]
fn width_errors_name_the_argument() {
    let device = Device::flex();
    let s = specialist(&[0, 1], 5);
    let err = s
        .collapse_probs(tensor2(&[0.25; 8], [2, 4], &device))
        .unwrap_err();
    assert_shape_mismatch(&err, "probs", &[4], &[5]);
    let err = s
        .collapse_logits(tensor2(&[0.0; 6], [1, 6], &device), 2.0)
        .unwrap_err();
    assert!(
        err.to_string().starts_with("logits has shape [6]") && err.to_string().contains("[5]"),
        "{err}"
    );
}

// ---------- Sampler ----------

#[test]
fn sampler_draws_half_and_half_deterministically() {
    let mut rng = Rng::new(3);
    let data: Vec<i64> = (0..5000).map(|_| rng.below(20) as i64).collect();
    let subset = ClassSubset::new(vec![1, 4, 9], 20).unwrap();
    let sampler = SpecialistSampler::new(&data, &subset).unwrap();
    let sample = sampler.sample(10_000, 11);
    let inside = sample
        .indices
        .iter()
        .filter(|&&i| subset.contains(data[i] as usize))
        .count();
    let fraction = inside as f64 / 10_000.0;
    assert!((fraction - 0.5).abs() <= 0.02, "fraction {fraction}");
    assert_eq!(sample.from_subset, inside);
    assert_eq!(sampler.sample(10_000, 11), sample, "same seed, same draw");
    assert_ne!(
        sampler.sample(10_000, 12).indices,
        sample.indices,
        "another seed, another order"
    );
    // The data's subset fraction, and the correction that undoes the 50% training prior.
    let pi = data
        .iter()
        .filter(|&&y| subset.contains(y as usize))
        .count() as f64
        / 5000.0;
    assert!((sampler.subset_fraction() - pi).abs() < 1e-12);
    assert!((sampler.dustbin_logit_correction() - ((1.0 - pi) / pi).ln()).abs() < 1e-12);
}

#[test]
fn sampler_needs_examples_on_both_sides() {
    let subset = ClassSubset::new(vec![0], 3).unwrap();
    assert_eq!(
        SpecialistSampler::new(&[1, 2, 1], &subset).unwrap_err(),
        DistillError::NoExamples {
            side: "in the subset"
        }
    );
    assert_eq!(
        SpecialistSampler::new(&[0, 0], &subset).unwrap_err(),
        DistillError::NoExamples {
            side: "outside the subset"
        }
    );
}

// ---------- Clustering ----------

/// Predictions where classes are predicted together only within planted
/// groups: each row puts 95% of its mass on one group, spread at random over
/// the group's classes (with extra on the true class), 5% over the others.
fn block_predictions(rng: &mut Rng, groups: &[Vec<usize>], classes: usize, n: usize) -> Vec<f64> {
    let mut probs = Vec::with_capacity(n * classes);
    for _ in 0..n {
        let group = &groups[rng.below(groups.len())];
        let truth = group[rng.below(group.len())];
        let mut row: Vec<f64> = (0..classes)
            .map(|_| 0.05 * rng.uniform() / classes as f64)
            .collect();
        let weights: Vec<f64> = group
            .iter()
            .map(|&c| rng.uniform() + if c == truth { 1.0 } else { 0.0 })
            .collect();
        let total: f64 = weights.iter().sum();
        for (&c, w) in group.iter().zip(weights) {
            row[c] += 0.95 * w / total;
        }
        let sum: f64 = row.iter().sum();
        probs.extend(row.into_iter().map(|p| p / sum));
    }
    probs
}

#[test]
fn clustering_recovers_planted_groups() {
    let groups = vec![
        vec![0, 5, 9, 13],
        vec![1, 2, 3],
        vec![4, 6, 7, 8, 10],
        vec![11, 12, 14, 15],
    ];
    let classes = 16;
    let mut rng = Rng::new(4);
    let probs = block_predictions(&mut rng, &groups, classes, 2000);
    for (name, device) in devices() {
        let config = ConfusableSubsetsConfig::new(4).with_seed(5);
        let found = config
            .find(tensor2(&probs, [2000, classes], &device))
            .unwrap();
        let mut found: Vec<Vec<usize>> = found.iter().map(|s| s.classes().to_vec()).collect();
        found.sort();
        let mut planted = groups.clone();
        planted.sort();
        assert_eq!(found, planted, "{name}");
        // Same seed, same subsets.
        let again = config
            .find(tensor2(&probs, [2000, classes], &device))
            .unwrap();
        let mut again: Vec<Vec<usize>> = again.iter().map(|s| s.classes().to_vec()).collect();
        again.sort();
        assert_eq!(again, planted, "{name}");
    }
}

#[test]
fn overlapping_subsets_have_the_requested_size() {
    let groups = vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]];
    let mut rng = Rng::new(6);
    let probs = block_predictions(&mut rng, &groups, 9, 900);
    let device = Device::flex();
    let subsets = ConfusableSubsetsConfig::new(3)
        .with_subset_size(Some(4))
        .with_overlap(SubsetOverlap::Nearest)
        .find(tensor2(&probs, [900, 9], &device))
        .unwrap();
    assert_eq!(subsets.len(), 3);
    for s in &subsets {
        assert_eq!(s.classes().len(), 4);
        // Each contains a whole planted group (the 3 nearest) plus one more class.
        assert!(
            groups.iter().any(|g| g.iter().all(|&c| s.contains(c))),
            "{s:?}"
        );
    }
    let err = ConfusableSubsetsConfig::new(3)
        .with_subset_size(Some(10))
        .find(tensor2(&probs, [900, 9], &device))
        .unwrap_err();
    assert!(err.to_string().contains("subset_size = 10"), "{err}");
    let err = ConfusableSubsetsConfig::new(0)
        .find(tensor2(&probs, [900, 9], &device))
        .unwrap_err();
    assert!(err.to_string().contains("num_subsets = 0"), "{err}");
}

/// `corr(p_i, Σ_{j ∈ group} p_j)` over the rows of `probs` (`[n, classes]`), in f64.
fn correlation_with(probs: &[f64], classes: usize, i: usize, group: &[usize]) -> f64 {
    let rows: Vec<(f64, f64)> = probs
        .chunks(classes)
        .map(|r| (r[i], group.iter().map(|&c| r[c]).sum()))
        .collect();
    let n = rows.len() as f64;
    let (mx, my) = rows
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in &rows {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Groups of confusable classes and a class the generalist never confuses,
/// clustered into more clusters than groups so that a group is split.
/// `Correlated` grows the parts back into their group (positively correlated)
/// and adds nothing else; `Nearest` pads every subset, the lone class's with
/// classes it is never confused with (the cause of the falling gain the
/// synthetic example once showed).
#[test]
fn correlated_overlap_adds_only_confused_classes() {
    let groups = vec![
        vec![0, 1, 2, 3, 4, 5],
        vec![6, 7, 8],
        vec![9, 10, 11],
        vec![12],
    ];
    let (classes, n) = (13, 3000);
    let mut rng = Rng::new(12);
    let probs = block_predictions(&mut rng, &groups, classes, n);
    let device = Device::flex();
    let find = |overlap| {
        ConfusableSubsetsConfig::new(5)
            .with_seed(3)
            .with_subset_size(Some(6))
            .with_overlap(overlap)
            .find(tensor2(&probs, [n, classes], &device))
            .unwrap()
    };
    let disjoint = ConfusableSubsetsConfig::new(5)
        .with_seed(3)
        .find(tensor2(&probs, [n, classes], &device))
        .unwrap();
    let show = |subsets: &[ClassSubset]| -> Vec<Vec<usize>> {
        subsets.iter().map(|s| s.classes().to_vec()).collect()
    };
    let correlated = find(SubsetOverlap::Correlated);
    let nearest = find(SubsetOverlap::Nearest);
    let what = format!(
        "disjoint {:?}, correlated {:?}, nearest {:?}",
        show(&disjoint),
        show(&correlated),
        show(&nearest)
    );
    // Some planted group is split by the clustering…
    assert!(disjoint.len() > groups.len() - 1, "{what}");
    // …and Correlated grows each cluster back into the planted groups it
    // meets (the probabilities of a group's classes rise together), adding
    // only classes positively correlated with the cluster (checked here in
    // f64 from the probabilities themselves), with duplicates merged.
    let mut expected: Vec<Vec<usize>> = disjoint
        .iter()
        .map(|cluster| {
            let mut grown: Vec<usize> = groups
                .iter()
                .filter(|g| g.iter().any(|&c| cluster.contains(c)))
                .flatten()
                .copied()
                .collect();
            grown.sort();
            grown
        })
        .collect();
    expected.dedup();
    let mut found = show(&correlated);
    found.sort();
    expected.sort();
    expected.dedup();
    assert_eq!(found, expected, "{what}");
    for grown in &correlated {
        let cluster = disjoint
            .iter()
            .find(|c| {
                c.classes().iter().all(|&x| grown.contains(x)) && grown.contains(c.classes()[0])
            })
            .expect("grown from a cluster");
        for &c in grown.classes() {
            if !cluster.contains(c) {
                let r = correlation_with(&probs, classes, c, cluster.classes());
                assert!(r > 0.0, "class {c} added with correlation {r}: {what}");
            }
        }
    }
    // Nearest pads the lone class's subset with classes never confused with it.
    let lone = nearest
        .iter()
        .find(|s| s.classes().contains(&12))
        .expect("a subset with 12");
    assert_eq!(lone.classes().len(), 6, "{what}");
}

/// A specialist's output layer cut from a generalist's on an autodiff device
/// is trainable (fresh leaves), with the subset's units and the mean of the
/// others' as the dustbin.
#[test]
fn output_layer_from_the_generalist_is_trainable() {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    let device = Device::flex().autodiff();
    let generalist = LinearConfig::new(4, 6).init(&device);
    let s = specialist(&[2, 5], 6);
    let layer = s.output_layer(&generalist);
    let w = values(generalist.weight.val().inner());
    let b = values(generalist.bias.as_ref().unwrap().val().inner());
    let cut = values(layer.weight.val().inner());
    let cut_b = values(layer.bias.as_ref().unwrap().val().inner());
    for row in 0..4 {
        let g = &w[row * 6..(row + 1) * 6];
        let expected = [g[2], g[5], (g[0] + g[1] + g[3] + g[4]) / 4.0];
        assert_close("weight", &cut[row * 3..(row + 1) * 3], &expected, 1e-6);
    }
    assert_close(
        "bias",
        &cut_b,
        &[b[2], b[5], (b[0] + b[1] + b[3] + b[4]) / 4.0],
        1e-6,
    );
    let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5, 3.0]], &device);
    let grads = layer.forward(x).sum().backward();
    let grad = layer
        .weight
        .grad(&grads)
        .expect("the cut weight is trainable");
    assert_eq!(grad.dims(), [4, 3]);
    assert_eq!(layer.num_params(), 4 * 3 + 3);
}

// ---------- Combiner ----------

#[test]
fn specialists_agreeing_with_the_generalist_change_nothing() {
    let mut rng = Rng::new(7);
    let (batch, classes) = (6, 10);
    let pg = random_probs(&mut rng, batch, classes, 2.0);
    let specialists = vec![
        specialist(&[0, 1, 2, 3], classes),
        specialist(&[2, 5, 7], classes),
    ];
    for (name, device) in devices_f64() {
        let probs: Vec<Tensor<2>> = specialists
            .iter()
            .map(|s| {
                tensor2_f64(
                    &collapse_host(&pg, classes, s),
                    [batch, s.num_outputs()],
                    &device,
                )
            })
            .collect();
        let out = SpecialistCombinerConfig::new()
            .with_top_n(3)
            .with_tolerance(1e-15)
            .with_max_iterations(10_000)
            .init()
            .combine(
                tensor2_f64(&pg, [batch, classes], &device),
                &specialists,
                &probs,
            )
            .unwrap();
        assert_close(name, &values(out.probs), &pg, 1e-7);
    }
}

/// With no dustbin (every specialist covers all classes) the minimiser of
/// KL(p^g‖q) + Σ KL(p^m‖q) is the arithmetic mean.
#[test]
fn without_dustbins_the_answer_is_the_arithmetic_mean() {
    let mut rng = Rng::new(8);
    let (batch, classes) = (5, 6);
    let all: Vec<usize> = (0..classes).collect();
    let specialists = vec![specialist(&all, classes), specialist(&all, classes)];
    let pg = random_probs(&mut rng, batch, classes, 2.0);
    let p1 = random_probs(&mut rng, batch, classes, 2.0);
    let p2 = random_probs(&mut rng, batch, classes, 2.0);
    let with_empty_dustbin = |p: &[f64]| -> Vec<f64> {
        p.chunks(classes)
            .flat_map(|r| r.iter().copied().chain([0.0]))
            .collect()
    };
    let mean: Vec<f64> = (0..pg.len())
        .map(|i| (pg[i] + p1[i] + p2[i]) / 3.0)
        .collect();
    for (name, device) in devices_f64() {
        let probs = vec![
            tensor2_f64(&with_empty_dustbin(&p1), [batch, classes + 1], &device),
            tensor2_f64(&with_empty_dustbin(&p2), [batch, classes + 1], &device),
        ];
        let out = SpecialistCombinerConfig::new()
            .init()
            .combine(
                tensor2_f64(&pg, [batch, classes], &device),
                &specialists,
                &probs,
            )
            .unwrap();
        assert_close(name, &values(out.probs), &mean, 1e-9);
    }
}

#[derive(Deserialize)]
struct CombinerFixtures {
    cases: Vec<CombinerCase>,
}

#[derive(Deserialize)]
struct CombinerCase {
    name: String,
    batch: usize,
    classes: usize,
    top_n: usize,
    subsets: Vec<Vec<usize>>,
    generalist_probs: Vec<f64>,
    specialist_probs: Vec<Vec<f64>>,
    active: Vec<Vec<f64>>,
    q: Vec<Vec<f64>>,
    objective: Vec<f64>,
}

/// Against the L-BFGS reference: q within 1e-5, the objective no worse, the
/// active sets equal, and the objective non-increasing at every iteration.
#[test]
fn combiner_matches_reference_and_is_monotone() {
    let fixtures: CombinerFixtures =
        serde_json::from_str(include_str!("../fixtures/combiner_torch.json")).unwrap();
    assert!(fixtures.cases.len() >= 4);
    for case in &fixtures.cases {
        let specialists: Vec<Specialist> = case
            .subsets
            .iter()
            .map(|s| specialist(s, case.classes))
            .collect();
        for (name, device) in devices_f64() {
            let what = format!("{} {name}", case.name);
            let probs: Vec<Tensor<2>> = specialists
                .iter()
                .zip(&case.specialist_probs)
                .map(|(s, p)| tensor2_f64(p, [case.batch, s.num_outputs()], &device))
                .collect();
            let out = SpecialistCombinerConfig::new()
                .with_top_n(case.top_n)
                .with_tolerance(1e-13)
                .with_max_iterations(5000)
                .init()
                .combine(
                    tensor2_f64(&case.generalist_probs, [case.batch, case.classes], &device),
                    &specialists,
                    &probs,
                )
                .unwrap();
            let q = values(out.probs);
            let expected_q: Vec<f64> = case.q.iter().flatten().copied().collect();
            assert_close(&format!("{what} q"), &q, &expected_q, 1e-5);
            let active: Vec<f64> = case.active.iter().flatten().copied().collect();
            assert_eq!(values(out.active), active, "{what} active");
            for (j, reference) in values(out.objective).iter().zip(&case.objective) {
                assert!(
                    *j <= reference + 1e-9,
                    "{what}: objective {j} > reference {reference}"
                );
            }
            for pair in out.objective_trace.windows(2) {
                assert!(
                    pair[1] <= pair[0] + 1e-12,
                    "{what}: objective rose {pair:?}"
                );
            }
        }
    }
}

/// With the default settings both solvers — the host one (flex) and the tensor
/// one (ndarray, f64) — reach the L-BFGS minimiser to 1e-6 in every entry of
/// `q`, and agree with each other to 1e-6.
#[test]
fn default_settings_reach_the_minimiser_on_both_solvers() {
    let fixtures: CombinerFixtures =
        serde_json::from_str(include_str!("../fixtures/combiner_torch.json")).unwrap();
    for case in &fixtures.cases {
        let specialists: Vec<Specialist> = case
            .subsets
            .iter()
            .map(|s| specialist(s, case.classes))
            .collect();
        let expected_q: Vec<f64> = case.q.iter().flatten().copied().collect();
        let mut solutions = Vec::new();
        for (name, device) in devices_f64() {
            let probs: Vec<Tensor<2>> = specialists
                .iter()
                .zip(&case.specialist_probs)
                .map(|(s, p)| tensor2_f64(p, [case.batch, s.num_outputs()], &device))
                .collect();
            let out = SpecialistCombinerConfig::new()
                .with_top_n(case.top_n)
                .init()
                .combine(
                    tensor2_f64(&case.generalist_probs, [case.batch, case.classes], &device),
                    &specialists,
                    &probs,
                )
                .unwrap();
            let q = values(out.probs);
            let what = format!(
                "{} {name} (defaults, {} iterations)",
                case.name, out.iterations
            );
            assert_allclose(&what, &q, &expected_q, 0.0, 1e-6);
            solutions.push(q);
        }
        assert_allclose(
            &format!("{}: host vs tensor solver", case.name),
            &solutions[0],
            &solutions[1],
            0.0,
            1e-6,
        );
    }
}

/// With one active specialist the minimiser has a closed form: `(p^g_i + p^m_i)/2`
/// on its subset, and the rest `(P^g_R + p^m_dustbin)/2` split in p^g's
/// proportions. The combiner starts there, so it stops at once.
#[test]
fn one_active_specialist_is_solved_in_closed_form() {
    let mut rng = Rng::new(21);
    let (batch, classes) = (8, 7);
    let subset = [1, 4, 5];
    let s = specialist(&subset, classes);
    // Class 4 on top everywhere, so the specialist is active in every row.
    let mut pg = random_probs(&mut rng, batch, classes, 1.5);
    for row in pg.chunks_mut(classes) {
        row[4] += 2.0;
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|p| *p /= total);
    }
    let pm = random_probs(&mut rng, batch, subset.len() + 1, 2.0);
    let mut expected = Vec::new();
    for (g, m) in pg.chunks(classes).zip(pm.chunks(subset.len() + 1)) {
        let rest: f64 = (0..classes)
            .filter(|c| !subset.contains(c))
            .map(|c| g[c])
            .sum();
        for (c, &gc) in g.iter().enumerate() {
            expected.push(match subset.iter().position(|&x| x == c) {
                Some(k) => (gc + m[k]) / 2.0,
                None => gc * (rest + m[subset.len()]) / (2.0 * rest),
            });
        }
    }
    for (name, device) in devices_f64() {
        let out = SpecialistCombinerConfig::new()
            .init()
            .combine(
                tensor2_f64(&pg, [batch, classes], &device),
                std::slice::from_ref(&s),
                &[tensor2_f64(&pm, [batch, subset.len() + 1], &device)],
            )
            .unwrap();
        assert_close(name, &values(out.probs), &expected, 1e-12);
        assert!(out.iterations <= 1, "{name}: {} iterations", out.iterations);
    }
}

/// Specialists that disagree — one sure of its dustbin, two sure of their
/// subsets, all active — make plain EM crawl (its rate nears 1). The
/// accelerated combiner still stops well before its cap, at a point meeting the
/// optimality conditions of eq. 5 on the simplex: `∂J/∂q_i = −(1 + |active|)`
/// wherever `q_i > 0`.
#[test]
fn disagreeing_specialists_converge_to_the_optimum() {
    let classes = 6;
    let specialists = vec![
        specialist(&[0, 1], classes),
        specialist(&[0, 2], classes),
        specialist(&[0, 3], classes),
    ];
    let pg = [
        0.55, 0.2, 0.1, 0.1, 0.04, 0.01, 0.4, 0.3, 0.1, 0.1, 0.05, 0.05,
    ];
    let probs = [
        vec![0.005, 0.005, 0.99, 0.3, 0.1, 0.6],
        vec![0.9, 0.09, 0.01, 0.7, 0.29, 0.01],
        vec![0.8, 0.15, 0.05, 0.5, 0.1, 0.4],
    ];
    for (name, device) in devices_f64() {
        let out = SpecialistCombinerConfig::new()
            .init()
            .combine(
                tensor2_f64(&pg, [2, classes], &device),
                &specialists,
                &probs
                    .iter()
                    .map(|p| tensor2_f64(p, [2, 3], &device))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        assert!(
            out.iterations < 100,
            "{name}: {} iterations",
            out.iterations
        );
        let q = values(out.probs);
        for row in 0..2 {
            let q = &q[row * classes..(row + 1) * classes];
            let lambda = 1.0 + specialists.len() as f64;
            for i in 0..classes {
                let mut g = pg[row * classes + i] / q[i];
                for (s, p) in specialists.iter().zip(&probs) {
                    let p = &p[row * 3..row * 3 + 3];
                    g += match s.subset().classes().iter().position(|&c| c == i) {
                        Some(k) => p[k] / q[i],
                        None => {
                            let rest: f64 = (0..classes)
                                .filter(|&c| !s.subset().contains(c))
                                .map(|c| q[c])
                                .sum();
                            p[2] / rest
                        }
                    };
                }
                assert!(
                    (g - lambda).abs() < 1e-5 * lambda,
                    "{name} row {row} class {i}: -dJ/dq = {g}, expected {lambda} (q = {q:?})"
                );
            }
        }
    }
}

/// Rows whose top class no specialist covers keep p^g exactly; converges in few iterations.
#[test]
fn rows_without_active_specialists_keep_the_generalist() {
    let device = Device::flex();
    let classes = 4;
    let pg = [0.7, 0.1, 0.1, 0.1, 0.1, 0.6, 0.2, 0.1];
    let s = specialist(&[1, 2], classes);
    let ps = tensor2_f64(&[0.2, 0.5, 0.3, 0.1, 0.1, 0.8], [2, 3], &device);
    let out = SpecialistCombinerConfig::new()
        .init()
        .combine(
            tensor2_f64(&pg, [2, classes], &device),
            std::slice::from_ref(&s),
            &[ps],
        )
        .unwrap();
    let q = values(out.probs);
    assert_eq!(&q[..4], &pg[..4], "row 0: top class 0 is in no subset");
    assert_ne!(
        &q[4..],
        &pg[4..],
        "row 1: top class 1 activates the specialist"
    );
    assert_eq!(values(out.active), vec![0.0, 1.0]);
    assert!(out.iterations < 100, "{} iterations", out.iterations);
}

#[test]
fn no_specialists_returns_the_generalist() {
    for (name, device) in devices_f64() {
        let pg = [0.5, 0.3, 0.2, 0.1, 0.1, 0.8];
        let out = SpecialistCombinerConfig::new()
            .init()
            .combine(tensor2_f64(&pg, [2, 3], &device), &[], &[])
            .unwrap();
        assert_eq!(values(out.probs), pg.to_vec(), "{name}");
        assert_eq!(values(out.objective), vec![0.0, 0.0], "{name}");
    }
}

#[test]
fn combiner_errors_name_the_argument() {
    let device = Device::flex();
    let s = specialist(&[0, 1], 4);
    let combiner = SpecialistCombinerConfig::new().init();
    let pg = Tensor::<2>::from_data(
        TensorData::new(vec![0.25f64; 8], [2, 4]),
        (&device, DType::F64),
    );
    let wide = tensor2_f64(&[0.25; 8], [2, 4], &device);
    let err = combiner
        .combine(pg.clone(), std::slice::from_ref(&s), &[wide])
        .unwrap_err();
    assert_shape_mismatch(&err, "specialist_probs[0]", &[4], &[3]);
    let short = tensor2_f64(&[0.3; 3], [1, 3], &device);
    let err = combiner
        .combine(pg.clone(), std::slice::from_ref(&s), &[short])
        .unwrap_err();
    assert_shape_mismatch(&err, "specialist_probs[0]", &[1], &[2]);
    let other = specialist(&[0, 1], 5);
    let ok_width = tensor2_f64(&[0.3; 6], [2, 3], &device);
    let err = combiner.combine(pg, &[other], &[ok_width]).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::ShapeMismatch {
                left_argument: "generalist_probs columns",
                ..
            }
        ),
        "{err:?}"
    );
    let err = SpecialistCombinerConfig::new()
        .with_top_n(0)
        .try_init()
        .unwrap_err();
    assert!(err.to_string().contains("top_n = 0"), "{err}");
}
