//! [`Divergence::Uld`](crate::Divergence::Uld) on the CPU backends (flex, and
//! ndarray with this crate's `ndarray` feature), f32: both models' softmax, a
//! radix sort of each row (the probabilities are non-negative, so their bit
//! patterns sort as the numbers do: three 11-bit passes instead of a
//! comparison sort's `log₂ V` rounds), the value and the closed-form gradient
//! `∂/∂z_j = (f/T)·q_j·(g_j − Σ_k q_k g_k)`, `g_j = sign(q_j − p_(rank of q_j))`
//! (the padding's `p = 0` past the teacher's width), in one pass per row on
//! rayon's pool, reading burn's buffers in place. The gradient reaches
//! autodiff through a surrogate term (value 0, gradient `G`), so no custom
//! node is needed. Tested against the burn-ops path (`Divergence::rows`),
//! itself matched to TRL's `ULDLoss`.

// burn-ndarray is deprecated in burn 0.22 but still supported, and still used.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::FusedSpec;
use super::extension::HostBackend;

/// What one call computes with, and where it leaves the per-row values
/// (burn's extension ops return one tensor: the gradient).
#[derive(Debug, Clone)]
struct Request {
    temperature: f64,
    teacher_temperature: f64,
    factor: f64,
    /// `q = softmax(z / T)` (logits), or `q = exp(z)` (log-values taken as
    /// they are, unnormalised: GOLD's merged spans).
    softmax: bool,
    /// Whether the gradient is wanted (the student is tracked); without it
    /// no `[rows, V_s]` buffer is kept.
    with_gradient: bool,
    values: Arc<Mutex<Vec<f32>>>,
}

#[backend_extension(Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"))]
trait HostUld: Backend {
    /// ULD per row of `student` `[rows, V_s]` logits and `teacher`
    /// `[rows, V_t]` values into `request.values`; returns the gradient with
    /// respect to the student logits, `[rows, V_s]`.
    fn host_uld(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        request: Request,
    ) -> FloatTensor<Self>;
}

impl<B: HostBackend> HostUld for B {
    fn host_uld(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        request: Request,
    ) -> FloatTensor<Self> {
        let (rows, vs, vt) = (student.shape()[0], student.shape()[1], teacher.shape()[1]);
        // Without a gradient each thread's rows share one scratch row for it.
        let kept = if request.with_gradient { rows } else { 0 };
        let mut grad = vec![0.0f32; kept * vs];
        let mut values = vec![0.0f32; rows];
        B::with_f32(&student, |z| {
            B::with_f32(&teacher, |v| {
                let row = |r: usize, g: &mut [f32], scratch: &mut Scratch| {
                    let z = &z[r * vs..(r + 1) * vs];
                    let v = &v[r * vt..(r + 1) * vt];
                    uld_row(z, v, &request, g, scratch)
                };
                match request.with_gradient {
                    true => grad
                        .par_chunks_mut(vs)
                        .zip(values.par_iter_mut())
                        .enumerate()
                        .for_each_init(Scratch::default, |scratch, (r, (g, value))| {
                            *value = row(r, g, scratch);
                        }),
                    false => values.par_iter_mut().enumerate().for_each_init(
                        Scratch::default,
                        |scratch, (r, value)| {
                            let mut g = std::mem::take(&mut scratch.g);
                            g.resize(vs, 0.0);
                            *value = row(r, &mut g, scratch);
                            scratch.g = g;
                        },
                    ),
                }
            })
        });
        *request.values.lock().expect("a fresh lock") = values;
        B::from_f32(grad, [kept, vs])
    }
}

/// One thread's buffers, reused from row to row.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    /// The gradient row when none is kept.
    g: Vec<f32>,
    p: Vec<f32>,
    q_order: Vec<u32>,
    p_order: Vec<u32>,
    keys: Vec<u32>,
    keys_tmp: Vec<u32>,
    order_tmp: Vec<u32>,
}

/// `f·ULD` of one row; its gradient with respect to `z` written into `grad`.
fn uld_row(z: &[f32], v: &[f32], request: &Request, grad: &mut [f32], s: &mut Scratch) -> f32 {
    match request.softmax {
        true => {
            softmax_into(z, request.temperature, &mut s.q);
            softmax_into(v, request.teacher_temperature, &mut s.p);
        }
        false => {
            exp_into(z, &mut s.q);
            exp_into(v, &mut s.p);
        }
    }
    descending_order(
        &s.q,
        &mut s.q_order,
        &mut s.keys,
        &mut s.keys_tmp,
        &mut s.order_tmp,
    );
    descending_order(
        &s.p,
        &mut s.p_order,
        &mut s.keys,
        &mut s.keys_tmp,
        &mut s.order_tmp,
    );
    let mut value = 0.0f64;
    let mut q_dot_g = 0.0f64;
    for (rank, &j) in s.q_order.iter().enumerate() {
        let q = s.q[j as usize];
        // Past the teacher's width its sorted vector is padded with zeros.
        let p = s.p_order.get(rank).map_or(0.0, |&i| s.p[i as usize]);
        let difference = q - p;
        value += f64::from(difference.abs());
        let g = match difference {
            d if d > 0.0 => 1.0,
            d if d < 0.0 => -1.0,
            _ => 0.0,
        };
        grad[j as usize] = g;
        q_dot_g += f64::from(q * g);
    }
    // Past the student's width the teacher's rest is its distance to zero.
    for &i in s.p_order.iter().skip(s.q_order.len()) {
        value += f64::from(s.p[i as usize]);
    }
    // Through the softmax: (f/T)·q_j·(g_j − Σ q g); through exp: f·q_j·g_j.
    let (scale, centre) = match request.softmax {
        true => (request.factor / request.temperature, q_dot_g),
        false => (request.factor, 0.0),
    };
    for (g, &q) in grad.iter_mut().zip(&s.q) {
        *g = (scale * f64::from(q) * (f64::from(*g) - centre)) as f32;
    }
    (request.factor * value) as f32
}

/// `exp(x)` into `out`.
fn exp_into(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(x.iter().map(|&a| a.exp()));
}

/// `softmax(x / t)` into `out`, with the sum in f64.
fn softmax_into(x: &[f32], t: f64, out: &mut Vec<f32>) {
    let inv = (1.0 / t) as f32;
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a)) * inv;
    out.clear();
    out.extend(x.iter().map(|&a| (a * inv - max).exp()));
    let sum: f64 = out.iter().map(|&e| f64::from(e)).sum();
    let norm = (1.0 / sum) as f32;
    out.iter_mut().for_each(|e| *e *= norm);
}

/// The indices of non-negative `values` in decreasing order (ties in index
/// order): an LSD radix sort of the complemented bit patterns, three 11-bit
/// passes, stable.
fn descending_order(
    values: &[f32],
    order: &mut Vec<u32>,
    keys: &mut Vec<u32>,
    keys_tmp: &mut Vec<u32>,
    order_tmp: &mut Vec<u32>,
) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    let n = values.len();
    keys.clear();
    keys.extend(values.iter().map(|x| !x.to_bits()));
    order.clear();
    order.extend(0..n as u32);
    keys_tmp.resize(n, 0);
    order_tmp.resize(n, 0);
    for shift in [0, BITS, 2 * BITS] {
        let bucket = |k: u32| ((k >> shift) as usize) & (BUCKETS - 1);
        let mut starts = [0usize; BUCKETS];
        keys.iter().for_each(|&k| starts[bucket(k)] += 1);
        let mut sum = 0;
        for start in starts.iter_mut() {
            (*start, sum) = (sum, sum + *start);
        }
        for (&k, &i) in keys.iter().zip(order.iter()) {
            let slot = &mut starts[bucket(k)];
            (keys_tmp[*slot], order_tmp[*slot]) = (k, i);
            *slot += 1;
        }
        std::mem::swap(keys, keys_tmp);
        std::mem::swap(order, order_tmp);
    }
}

/// The soft column `f·ULD` per row, `[rows, 1]`, of f32 `student` logits (at
/// `spec.temperature`) and `teacher` values (at `spec.teacher_temperature`)
/// on a CPU backend, with its gradient with respect to `student` when that
/// is tracked.
pub(crate) fn column(student: &Tensor<2>, teacher: &Tensor<2>, spec: &FusedSpec) -> Tensor<2> {
    let [rows, _] = student.dims();
    let request = Request {
        temperature: spec.temperature,
        teacher_temperature: spec.teacher_temperature,
        factor: spec.soft_factor,
        softmax: true,
        with_gradient: student.is_tracked(),
        values: Arc::default(),
    };
    run(student, teacher, request).reshape([rows, 1])
}

/// ULD per row between `exp(student)` and `exp(teacher)`, log-values taken
/// as they are (not renormalised), `[rows]`, with its gradient with respect
/// to `student` when that is tracked: GOLD's merged spans.
pub(crate) fn rows_of_log_values(student: &Tensor<2>, teacher: &Tensor<2>) -> Tensor<1> {
    let request = Request {
        temperature: 1.0,
        teacher_temperature: 1.0,
        factor: 1.0,
        softmax: false,
        with_gradient: student.is_tracked(),
        values: Arc::default(),
    };
    run(student, teacher, request)
}

/// The engine on `student` and `teacher`: per-row values, `[rows]`, their
/// gradient attached to `student` by a surrogate term where it is tracked.
fn run(student: &Tensor<2>, teacher: &Tensor<2>, request: Request) -> Tensor<1> {
    let [rows, _] = student.dims();
    let inner = student.clone().without_autodiff();
    let device = inner.device();
    let grad = <Dispatch as HostUld>::host_uld(
        inner.into_dispatch(),
        teacher.clone().without_autodiff().into_dispatch(),
        request.clone(),
    );
    let grad = Tensor::<2>::from_dispatch(grad);
    let values = std::mem::take(&mut *request.values.lock().expect("not poisoned"));
    let values = Tensor::<1>::from_data(TensorData::new(values, [rows]), &device);
    if !student.is_tracked() {
        return match student.is_autodiff() {
            true => values.autodiff(),
            false => values,
        };
    }
    // Value 0, gradient `G` (times the upstream gradient of each row).
    let surrogate = (student.clone() * grad.autodiff())
        .sum_dim(1)
        .squeeze_dim::<1>(1);
    values.autodiff() + (surrogate.clone() - surrogate.detach())
}
