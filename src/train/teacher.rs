//! Where a [`Distiller`](super::Distiller)'s teacher outputs come from: a
//! live model, frozen, or the offline store.

use core::fmt::Debug;
#[cfg(feature = "store")]
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor};

use super::batch::ClassificationBatch;
use super::classifier::{Classifier, DistillInput};
use crate::check::shape_mismatch;
use crate::error::DistillError;
use crate::feature::Features;
#[cfg(feature = "store")]
use crate::kd::KdLoss;
use crate::linear::LinearTeacher;
use crate::lm::{CausalLm, OutputLayer, TokenBatch};
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

    /// The teacher's output and its named intermediate outputs for `batch`,
    /// from one forward, without autodiff, on `device`: what a distiller
    /// with feature terms asks for instead of [`teach`](Self::teach). A
    /// [`FrozenTeacher`] gives its model's
    /// [`logits_and_features`](Classifier::logits_and_features).
    ///
    /// # Errors
    /// As [`teach`](Self::teach); by default
    /// [`DistillError::UnsupportedTeacher`], a source without features
    /// (e.g. a store, which holds logits only).
    fn teach_with_features(
        &self,
        batch: &ClassificationBatch<I>,
        device: &Device,
    ) -> Result<(TeacherOutput, Features), DistillError> {
        let _ = (batch, device);
        Err(DistillError::UnsupportedTeacher {
            teacher: "TeacherSource::teach_with_features",
            reason: "this teacher source gives no intermediate features for feature terms \
                     (a FrozenTeacher gives its model's Classifier::logits_and_features)",
        })
    }
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

impl<T: Module> FrozenTeacher<T> {
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
    /// # Errors
    /// [`DistillError::InvalidParameter`] naming `devices` if it is empty.
    pub fn with_replicas(teacher: T, devices: &[Device]) -> Result<Self, DistillError> {
        if devices.is_empty() {
            return Err(DistillError::InvalidParameter {
                argument: "devices",
                value: 0,
                requirement: "at least 1 (the devices to copy the teacher to)",
            });
        }
        let teacher = teacher.valid();
        Ok(Self {
            replicas: devices
                .iter()
                .map(|device| {
                    teacher
                        .clone()
                        .to_device(&device.clone().without_autodiff())
                })
                .collect(),
        })
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

impl<T: Classifier> FrozenTeacher<T> {
    /// The copy for `device`, and `batch`'s inputs moved, constant, to
    /// where it runs.
    fn classifier_replica(
        &self,
        batch: &ClassificationBatch<T::Input>,
        device: &Device,
    ) -> (&T, T::Input) {
        let replica = self.replica_for(device);
        // A teacher without parameters runs where the student does.
        let teacher_device = replica
            .devices()
            .first()
            .cloned()
            .unwrap_or_else(|| device.clone());
        (replica, batch.inputs.constant_on(&teacher_device))
    }
}

impl<T: Classifier> TeacherSource<T::Input> for FrozenTeacher<T> {
    fn teach(
        &self,
        batch: &ClassificationBatch<T::Input>,
        device: &Device,
    ) -> Result<TeacherOutput, DistillError> {
        let (replica, inputs) = self.classifier_replica(batch, device);
        let logits = replica.logits(inputs).without_autodiff();
        Ok(TeacherOutput::Logits(on_device(logits, device)))
    }

    fn teach_with_features(
        &self,
        batch: &ClassificationBatch<T::Input>,
        device: &Device,
    ) -> Result<(TeacherOutput, Features), DistillError> {
        let (replica, inputs) = self.classifier_replica(batch, device);
        let (logits, features) = replica.logits_and_features(inputs);
        Ok((
            TeacherOutput::Logits(on_device(logits.without_autodiff(), device)),
            features.constant_on(device),
        ))
    }
}

/// A source of a causal LM teacher's outputs for a [`TokenBatch`]: what an
/// [`LmDistiller`](super::LmDistiller) scores its student against.
pub trait LmTeacherSource: Clone + Debug + Send + Sync + 'static {
    /// The teacher's output over `batch.tokens` — its logits
    /// `[batch, seq, vocab]` (position `t` predicting token `t + 1`, as the
    /// student's), or top-k rows, one per token — without autodiff, on
    /// `device` (the student's).
    ///
    /// # Errors
    /// When the source cannot serve the batch.
    fn teach(&self, batch: &TokenBatch, device: &Device) -> Result<TeacherOutput<3>, DistillError>;

    /// The teacher for [`FusedLinearKdLoss`](crate::FusedLinearKdLoss): its
    /// hidden states and output layer where it has them (the logits are then
    /// made chunk by chunk), else [`teach`](Self::teach)'s output.
    ///
    /// # Errors
    /// As [`teach`](Self::teach); a teacher given as probabilities, which the
    /// fused loss does not take.
    fn teach_linear(
        &self,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<LinearTeacher<3>, DistillError> {
        match self.teach(batch, device)? {
            TeacherOutput::Logits(logits) => Ok(LinearTeacher::Logits(logits)),
            TeacherOutput::TopK(sparse) => Ok(LinearTeacher::TopK(sparse)),
            TeacherOutput::Probs(_) | TeacherOutput::LogProbs(_) => {
                Err(DistillError::UnsupportedTeacher {
                    teacher: "LmTeacherSource::teach (probabilities)",
                    reason: "the fused linear loss takes a teacher's hidden states, logits or top-k rows",
                })
            }
        }
    }

    /// The teacher's output, as [`teach_linear`](Self::teach_linear), and
    /// its named intermediate outputs from the same forward, without
    /// autodiff, on `device`: what an [`LmDistiller`](super::LmDistiller)
    /// with feature terms asks for. A [`FrozenTeacher`] gives its model's
    /// [`hidden_and_features`](CausalLm::hidden_and_features) and output
    /// layer.
    ///
    /// # Errors
    /// As [`teach`](Self::teach); by default
    /// [`DistillError::UnsupportedTeacher`], a source without features (a
    /// store).
    fn teach_with_features(
        &self,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<(LinearTeacher<3>, Features), DistillError> {
        let _ = (batch, device);
        Err(DistillError::UnsupportedTeacher {
            teacher: "LmTeacherSource::teach_with_features",
            reason: "this teacher source gives no intermediate features for feature terms \
                     (a FrozenTeacher gives its model's CausalLm::hidden_and_features)",
        })
    }
}

impl<T: CausalLm> FrozenTeacher<T> {
    /// The copy for `device`, where it runs, and `batch` moved there.
    fn lm_replica(
        &self,
        batch: &TokenBatch,
        device: &Device,
    ) -> (&T, Tensor<2, Int>, Option<Tensor<2, Bool>>) {
        let replica = self.replica_for(device);
        let teacher_device = replica
            .devices()
            .first()
            .cloned()
            .unwrap_or_else(|| device.clone())
            .without_autodiff();
        let move_int = |t: &Tensor<2, Int>| t.clone().without_autodiff().to_device(&teacher_device);
        let move_bool = |t: &Tensor<2, Bool>| t.clone().to_device(&teacher_device);
        (
            replica,
            move_int(&batch.tokens),
            batch.padding_mask.as_ref().map(move_bool),
        )
    }
}

impl<T: CausalLm> LmTeacherSource for FrozenTeacher<T> {
    fn teach(&self, batch: &TokenBatch, device: &Device) -> Result<TeacherOutput<3>, DistillError> {
        let (replica, tokens, padding) = self.lm_replica(batch, device);
        let logits = replica.logits(tokens, padding).without_autodiff();
        Ok(TeacherOutput::Logits(on_device(logits, device)))
    }

    fn teach_linear(
        &self,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<LinearTeacher<3>, DistillError> {
        let (replica, tokens, padding) = self.lm_replica(batch, device);
        let hidden = replica.hidden(tokens, padding);
        Ok(linear_teacher(replica, hidden, device))
    }

    fn teach_with_features(
        &self,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<(LinearTeacher<3>, Features), DistillError> {
        let (replica, tokens, padding) = self.lm_replica(batch, device);
        let (hidden, features) = replica.hidden_and_features(tokens, padding);
        Ok((
            linear_teacher(replica, hidden, device),
            features.constant_on(device),
        ))
    }
}

/// `hidden` and `teacher`'s output layer, without autodiff, on `device`.
fn linear_teacher<T: CausalLm>(
    teacher: &T,
    hidden: Tensor<3>,
    device: &Device,
) -> LinearTeacher<3> {
    let OutputLayer { weight, bias } = teacher.output_layer();
    LinearTeacher::Hidden {
        hidden: on_device(hidden.without_autodiff(), device),
        weight: on_device(weight.without_autodiff(), device),
        bias: bias.map(|bias| on_device(bias.without_autodiff(), device)),
    }
}

/// `tensor` on `device` without autodiff (a no-op when it is there already).
fn on_device<const D: usize>(tensor: Tensor<D>, device: &Device) -> Tensor<D> {
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
            return Err(shape_mismatch(
                "batch.examples",
                &[batch.examples.len()],
                "batch rows",
                &[batch.rows()],
                "a StoredTeacher reads the teacher by data-set index: give one per row",
            ));
        }
        let device = device.clone().without_autodiff();
        Ok(TeacherOutput::TopK(
            self.store.read(&batch.examples, &device)?,
        ))
    }
}

/// A stored teacher for token sequences: each example of the store is one
/// sequence of the data set, stored as one row per position of the batch's
/// `[batch, seq]` (`TeacherStoreWriter::append_sequence_logits` over the
/// teacher's `[seq, vocab]` logits, padding included). The batcher must pad
/// every sequence to the length it was stored at and fill
/// [`TokenBatch::examples`].
#[cfg(feature = "store")]
impl LmTeacherSource for StoredTeacher {
    fn teach(&self, batch: &TokenBatch, device: &Device) -> Result<TeacherOutput<3>, DistillError> {
        let [sequences, seq] = batch.dims();
        if batch.examples.len() != sequences {
            return Err(shape_mismatch(
                "batch.examples",
                &[batch.examples.len()],
                "batch sequences",
                &[sequences],
                "a StoredTeacher reads the teacher by data-set index: give one per sequence",
            ));
        }
        for &example in &batch.examples {
            let rows = self.store.rows_of(example)?;
            if rows != seq {
                return Err(shape_mismatch(
                    "the store's rows of batch.examples",
                    &[example, rows],
                    "batch positions",
                    &[example, seq],
                    "the store must hold one row per token of the sequence",
                ));
            }
        }
        let device = device.clone().without_autodiff();
        Ok(TeacherOutput::TopK(
            self.store.read(&batch.examples, &device)?,
        ))
    }
}
