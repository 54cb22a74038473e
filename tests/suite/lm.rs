//! Causal language models: the sampler (seeded, its top-k and top-p support
//! sets against probabilities worked out here, EOS and context stops), the
//! `LmDistiller`'s micro-batches against the whole batch's loss computed
//! directly (f64, unequal padding, FKL/RKL/JSD, token and sequence means),
//! GKD's loss against a generalised JSD written out here in f64 on the same
//! sampled tokens (prompt tokens never scored), the metrics, and bad input.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use burn::train::metric::{Adaptor, Metric, MetricMetadata, Numeric, PerplexityMetric};
use burn::train::{InferenceStep, TrainStep};
use burn_distill::lm::{CausalLm, OutputLayer, SamplerConfig, TokenBatch, generate};
use burn_distill::train::{AgreementMetric, Completions, FrozenTeacher, LmDistiller};
use burn_distill::{
    DistillError, Divergence, FusedLinearKdLossConfig, KdLoss, KdLossConfig, Reduction, Targets,
    TeacherOutput, VocabularyRule,
};

use crate::common::{Normals, Rng, assert_close, devices_f64, scalar, values};

const VOCAB: usize = 7;
const WIDTH: usize = 5;

/// A small causal LM: position `t` sees tokens `t` and `t − 1`
/// (`tanh(E[x_t] + E[x_{t−1}] / 2)`), then an output layer with a bias.
#[derive(Module, Debug)]
struct TinyLm {
    embedding: Param<Tensor<2>>,
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

fn float<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

impl TinyLm {
    fn new(seed: u64, device: &Device, dtype: DType) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            embedding: Param::from_tensor(float(
                rng.normals(VOCAB * WIDTH, 1.0),
                [VOCAB, WIDTH],
                device,
                dtype,
            )),
            weight: Param::from_tensor(float(
                rng.normals(WIDTH * VOCAB, 1.5),
                [WIDTH, VOCAB],
                device,
                dtype,
            )),
            bias: Param::from_tensor(float(rng.normals(VOCAB, 0.5), [VOCAB], device, dtype)),
        }
    }
}

impl CausalLm for TinyLm {
    fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let e = self
            .embedding
            .val()
            .select(0, tokens.reshape([batch * seq]))
            .reshape([batch, seq, WIDTH]);
        let previous = if seq > 1 {
            Tensor::cat(
                vec![
                    e.clone().slice([0..batch, 0..1]).zeros_like(),
                    e.clone().slice([0..batch, 0..seq - 1]),
                ],
                1,
            )
        } else {
            e.zeros_like()
        };
        (e + previous.mul_scalar(0.5)).tanh()
    }

    fn output_layer(&self) -> OutputLayer {
        OutputLayer {
            weight: self.weight.val(),
            bias: Some(self.bias.val()),
        }
    }
}

/// A model whose next-token logits are `table[last token]`: the sampler's
/// probabilities are known in closed form.
#[derive(Module, Debug)]
struct TableLm {
    identity: Param<Tensor<2>>,
    table: Param<Tensor<2>>,
}

impl TableLm {
    fn new(table: &[[f64; VOCAB]; VOCAB], device: &Device) -> Self {
        let identity = (0..VOCAB * VOCAB)
            .map(|i| if i / VOCAB == i % VOCAB { 1.0 } else { 0.0 })
            .collect();
        Self {
            identity: Param::from_tensor(float(identity, [VOCAB, VOCAB], device, DType::F32)),
            table: Param::from_tensor(float(table.concat(), [VOCAB, VOCAB], device, DType::F32)),
        }
    }
}

impl CausalLm for TableLm {
    fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        self.identity
            .val()
            .select(0, tokens.reshape([batch * seq]))
            .reshape([batch, seq, VOCAB])
    }

    fn output_layer(&self) -> OutputLayer {
        OutputLayer {
            weight: self.table.val(),
            bias: None,
        }
    }
}

/// From every token: probabilities 0.5, 0.25, 0.125, 0.0625, … over tokens
/// 1, 2, 3, 4, … (token 0 least likely), whatever the token.
fn halving_table() -> [[f64; VOCAB]; VOCAB] {
    let mut row = [0.0; VOCAB];
    for (i, logit) in row.iter_mut().enumerate() {
        // Token k ≥ 1 at 2^−k (up to a constant); token 0 below them all.
        *logit = if i == 0 {
            -20.0
        } else {
            -(i as f64) * 2f64.ln()
        };
    }
    [row; VOCAB]
}

fn ints(values: &[i64], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn bools(values: &[bool], shape: [usize; 2], device: &Device) -> Tensor<2, Bool> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn int_values<const D: usize>(tensor: Tensor<D, Int>) -> Vec<i64> {
    tensor.into_data().iter::<i64>().collect()
}

fn bool_values<const D: usize>(tensor: Tensor<D, Bool>) -> Vec<bool> {
    tensor.into_data().iter::<bool>().collect()
}

// ---------------------------------------------------------------- sampler

#[test]
fn the_same_seed_draws_the_same_completions_and_another_seed_others() {
    let device = Device::flex();
    let model = TinyLm::new(3, &device, DType::F32);
    let prompts = vec![vec![1, 2], vec![3], vec![4, 5, 6]];
    let sampler = SamplerConfig::new().with_max_new_tokens(12).with_seed(11);
    let draw = |seed| {
        int_values(
            generate(&model, &prompts, &sampler.clone().with_seed(seed), &device)
                .unwrap()
                .tokens,
        )
    };
    assert_eq!(draw(11), draw(11));
    assert_ne!(draw(11), draw(12), "36 draws over 7 tokens, two seeds");
}

#[test]
fn top_k_and_top_p_draw_only_from_their_support_sets() {
    let device = Device::flex();
    let model = TableLm::new(&halving_table(), &device);
    let prompts: Vec<Vec<usize>> = (0..20).map(|_| vec![1]).collect();
    let seen = |sampler: SamplerConfig| {
        let batch = generate(&model, &prompts, &sampler.with_max_new_tokens(10), &device).unwrap();
        let tokens = int_values(batch.tokens);
        let mut seen = [0usize; VOCAB];
        for row in tokens.chunks(11) {
            for &t in &row[1..] {
                seen[t as usize] += 1;
            }
        }
        seen
    };
    // Probabilities 1/2, 1/4, 1/8, … on tokens 1, 2, 3, …: the top 2 are {1, 2}.
    let top2 = seen(SamplerConfig::new().with_top_k(Some(2)));
    assert_eq!(top2.iter().sum::<usize>(), 200);
    assert!(top2[1] > 0 && top2[2] > 0, "{top2:?}");
    assert_eq!(top2[0] + top2[3..].iter().sum::<usize>(), 0, "{top2:?}");
    // top_p = 0.7: 1/2 < 0.7 ≤ 1/2 + 1/4, so the nucleus is {1, 2}.
    let nucleus = seen(SamplerConfig::new().with_top_p(Some(0.7)));
    assert!(nucleus[1] > 0 && nucleus[2] > 0, "{nucleus:?}");
    assert_eq!(
        nucleus[0] + nucleus[3..].iter().sum::<usize>(),
        0,
        "{nucleus:?}"
    );
    // top_p = 0.5 reaches its mass with token 1 alone.
    let single = seen(SamplerConfig::new().with_top_p(Some(0.5)));
    assert_eq!(single[1], 200, "{single:?}");
    // Without filters, 200 draws at 1/2, 1/4, 1/8: every one of 1..=3 shows up.
    let all = seen(SamplerConfig::new());
    assert!(all[1] > 60 && all[2] > 20 && all[3] > 5, "{all:?}");
    // Greedy: the most probable, always.
    let greedy = seen(SamplerConfig::new().with_temperature(0.0));
    assert_eq!(greedy[1], 200, "{greedy:?}");
}

#[test]
fn a_completion_stops_at_eos_and_at_the_context_and_the_prompt_is_never_scored() {
    let device = Device::flex();
    // From token 1 the next is 2 (certain); from 2 it is 3 (EOS); else 1.
    let mut table = [[-30.0; VOCAB]; VOCAB];
    for (from, row) in table.iter_mut().enumerate() {
        row[match from {
            1 => 2,
            2 => 3,
            _ => 1,
        }] = 30.0;
    }
    let model = TableLm::new(&table, &device);
    let sampler = SamplerConfig::new()
        .with_max_new_tokens(8)
        .with_eos_token(Some(3))
        .with_pad_token(0);
    let batch = generate(&model, &[vec![1], vec![5, 6, 4]], &sampler, &device).unwrap();
    // "1 → 2 → 3 (EOS)" and "5 6 4 → 1 → 2 → 3 (EOS)".
    assert_eq!(batch.dims(), [2, 6]);
    assert_eq!(
        int_values(batch.tokens.clone()),
        vec![1, 2, 3, 0, 0, 0, 5, 6, 4, 1, 2, 3]
    );
    assert_eq!(
        bool_values(batch.padding_mask.clone().unwrap()),
        [[false; 3], [true; 3], [false; 3], [false; 3]].concat()
    );
    assert_eq!(
        bool_values(batch.prompt_mask.clone().unwrap()),
        [vec![true], vec![false; 5], vec![true; 3], vec![false; 3]].concat()
    );
    // Scored: the predictions of the completions' tokens only.
    let counted = bool_values(
        batch
            .next_token_targets()
            .unwrap()
            .padding_mask()
            .unwrap()
            .clone()
            .bool_not(),
    );
    assert_eq!(
        counted,
        [
            vec![true, true, false, false, false, false],
            vec![false, false, true, true, true, false]
        ]
        .concat()
    );
    // The context: a sequence never grows past 3 tokens.
    let short = generate(
        &model,
        &[vec![5]],
        &sampler.clone().with_context(Some(3)),
        &device,
    )
    .unwrap();
    assert_eq!(int_values(short.tokens), vec![5, 1, 2]);
}

#[test]
fn the_sampler_refuses_bad_prompts_and_settings() {
    let device = Device::flex();
    let model = TinyLm::new(3, &device, DType::F32);
    let sampler = SamplerConfig::new().with_context(Some(4));
    let err = |prompts: &[Vec<usize>], sampler: &SamplerConfig| {
        generate(&model, prompts, sampler, &device).unwrap_err()
    };
    assert!(matches!(
        err(&[vec![1, 2], vec![1, 2, 3, 4]], &sampler),
        DistillError::InvalidPrompt {
            sequence: 1,
            length: 4,
            ..
        }
    ));
    let too_long = err(&[vec![1, 2, 3, 4, 5]], &sampler).to_string();
    assert!(
        too_long.contains("5 tokens") && too_long.contains("context of 4"),
        "{too_long}"
    );
    assert!(matches!(
        err(&[vec![]], &sampler),
        DistillError::InvalidPrompt { length: 0, .. }
    ));
    assert!(matches!(
        err(&[vec![1, 9]], &sampler),
        DistillError::TokenOutOfRange {
            argument: "prompts",
            token: 9,
            vocab: VOCAB
        }
    ));
    assert!(matches!(
        err(&[vec![1]], &SamplerConfig::new().with_eos_token(Some(7))),
        DistillError::TokenOutOfRange {
            argument: "eos_token",
            ..
        }
    ));
    assert!(
        err(&[vec![1]], &SamplerConfig::new().with_top_k(Some(0)))
            .to_string()
            .contains("top_k")
    );
    assert!(
        err(&[vec![1]], &SamplerConfig::new().with_temperature(-1.0))
            .to_string()
            .contains("temperature")
    );
    assert!(err(&[], &sampler).to_string().contains("prompts"));
}

// ---------------------------------------------------------- micro-batches

/// The micro-batch tests' f64 student (on `device`'s autodiff), teacher
/// (on `device`) and [`ragged_batch`] (on the autodiff device).
fn f64_pair(device: &Device) -> (TinyLm, TinyLm, TokenBatch) {
    let autodiff = device.clone().autodiff();
    let student = TinyLm::new(1, &autodiff, DType::F64);
    let teacher = TinyLm::new(2, device, DType::F64);
    let batch = ragged_batch(&autodiff);
    (student, teacher, batch)
}

/// Four sequences of 6 with unequal padding (lengths 2, 3, 6, 6) and a
/// prompt of one or two tokens: 1, 2, 4 and 5 predictions counted.
fn ragged_batch(device: &Device) -> TokenBatch {
    let lengths = [2, 3, 6, 6];
    let prompts = [1, 1, 2, 1];
    let mut rng = Rng::new(5);
    let tokens: Vec<i64> = (0..24).map(|_| rng.below(VOCAB) as i64).collect();
    let padding: Vec<bool> = (0..24).map(|i| i % 6 >= lengths[i / 6]).collect();
    let prompt: Vec<bool> = (0..24).map(|i| i % 6 < prompts[i / 6]).collect();
    TokenBatch::new(ints(&tokens, [4, 6], device))
        .with_padding_mask(bools(&padding, [4, 6], device))
        .with_prompt_mask(bools(&prompt, [4, 6], device))
}

/// The student's parameter gradients, flattened in one order.
fn param_grads(student: &TinyLm, grads: &GradientsParams) -> Vec<f64> {
    let mut out = values(grads.get::<2>(student.embedding.id).unwrap());
    out.extend(values(grads.get::<2>(student.weight.id).unwrap()));
    out.extend(values(grads.get::<1>(student.bias.id).unwrap()));
    out
}

/// The whole batch's loss and gradients computed by the loss directly, on
/// `[batch, seq, vocab]` logits: no distiller, no micro-batches.
fn direct(
    student: &TinyLm,
    teacher: &impl CausalLm,
    loss: &KdLoss,
    batch: &TokenBatch,
    reduction: Reduction,
) -> (f64, Vec<f64>) {
    let logits = student.logits(batch.tokens.clone(), batch.padding_mask.clone());
    let teacher_logits = teacher
        .logits(
            batch.tokens.clone().without_autodiff(),
            batch.padding_mask.clone(),
        )
        .without_autodiff();
    let targets = batch
        .next_token_targets()
        .unwrap()
        .with_reduction(reduction);
    let value = loss.forward(logits, TeacherOutput::Logits(teacher_logits), targets);
    let grads = GradientsParams::from_grads(value.backward(), student);
    (scalar(value), param_grads(student, &grads))
}

/// One training step of `distiller` has the `expected` loss and student
/// parameter gradients (from [`direct`]).
fn assert_step<T: CausalLm>(
    what: &str,
    distiller: &LmDistiller<TinyLm, FrozenTeacher<T>, KdLoss>,
    student: &TinyLm,
    batch: &TokenBatch,
    (value, reference): &(f64, Vec<f64>),
) {
    let step = TrainStep::step(distiller, batch.clone());
    let loss = scalar(step.item.loss.clone());
    assert_close(&format!("{what}: loss"), &[loss], &[*value], 1e-12);
    let gradient = param_grads(student, &step.grads);
    assert_close(&format!("{what}: gradient"), &gradient, reference, 1e-10);
}

#[test]
fn micro_batches_give_the_whole_batchs_loss_and_gradient() {
    for (name, device) in devices_f64() {
        let (student, teacher, batch) = f64_pair(&device);
        for divergence in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd { beta: 0.5 },
        ] {
            for reduction in [Reduction::Mean, Reduction::SequenceMean] {
                let what = format!("{name} {divergence:?} {reduction:?}");
                let loss = KdLossConfig::new()
                    .with_divergence(divergence)
                    .with_temperature(2.0)
                    .with_hard_weight(0.3)
                    .init();
                let expected = direct(&student, &teacher, &loss, &batch, reduction);
                for micro in [0, 1, 3] {
                    let what = format!("{what}, micro-batches of {micro}");
                    let distiller = LmDistiller::new(
                        student.clone(),
                        FrozenTeacher::new(teacher.clone()),
                        loss.clone(),
                    );
                    let distiller = distiller.with_reduction(reduction).with_micro_batch(micro);
                    assert_step(&what, &distiller, &student, &batch, &expected);
                }
            }
        }
    }
}

#[test]
fn dividing_each_micro_batch_by_its_own_tokens_would_not_give_the_whole_batch() {
    // The failure the distiller's whole-batch weights prevent: the same split,
    // each half divided by its own counted tokens (3 and 9), then averaged
    // (burn-train's accumulation sums them: twice that again).
    let device = Device::flex();
    let (student, teacher, batch) = f64_pair(&device);
    let loss = KdLossConfig::new().with_temperature(2.0).init();
    let (whole, _) = direct(&student, &teacher, &loss, &batch, Reduction::Mean);
    let half = |range| {
        direct(
            &student,
            &teacher,
            &loss,
            &batch.sequences(range),
            Reduction::Mean,
        )
        .0
    };
    let naive = (half(0..2) + half(2..4)) / 2.0;
    assert!(
        (naive - whole).abs() > 0.05 * whole.abs(),
        "naive {naive} vs whole {whole}: the test batch must make them differ"
    );
    let split =
        LmDistiller::new(student.clone(), FrozenTeacher::new(teacher), loss).with_micro_batch(2);
    assert_close(
        "split",
        &[scalar(split.forward(batch).loss)],
        &[whole],
        1e-12,
    );
}

#[test]
fn the_fused_linear_loss_from_hidden_states_equals_the_dense_one_in_micro_batches() {
    for (name, device) in devices_f64() {
        let (student, teacher, batch) = f64_pair(&device);
        let kd = KdLossConfig::new()
            .with_divergence(Divergence::ReverseKl)
            .with_temperature(1.5)
            .with_hard_weight(0.5);
        let (value, reference) = direct(&student, &teacher, &kd.init(), &batch, Reduction::Mean);
        let fused = FusedLinearKdLossConfig::new(kd)
            .with_chunk_size(Some(4))
            .init();
        let distiller = LmDistiller::new(student.clone(), FrozenTeacher::new(teacher), fused)
            .with_micro_batch(3);
        let step = TrainStep::step(&distiller, batch);
        assert_close(
            &format!("{name}: fused loss"),
            &[scalar(step.item.loss.clone())],
            &[value],
            1e-12,
        );
        assert_close(
            &format!("{name}: fused gradient"),
            &param_grads(&student, &step.grads),
            &reference,
            1e-10,
        );
    }
}

#[test]
fn a_batch_of_padding_only_gives_zero_and_a_zero_gradient() {
    let device = Device::flex();
    let autodiff = device.clone().autodiff();
    let student = TinyLm::new(1, &autodiff, DType::F64);
    let batch = TokenBatch::new(ints(&[1, 2, 3, 4, 5, 6], [2, 3], &autodiff)).with_padding_mask(
        bools(&[false, true, true, false, true, true], [2, 3], &autodiff),
    );
    let distiller = LmDistiller::new(
        student.clone(),
        FrozenTeacher::new(TinyLm::new(2, &device, DType::F64)),
        KdLossConfig::new().init(),
    )
    .with_micro_batch(1);
    let step = TrainStep::step(&distiller, batch);
    assert_eq!(scalar(step.item.loss.clone()), 0.0);
    assert!(param_grads(&student, &step.grads).iter().all(|&g| g == 0.0));
}

// -------------------------------------------------------------------- GKD

/// TRL's generalised JSD of one position at temperature `t`, in f64:
/// `β·KL(p‖m) + (1−β)·KL(q‖m)`, `m = βp + (1−β)q`, `p` the teacher's.
fn jsd(student: &[f64], teacher: &[f64], beta: f64, t: f64) -> f64 {
    let softmax = |z: &[f64]| {
        let max = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| ((v - max) / t).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|v| v / sum).collect::<Vec<_>>()
    };
    let (q, p) = (softmax(student), softmax(teacher));
    let mut value = 0.0;
    for i in 0..q.len() {
        let m = beta * p[i] + (1.0 - beta) * q[i];
        value += beta * p[i] * (p[i] / m).ln() + (1.0 - beta) * q[i] * (q[i] / m).ln();
    }
    value
}

#[test]
fn gkd_scores_the_students_own_completions_with_the_jsd_on_completion_tokens() {
    let device = Device::flex();
    let autodiff = device.clone().autodiff();
    let student = TinyLm::new(1, &autodiff, DType::F64);
    let teacher = TinyLm::new(2, &device, DType::F64);
    let beta = 0.3;
    let loss = KdLossConfig::new()
        .with_divergence(Divergence::Jsd { beta })
        .with_temperature(1.0)
        .with_soft_weight(1.0)
        .with_hard_weight(0.0)
        .with_scale_by_t_squared(false)
        .init();
    let sampler = SamplerConfig::new()
        .with_max_new_tokens(4)
        .with_temperature(0.9)
        .with_seed(3);
    let distiller = LmDistiller::new(student.clone(), FrozenTeacher::new(teacher.clone()), loss)
        .with_completions(Completions::Gkd {
            lambda: 1.0,
            sampler,
        })
        .unwrap()
        .with_micro_batch(1);
    let data = ragged_batch(&autodiff);
    let (sampled, on_policy) = distiller.training_batch(data.clone()).unwrap();
    assert!(on_policy);
    // The prompts are the data's; the completions the student's.
    let prompts = data.prompts().unwrap();
    assert_eq!(sampled.prompts().unwrap(), prompts);
    let step = TrainStep::step(&distiller, data.clone());
    assert!(step.item.on_policy);
    // (The step drew again.) The loss of the sampled batch:
    let trained = distiller.forward(sampled.clone());
    // By hand: the JSD of each completion token's prediction, the mean over them.
    let [rows, seq] = sampled.dims();
    let tokens = int_values(sampled.tokens.clone());
    let padding = bool_values(sampled.padding_mask.clone().unwrap());
    let z = values(student.logits(sampled.tokens.clone(), sampled.padding_mask.clone()));
    let v = values(teacher.logits(sampled.tokens.clone().without_autodiff(), None));
    let (mut total, mut count) = (0.0, 0);
    for (r, prompt) in prompts.iter().enumerate() {
        for t in 0..seq - 1 {
            // Position t predicts token t + 1: counted where that token is a
            // completion token (not the prompt, not padding).
            let next = r * seq + t + 1;
            if t + 1 < prompt.len() || padding[next] {
                continue;
            }
            let at = (r * seq + t) * VOCAB;
            total += jsd(&z[at..at + VOCAB], &v[at..at + VOCAB], beta, 1.0);
            count += 1;
        }
    }
    assert!(count >= rows, "every prompt got at least one new token");
    assert!(tokens.iter().all(|&t| (t as usize) < VOCAB));
    assert_close(
        "GKD loss",
        &[scalar(trained.loss)],
        &[total / count as f64],
        1e-10,
    );
}

#[test]
fn gkd_with_lambda_zero_keeps_the_data_and_lambda_is_checked() {
    let device = Device::flex();
    let autodiff = device.clone().autodiff();
    let make = |lambda| {
        LmDistiller::new(
            TinyLm::new(1, &autodiff, DType::F32),
            FrozenTeacher::new(TinyLm::new(2, &device, DType::F32)),
            KdLossConfig::new().init(),
        )
        .with_completions(Completions::Gkd {
            lambda,
            sampler: SamplerConfig::new(),
        })
    };
    let distiller = make(0.0).unwrap();
    let data = ragged_batch(&autodiff);
    for _ in 0..5 {
        let (batch, on_policy) = distiller.training_batch(data.clone()).unwrap();
        assert!(!on_policy);
        assert_eq!(int_values(batch.tokens), int_values(data.tokens.clone()));
    }
    assert!(matches!(
        make(1.5),
        Err(DistillError::OutOfUnitInterval {
            argument: "lambda",
            ..
        })
    ));
    // Without a prompt mask there is nothing to complete.
    let distiller = make(1.0).unwrap();
    let no_prompt = TokenBatch::new(data.tokens.clone());
    assert!(matches!(
        distiller.training_batch(no_prompt),
        Err(DistillError::MissingPromptMask)
    ));
}

// ---------------------------------------------------------------- metrics

#[test]
fn perplexity_and_agreement_are_over_the_counted_tokens() {
    let device = Device::flex();
    let student = TinyLm::new(1, &device, DType::F32);
    let teacher = TinyLm::new(2, &device, DType::F32);
    let batch = ragged_batch(&device);
    let distiller = LmDistiller::new(
        student.clone(),
        FrozenTeacher::new(teacher.clone()),
        KdLossConfig::new().init(),
    )
    .with_micro_batch(3);
    let out = InferenceStep::step(&distiller, batch.clone());
    let meta = MetricMetadata {
        progress: burn::data::dataloader::Progress::new(1, 1, None),
        iteration: Some(0),
        lr: None,
    };
    // By hand from the two models' logits.
    let targets = batch.next_token_targets().unwrap();
    let counted = bool_values(targets.padding_mask().unwrap().clone().bool_not());
    let labels = int_values(targets.labels().unwrap().clone());
    let z = values(student.logits(batch.tokens.clone(), batch.padding_mask.clone()));
    let v = values(teacher.logits(batch.tokens.clone(), batch.padding_mask.clone()));
    let argmax = |x: &[f64]| (0..VOCAB).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap();
    let (mut nll, mut same, mut n) = (0.0, 0, 0);
    for row in (0..counted.len()).filter(|&r| counted[r]) {
        let zr = &z[row * VOCAB..][..VOCAB];
        let lse = zr.iter().map(|x| x.exp()).sum::<f64>().ln();
        nll += lse - zr[labels[row] as usize];
        same += usize::from(argmax(zr) == argmax(&v[row * VOCAB..][..VOCAB]));
        n += 1;
    }
    let mut perplexity = PerplexityMetric::new();
    perplexity.update(&out.adapt(), &meta).unwrap();
    assert_close(
        "perplexity",
        &[perplexity.value().unwrap().current()],
        &[(nll / n as f64).exp()],
        1e-5,
    );
    // The hard term is the same cross-entropy.
    assert_close(
        "hard term",
        &[scalar(out.hard.clone())],
        &[nll / n as f64],
        1e-5,
    );
    let mut agreement = AgreementMetric::new();
    agreement.update(&out.adapt(), &meta).unwrap();
    assert_close(
        "agreement",
        &[agreement.value().unwrap().current()],
        &[100.0 * same as f64 / n as f64],
        1e-9,
    );
}

// -------------------------------------------------------------- bad input

#[test]
fn a_mask_of_the_wrong_shape_and_a_vocabulary_mismatch_are_refused() {
    let device = Device::flex();
    let tokens = ints(&[1, 2, 3, 4, 5, 6], [2, 3], &device);
    let wrong =
        TokenBatch::new(tokens.clone()).with_padding_mask(bools(&[false; 4], [2, 2], &device));
    assert!(matches!(
        wrong.next_token_targets(),
        Err(DistillError::ShapeMismatch {
            left_argument: "padding_mask",
            ..
        })
    ));
    let prompt = TokenBatch::new(tokens.clone()).with_prompt_mask(bools(
        &[false, true, false, true, true, false],
        [2, 3],
        &device,
    ));
    assert!(matches!(
        prompt.prompts(),
        Err(DistillError::InvalidPrompt { sequence: 0, .. })
    ));
    // A teacher over another vocabulary: the loss's message, from the step.
    let student = TinyLm::new(1, &device, DType::F32);
    let narrow = NarrowLm {
        inner: TinyLm::new(2, &device, DType::F32),
    };
    let distiller = LmDistiller::new(
        student,
        FrozenTeacher::new(narrow),
        KdLossConfig::new().init(),
    );
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        distiller.forward(TokenBatch::new(tokens))
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.starts_with("LmDistiller: "), "{message}");
    assert!(
        message.contains(&VOCAB.to_string()) && message.contains(&(VOCAB - 1).to_string()),
        "{message}"
    );
}

/// A teacher whose vocabulary is one token short.
#[derive(Module, Debug)]
struct NarrowLm {
    inner: TinyLm,
}

impl CausalLm for NarrowLm {
    fn hidden(&self, tokens: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.inner.hidden(tokens, padding)
    }

    fn output_layer(&self) -> OutputLayer {
        let OutputLayer { weight, bias } = self.inner.output_layer();
        OutputLayer {
            weight: weight.slice([0..WIDTH, 0..VOCAB - 1]),
            bias: bias.map(|b| b.slice(0..VOCAB - 1)),
        }
    }
}

/// A teacher one token short of the student's vocabulary in the distiller,
/// matched by a `VocabularyRule` or compared by ULD: each step (whole, or in
/// micro-batches) equals the loss on the whole batch written out.
#[test]
fn a_teacher_of_another_vocabulary_distils_under_a_rule_or_by_uld() {
    for (name, device) in devices_f64() {
        let autodiff = device.clone().autodiff();
        let student = TinyLm::new(1, &autodiff, DType::F64);
        let teacher = NarrowLm {
            inner: TinyLm::new(2, &device, DType::F64),
        };
        let batch = ragged_batch(&autodiff);
        for (vocabulary, divergence) in [
            (VocabularyRule::PadTeacher, Divergence::ForwardKl),
            (VocabularyRule::SharedIds, Divergence::ReverseKl),
            (VocabularyRule::Same, Divergence::Uld),
        ] {
            let loss = KdLossConfig::new()
                .with_vocabulary(vocabulary)
                .with_divergence(divergence)
                .with_temperature(2.0)
                .with_hard_weight(0.3)
                .init();
            let expected = direct(&student, &teacher, &loss, &batch, Reduction::Mean);
            assert!(
                expected.0.is_finite() && expected.0 > 0.0,
                "{name} {divergence:?}"
            );
            for micro in [0, 3] {
                let what =
                    format!("{name} {vocabulary:?} {divergence:?}, micro-batches of {micro}");
                let distiller = LmDistiller::new(
                    student.clone(),
                    FrozenTeacher::new(teacher.clone()),
                    loss.clone(),
                );
                assert_step(
                    &what,
                    &distiller.with_micro_batch(micro),
                    &student,
                    &batch,
                    &expected,
                );
            }
        }
    }
}

#[test]
fn sequence_targets_still_come_from_the_batch() {
    // `Targets` built by hand from the batch equal the distiller's (the
    // guide's "by hand" path).
    let device = Device::flex();
    let batch = ragged_batch(&device);
    let targets: Targets = batch.next_token_targets().unwrap();
    assert_eq!(
        batch.counted_tokens().unwrap(),
        bool_values(targets.padding_mask().unwrap().clone())
            .iter()
            .filter(|p| !**p)
            .count()
    );
}

#[cfg(feature = "store")]
#[test]
fn a_stored_teacher_serves_token_sequences_as_the_live_one_does() {
    use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
    use burn_distill::train::StoredTeacher;
    let device = Device::flex();
    let autodiff = device.clone().autodiff();
    let student = TinyLm::new(1, &autodiff, DType::F32);
    let teacher = TinyLm::new(2, &device, DType::F32);
    let batch = ragged_batch(&autodiff).with_examples(vec![0, 1, 2, 3]);
    // Every class kept, exact f32: the store is the dense teacher.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lm.bds");
    let config = TeacherStoreConfig::new(VOCAB, VOCAB, 1.0).with_precision(StorePrecision::F32);
    let mut writer = config.create(&path).unwrap();
    let logits = teacher.logits(batch.tokens.clone().without_autodiff(), None);
    for s in 0..4 {
        writer
            .append_sequence_logits(logits.clone().slice(s..s + 1).reshape([6, VOCAB]))
            .unwrap();
    }
    writer.finish().unwrap();
    let loss = KdLossConfig::new().with_temperature(1.0).init();
    let stored = StoredTeacher::new(TeacherStore::open(&path).unwrap(), &loss).unwrap();
    let live = LmDistiller::new(student.clone(), FrozenTeacher::new(teacher), loss.clone())
        .with_micro_batch(3);
    let from_store = LmDistiller::new(student, stored, loss).with_micro_batch(3);
    let a = live.forward(batch.clone());
    let b = from_store.forward(batch.clone());
    assert_close("loss", &[scalar(b.loss)], &[scalar(a.loss)], 1e-5);
    assert_eq!(
        int_values(a.teacher_top1.unwrap()),
        int_values(b.teacher_top1.unwrap())
    );
    // Without example indices the store cannot serve the batch.
    let no_examples = TokenBatch::new(batch.tokens.clone())
        .with_padding_mask(batch.padding_mask.clone().unwrap());
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        from_store.forward(no_examples)
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("batch.examples"), "{message}");
}

#[test]
fn a_hidden_state_term_in_micro_batches_equals_the_whole_batch_written_out() {
    use burn_distill::feature::{FeatureTerm, HiddenStateDistance, HiddenStateLossConfig};
    use burn_distill::train::FeatureLossMetric;

    // The ragged batch's counted positions, from its lengths and prompts:
    // position t counts where its next token t + 1 is a completion token.
    let (lengths, prompts) = ([2, 3, 6, 6], [1, 1, 2, 1]);
    let counted: Vec<bool> = (0..24)
        .map(|i| {
            let (b, t) = (i / 6, i % 6);
            t + 1 >= prompts[b] && t + 1 < lengths[b]
        })
        .collect();
    let per_sequence: Vec<usize> = (0..4)
        .map(|b| counted[b * 6..][..6].iter().filter(|&&c| c).count())
        .collect();
    assert_eq!(per_sequence, [1, 2, 4, 5]);
    const WEIGHT: f64 = 0.8;
    for (name, device) in devices_f64() {
        let autodiff = device.clone().autodiff();
        let (student, teacher, batch) = f64_pair(&device);
        let kd = KdLossConfig::new()
            .with_temperature(2.0)
            .with_hard_weight(0.3)
            .init();
        for (distance, reduction) in [
            (HiddenStateDistance::Cosine, Reduction::Mean),
            (HiddenStateDistance::Mse, Reduction::SequenceMean),
        ] {
            // Each position's weight in the reduced loss, by hand.
            let weights: Vec<f64> = (0..24)
                .map(|i| match (counted[i], reduction) {
                    (false, _) => 0.0,
                    (true, Reduction::Mean) => 1.0 / 12.0,
                    (true, _) => 1.0 / (4.0 * per_sequence[i / 6] as f64),
                })
                .collect();
            for micro in [0, 1, 3] {
                let what = format!("{name} {distance:?} {reduction:?}, micro-batches of {micro}");
                autodiff.seed(8);
                let term = FeatureTerm::new(
                    "hidden",
                    HiddenStateLossConfig::new().with_distance(distance).init(),
                )
                .with_projection(WIDTH, WIDTH, &autodiff)
                .with_weight(WEIGHT);
                let distiller = LmDistiller::new(
                    student.clone(),
                    FrozenTeacher::new(teacher.clone()),
                    kd.clone(),
                )
                .with_reduction(reduction)
                .with_micro_batch(micro)
                .with_features(term);
                let step = TrainStep::step(&distiller, batch.clone());

                // The whole batch written out: the KD loss on the logits plus
                // the weighted per-position distance after the projection.
                let projection = crate::common::params(&distiller.features);
                let [(_, _, w), (_, _, b)] = [0, 1].map(|i| projection.0[i].clone());
                let hidden = student.hidden(batch.tokens.clone(), batch.padding_mask.clone());
                let teacher_hidden = teacher
                    .hidden(batch.tokens.clone().without_autodiff(), None)
                    .without_autodiff();
                let logits = student.output_layer().forward(hidden.clone());
                let teacher_logits = teacher.output_layer().forward(teacher_hidden.clone());
                let targets = batch
                    .next_token_targets()
                    .unwrap()
                    .with_reduction(reduction);
                let kd_value = kd.forward(logits, TeacherOutput::Logits(teacher_logits), targets);
                // The projection's weights are f32: the states go through it in f32.
                let rows = hidden.reshape([24, WIDTH]).cast(DType::F32);
                let projected = (rows.matmul(w.reshape([WIDTH, WIDTH])) + b.reshape([1, WIDTH]))
                    .cast(DType::F64);
                let t = teacher_hidden.reshape([24, WIDTH]);
                let distances = match distance {
                    HiddenStateDistance::Mse => {
                        (projected - t).powi_scalar(2).mean_dim(1).reshape([24])
                    }
                    HiddenStateDistance::Cosine => {
                        let dot = (projected.clone() * t.clone()).sum_dim(1);
                        let norms = projected.powi_scalar(2).sum_dim(1).sqrt()
                            * t.powi_scalar(2).sum_dim(1).sqrt();
                        (dot * norms.recip()).neg().add_scalar(1.0).reshape([24])
                    }
                };
                let weights = Tensor::<1>::from_data(
                    TensorData::new(weights.clone(), [24]),
                    (&autodiff, DType::F64),
                );
                let term_value = (distances * weights).sum();
                let total = kd_value + term_value.clone().mul_scalar(WEIGHT);
                let hand = GradientsParams::from_grads(total.backward(), &distiller);

                assert_close(
                    &format!("{what}: loss"),
                    &[scalar(step.item.loss.clone())],
                    &[scalar(total)],
                    1e-6,
                );
                assert_eq!(step.item.features.len(), 1);
                assert_close(
                    &format!("{what}: the term's value"),
                    &[scalar(step.item.features[0].value.clone())],
                    &[scalar(term_value)],
                    1e-6,
                );
                let mut pairs = crate::common::GradientPairs {
                    step: &step.grads,
                    hand: &hand,
                    pairs: Vec::new(),
                };
                distiller.visit(&mut pairs);
                assert_eq!(
                    pairs.pairs.len(),
                    5,
                    "the student's 3 and the projection's 2"
                );
                for (i, (step, hand)) in pairs.pairs.iter().enumerate() {
                    assert_close(&format!("{what}: parameter {i} gradient"), step, hand, 1e-5);
                }
                // The metric: the term over the counted tokens.
                let meta = MetricMetadata {
                    progress: burn::data::dataloader::Progress::new(1, 1, None),
                    iteration: Some(0),
                    lr: None,
                };
                let mut metric = FeatureLossMetric::new("hidden-state hidden");
                metric.update(&step.item.adapt(), &meta).unwrap();
                assert_close(
                    &format!("{what}: metric"),
                    &[metric.value().unwrap().current()],
                    &[scalar(step.item.features[0].value.clone())],
                    1e-9,
                );
            }
        }
    }
}

#[test]
fn a_stored_teacher_has_no_features_for_feature_terms() {
    let device = Device::flex().autodiff();
    let student = TinyLm::new(1, &device, DType::F32);
    #[derive(Clone, Debug)]
    struct LogitsOnly(TinyLm);
    impl burn_distill::train::LmTeacherSource for LogitsOnly {
        fn teach(
            &self,
            batch: &TokenBatch,
            _device: &Device,
        ) -> Result<TeacherOutput<3>, DistillError> {
            Ok(TeacherOutput::Logits(
                self.0
                    .logits(batch.tokens.clone().without_autodiff(), None)
                    .without_autodiff(),
            ))
        }
    }
    let teacher = LogitsOnly(TinyLm::new(2, &Device::flex(), DType::F32));
    let distiller = LmDistiller::new(student, teacher, KdLossConfig::new().init()).with_features(
        burn_distill::feature::FeatureTerm::new(
            "hidden",
            burn_distill::feature::HiddenStateLossConfig::new().init(),
        ),
    );
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        TrainStep::step(&distiller, ragged_batch(&device)).item
    }))
    .expect_err("refused");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.starts_with("LmDistiller: ") && message.contains("teach_with_features"),
        "{message}"
    );
}
