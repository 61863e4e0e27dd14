//! Tensors to and from host memory, as the TCP collective and the checkpoints move them.

use tch::{Device, Kind, Tensor};

use super::TrainError;

/// `t`'s values as f32 on the host, flattened.
pub(crate) fn host_vec(t: &Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(Vec::<f32>::try_from(
        t.detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .f_reshape([-1])?,
    )?)
}

/// Overwrites `t` with `values` (flattened, f32).
pub(crate) fn set_from(t: &Tensor, values: &[f32]) -> Result<(), TrainError> {
    tch::no_grad(|| -> Result<(), TrainError> {
        let src = Tensor::from_slice(values)
            .f_view(t.size().as_slice())?
            .f_to_device(t.device())?;
        t.shallow_clone().f_copy_(&src)?;
        Ok(())
    })
}
