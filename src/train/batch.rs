//! The batch a [`Distiller`](super::Distiller) trains on.

use burn::tensor::{Int, Tensor};

/// One batch of a classification data set: inputs, labels and, for a stored
/// teacher, the rows' indices in the data set.
///
/// A burn `Batcher` produces it from the data set's items; the distiller's
/// `TrainStep` and `InferenceStep` take it as their input.
///
/// # Shapes
/// - `inputs`: whatever the models take (e.g. `Tensor<3>` images
///   `[batch, height, width]`, or `Tensor<2>` features `[batch, features]`)
/// - `targets`: `[batch]` class indices
/// - `examples`: `batch` data-set indices, or empty when the teacher runs live
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::train::ClassificationBatch;
///
/// let device = Device::flex();
/// let batch = ClassificationBatch::new(
///     Tensor::<2>::zeros([2, 4], &device),
///     Tensor::<1, Int>::from_ints([0, 3], &device),
/// )
/// .with_examples(vec![17, 4]);
/// assert_eq!(batch.rows(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct ClassificationBatch<I> {
    /// The models' inputs.
    pub inputs: I,
    /// The labels, `[batch]`.
    pub targets: Tensor<1, Int>,
    /// The data-set index of each row: what a
    /// [`StoredTeacher`](super::StoredTeacher) reads the teacher by. Empty
    /// when the teacher runs live.
    pub examples: Vec<usize>,
}

impl<I> ClassificationBatch<I> {
    /// A batch of `inputs` with their labels, without example indices.
    pub fn new(inputs: I, targets: Tensor<1, Int>) -> Self {
        Self {
            inputs,
            targets,
            examples: Vec::new(),
        }
    }

    /// The same batch with the data-set index of each row.
    pub fn with_examples(mut self, examples: Vec<usize>) -> Self {
        self.examples = examples;
        self
    }

    /// The number of rows (labels).
    pub fn rows(&self) -> usize {
        self.targets.dims()[0]
    }
}
