//! The crate's top-k selection ([`crate::top_k`]) on the CPU backends (flex,
//! and ndarray with this crate's `ndarray` feature), f32, run on burn's
//! buffer in place: no copy of the logits out of burn (reading a flex tensor
//! through burn's API copies it into fresh memory, about 24 ms for
//! 256 × 32,000; an ndarray one costs about 25 ns per element).

// burn-ndarray is deprecated in burn 0.22 but still supported, and still used.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

use super::extension::HostBackend;
use crate::top_k::{BadRow, Selection, TopKRows, check_rows, top_k_rows};

/// What one selection takes, and where it leaves its rows (burn's extension
/// ops return a tensor).
#[derive(Debug, Clone)]
struct Request {
    selection: Selection,
    out: Arc<Mutex<Option<Result<TopKRows, BadRow>>>>,
}

#[backend_extension(Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"))]
trait HostTopK: Backend {
    /// Selects on `logits` `[rows, classes]` into `request.out`; returns
    /// `logits`.
    fn host_top_k(logits: FloatTensor<Self>, request: Request) -> FloatTensor<Self>;
}

impl<B: HostBackend> HostTopK for B {
    fn host_top_k(logits: FloatTensor<Self>, request: Request) -> FloatTensor<Self> {
        let classes = logits.shape()[1];
        let rows = B::with_f32(&logits, |values| {
            if request.selection.refuse_bad_rows {
                check_rows(values, classes)?;
            }
            Ok(top_k_rows(values, classes, &request.selection))
        });
        *request.out.lock().expect("a fresh lock") = Some(rows);
        logits
    }
}

/// [`crate::top_k`]'s selection of f32 `logits` (flex or ndarray, without
/// autodiff), read in place.
pub(crate) fn top_k(logits: Tensor<2>, selection: Selection) -> Result<TopKRows, BadRow> {
    let request = Request {
        selection,
        out: Arc::default(),
    };
    let _logits = <Dispatch as HostTopK>::host_top_k(logits.into_dispatch(), request.clone());
    let out = request.out.lock().expect("not poisoned").take();
    out.expect("the selection ran")
}
