//! Reading a step's logged values back to the host in one transfer.

use burn::tensor::Tensor;

use crate::error::DaoError;

/// Detaches and concatenates the `[n_i]` tensors and reads them in a single device sync;
/// returns one `Vec` per input tensor.
pub(crate) fn read_all(tensors: Vec<Tensor<1>>) -> Result<Vec<Vec<f32>>, DaoError> {
    let sizes: Vec<usize> = tensors.iter().map(|t| t.dims()[0]).collect();
    let joined = Tensor::cat(tensors.into_iter().map(Tensor::detach).collect(), 0);
    let flat = joined
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| DaoError::Readback {
            what: "diagnostics",
            reason: format!("{e:?}"),
        })?;
    let mut out = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for size in sizes {
        out.push(flat[start..start + size].to_vec());
        start += size;
    }
    Ok(out)
}
