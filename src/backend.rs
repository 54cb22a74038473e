//! Which burn backend a tensor lives on, read from burn's dispatch device: the
//! one place the crate identifies backends (the fused kernel serves flex and
//! ndarray; the combiner solves on the host for flex).

use burn::backend::DeviceOps;
use burn::tensor::Device;

/// Burn's dispatch id of the Cube backend: every CubeCL runtime (wgpu,
/// Vulkan, Metal, CUDA, ROCm, CubeCL's CPU runtime).
const CUBE_BACKEND_ID: u16 = 0;
/// Burn's dispatch id of the flex backend (see `burn_dispatch::DispatchDeviceId`),
/// whose tensors live in host memory and read back as a plain copy.
const FLEX_BACKEND_ID: u16 = 4;
/// Burn's dispatch id of the ndarray backend. Its tensors live in host memory
/// too, but reading one back through burn's API costs about 25 ns per element
/// (51 ms for 64×32000, measured), so only the fused kernel reads them in place.
const NDARRAY_BACKEND_ID: u16 = 6;

/// The CPU backends whose buffers the crate reads in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostBackend {
    Flex,
    NdArray,
}

/// The host backend behind `device` (with or without autodiff), if any.
pub(crate) fn host_backend(device: &Device) -> Option<HostBackend> {
    match device.as_dispatch().id().type_id >> 8 {
        FLEX_BACKEND_ID => Some(HostBackend::Flex),
        NDARRAY_BACKEND_ID => Some(HostBackend::NdArray),
        _ => None,
    }
}

/// Whether `device` is a Cube device (with or without autodiff).
// Only the Cube kernel asks.
#[cfg_attr(not(feature = "cube-kernel"), allow(dead_code))]
pub(crate) fn is_cube(device: &Device) -> bool {
    device.as_dispatch().id().type_id >> 8 == CUBE_BACKEND_ID
}

/// Whether `device` is a flex device (with or without autodiff).
pub(crate) fn is_flex(device: &Device) -> bool {
    host_backend(device) == Some(HostBackend::Flex)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids read from burn's dispatch device name the backends they claim to.
    #[test]
    #[allow(deprecated)] // Device::ndarray
    fn identifies_the_host_backends() {
        assert_eq!(host_backend(&Device::flex()), Some(HostBackend::Flex));
        assert_eq!(
            host_backend(&Device::flex().autodiff()),
            Some(HostBackend::Flex)
        );
        assert_eq!(host_backend(&Device::ndarray()), Some(HostBackend::NdArray));
        assert_eq!(
            host_backend(&Device::ndarray().autodiff()),
            Some(HostBackend::NdArray)
        );
    }
}
