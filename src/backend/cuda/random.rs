//! Launcher of cuda/random.cu: seeded weights generated on the device, equal bit for bit to
//! `testing::seeded_values(seed, n)[i] * scale + offset` rounded to the array's dtype.

use super::device::{DeviceArray, Dtype, Gpu, Launch};
use super::params::FillRandomParams;
use super::CudaError;

pub fn fill_random(gpu: &Gpu, out: DeviceArray, seed: u64, scale: f32, offset: f32) -> Result<Launch, CudaError> {
    let name = match out.dtype {
        Dtype::F32 => "fill_random_f32",
        Dtype::F16 => "fill_random_f16",
        Dtype::Bf16 => "fill_random_bf16",
        other => return Err(CudaError::Shape(format!("cannot fill {other:?} with random floats"))),
    };
    let params = FillRandomParams { out: out.ptr, n: out.len as u64, seed, scale, offset };
    let blocks = out.len.div_ceil(256).clamp(1, 65_535) as u32;
    Ok(Launch::new(&gpu.kernel(name)?, (blocks, 1, 1), (256, 1, 1), 0, &params))
}
