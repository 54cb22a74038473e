//! Counters that tell what a loss did on the calling thread: whether the Cube
//! kernel ran, and whether anything was read back from a device — for tests
//! and benchmarks, not for training code.

use std::cell::Cell;

use burn::tensor::kind::Basic;
use burn::tensor::{Tensor, TensorData};

use crate::backend::host_backend;

thread_local! {
    /// Reads of a device's memory by the crate, on this thread (see [`device_reads`]).
    static DEVICE_READS: Cell<u64> = const { Cell::new(0) };
}

/// How many times the fused Cube kernel has been launched from the calling
/// thread (always 0 without the `cube-kernel` feature): a way to tell that a
/// loss on a Cube device (wgpu, CUDA, …) took the fused kernel rather than
/// burn ops and autodiff. Each `KdLoss` forward that takes it launches it
/// once; the backward pass is a second, elementwise kernel, not counted.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::KdLossConfig;
/// use burn_distill::diagnostics::cube_kernel_launches;
///
/// // On flex the CPU kernel runs, not the Cube one: the count stays. On a
/// // wgpu or CUDA device (with the feature) the same forward adds one.
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 2.0, 0.5]], &device);
/// let teacher = Tensor::<2>::from_floats([[1.5, 3.0, 0.0]], &device);
/// let labels = Tensor::<1, Int>::from_ints([1], &device);
/// let before = cube_kernel_launches();
/// KdLossConfig::new().init().forward(student, teacher, labels);
/// assert_eq!(cube_kernel_launches(), before);
/// ```
pub fn cube_kernel_launches() -> u64 {
    crate::fused::cube_kernel_launches()
}

/// How many times the crate has read a tensor back from a device's memory to
/// the host on the calling thread: each one waits for the device to finish
/// the work queued before it (a device→host sync on wgpu or CUDA). Reads of
/// tensors that live in host memory (flex, ndarray) are not syncs and are not
/// counted.
///
/// No forward of [`KdLoss`](crate::KdLoss), [`DkdLoss`](crate::DkdLoss) or
/// [`FusedLinearKdLoss`](crate::FusedLinearKdLoss) reads one (tested on
/// wgpu): checks that need tensor values run on the device there, and
/// [`check`](crate::KdLoss::check) is what reads them (see the crate's
/// "Checks" section).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, Targets, TeacherOutput};
/// use burn_distill::diagnostics::device_reads;
///
/// let device = Device::flex(); // host memory: its reads are never counted
/// let kd = KdLossConfig::new().init();
/// let student = Tensor::<2>::from_floats([[1.0, 2.0, 0.5]], &device);
/// let teacher = TeacherOutput::Logits(Tensor::<2>::from_floats([[1.5, 3.0, 0.0]], &device));
/// let labels = Targets::new(Tensor::<1, Int>::from_ints([1], &device));
/// let before = device_reads();
/// kd.check(&student, &teacher, &labels).unwrap();
/// assert_eq!(device_reads(), before);
/// ```
pub fn device_reads() -> u64 {
    DEVICE_READS.with(Cell::get)
}

/// `tensor`'s values on the host: every read of tensor values by the crate's
/// checks and engines goes through here, so that [`device_reads`] counts the
/// ones that wait for a device.
pub(crate) fn read_back<const D: usize, K: Basic>(tensor: Tensor<D, K>) -> TensorData {
    if host_backend(&tensor.device()).is_none() {
        DEVICE_READS.with(|reads| reads.set(reads.get() + 1));
    }
    tensor.into_data()
}
