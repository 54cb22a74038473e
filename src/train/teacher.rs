//! Where a [`Distiller`](super::Distiller)'s teacher outputs come from: a
//! live model, frozen, or the offline store.

use core::fmt::Debug;
#[cfg(feature = "store")]
use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use super::batch::ClassificationBatch;
use super::classifier::{Classifier, DistillInput};
use crate::error::DistillError;
#[cfg(feature = "store")]
use crate::kd::KdLoss;
#[cfg(feature = "store")]
use crate::store::TeacherStore;
use crate::teacher::TeacherOutput;

/// A source of the teacher's outputs for a batch.
///
/// Held by the [`Distiller`](super::Distiller) outside its parameters: it is
/// cloned with the distiller (cheaply: tensors and the store are shared) but
/// never forked, moved, saved or optimised.
pub trait TeacherSource<I>: Clone + Debug + Send + Sync + 'static {
    /// The teacher's output for `batch`, without autodiff, on `device` (the
    /// student's).
    ///
    /// # Errors
    /// When the source cannot serve the batch (e.g. a store without the
    /// batch's examples); the distiller panics with the message.
    fn teach(
        &self,
        batch: &ClassificationBatch<I>,
        device: &Device,
    ) -> Result<TeacherOutput, DistillError>;
}

/// A live teacher model, frozen: kept in evaluation mode (`Module::valid`:
/// no autodiff, no dropout) and run on a copy of the inputs moved off
/// autodiff, so its forward records no node on the student's graph.
///
/// It runs on the device it was made on: the batch's inputs are moved there
/// and its logits back to the student's device. With
/// [`with_replicas`](Self::with_replicas), one copy per device is made once
/// and each batch uses the copy on its student's device.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::TeacherOutput;
/// use burn_distill::train::{ClassificationBatch, Classifier, FrozenTeacher, TeacherSource};
///
/// #[derive(Module, Debug)]
/// struct Net {
///     layer: Linear,
/// }
/// impl Classifier for Net {
///     type Input = Tensor<2>;
///     fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
///         self.layer.forward(inputs)
///     }
/// }
///
/// let device = Device::flex().autodiff();
/// let teacher = FrozenTeacher::new(Net { layer: LinearConfig::new(4, 3).init(&device) });
/// let batch = ClassificationBatch::new(
///     Tensor::<2>::ones([2, 4], &device).require_grad(),
///     Tensor::<1, Int>::from_ints([0, 2], &device),
/// );
/// let TeacherOutput::Logits(logits) = teacher.teach(&batch, &device).unwrap() else {
///     unreachable!()
/// };
/// assert_eq!(logits.dims(), [2, 3]);
/// assert!(!logits.is_autodiff()); // nothing recorded for the teacher
/// ```
#[derive(Clone, Debug)]
pub struct FrozenTeacher<T> {
    /// At least one; each on its own device.
    replicas: Vec<T>,
}

impl<T: Classifier> FrozenTeacher<T> {
    /// `teacher` in evaluation mode, on the device it is on.
    pub fn new(teacher: T) -> Self {
        Self {
            replicas: vec![teacher.valid()],
        }
    }

    /// `teacher` in evaluation mode, copied once to each of `devices` (for
    /// multi-device training: each student then uses the teacher on its own
    /// device, and none is copied per step). Batches on any other device use
    /// the first copy.
    ///
    /// # Panics
    /// If `devices` is empty.
    pub fn with_replicas(teacher: T, devices: &[Device]) -> Self {
        assert!(
            !devices.is_empty(),
            "FrozenTeacher::with_replicas: `devices` is empty; give at least one device"
        );
        let teacher = teacher.valid();
        Self {
            replicas: devices
                .iter()
                .map(|device| {
                    teacher
                        .clone()
                        .to_device(&device.clone().without_autodiff())
                })
                .collect(),
        }
    }

    /// The teacher (the first copy).
    pub fn model(&self) -> &T {
        &self.replicas[0]
    }

    /// The copies, one per device given to [`with_replicas`](Self::with_replicas).
    pub fn replicas(&self) -> &[T] {
        &self.replicas
    }

    /// The copy on `device`, or the first one.
    fn replica_for(&self, device: &Device) -> &T {
        self.replicas
            .iter()
            .find(|replica| replica.devices().iter().any(|d| d == device))
            .unwrap_or(&self.replicas[0])
    }
}

impl<T: Classifier> TeacherSource<T::Input> for FrozenTeacher<T> {
    fn teach(
        &self,
        batch: &ClassificationBatch<T::Input>,
        device: &Device,
    ) -> Result<TeacherOutput, DistillError> {
        let replica = self.replica_for(device);
        // A teacher without parameters runs where the student does.
        let teacher_device = replica
            .devices()
            .first()
            .cloned()
            .unwrap_or_else(|| device.clone());
        let logits = replica
            .logits(batch.inputs.constant_on(&teacher_device))
            .without_autodiff();
        Ok(TeacherOutput::Logits(on_device(logits, device)))
    }
}

/// `tensor` on `device` without autodiff (a no-op when it is there already).
fn on_device(tensor: Tensor<2>, device: &Device) -> Tensor<2> {
    if tensor.device() == *device {
        tensor
    } else {
        tensor.to_device(&device.clone().without_autodiff())
    }
}

/// The teacher's top-k outputs read from an offline
/// [`TeacherStore`] by the batch's
/// [`examples`](ClassificationBatch::examples): no teacher model runs.
///
/// The batcher must fill `examples` with each row's index in the data set the
/// store was written for (the store's example `i` is data-set item `i`).
#[cfg(feature = "store")]
#[derive(Clone, Debug)]
pub struct StoredTeacher {
    store: Arc<TeacherStore>,
}

#[cfg(feature = "store")]
impl StoredTeacher {
    /// Serves `store` to a distiller training with `loss`.
    ///
    /// # Errors
    /// [`DistillError::StoreMismatch`] if the store was written at another
    /// temperature than `loss`'s (see [`TeacherStore::check_loss`]).
    pub fn new(store: TeacherStore, loss: &KdLoss) -> Result<Self, DistillError> {
        store.check_loss(loss)?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// The store.
    pub fn store(&self) -> &TeacherStore {
        &self.store
    }
}

#[cfg(feature = "store")]
impl<I: DistillInput> TeacherSource<I> for StoredTeacher {
    fn teach(
        &self,
        batch: &ClassificationBatch<I>,
        device: &Device,
    ) -> Result<TeacherOutput, DistillError> {
        if batch.examples.len() != batch.rows() {
            return Err(DistillError::BatchMismatch {
                argument: "batch.examples (a StoredTeacher reads the teacher by data-set index)",
                found: batch.examples.len(),
                expected: batch.rows(),
            });
        }
        let device = device.clone().without_autodiff();
        Ok(TeacherOutput::TopK(
            self.store.read(&batch.examples, &device)?,
        ))
    }
}
