//! The GPU as the rest of the backend sees it: one context and one stream, device memory owned
//! by `DeviceBuffer`s, typed views (`DeviceArray`) that launchers check, and kernel launches from
//! prepared `Launch` records (so a step's launches can be built once and replayed).
//!
//! Memory and launches go through cudarc's thin `result` layer rather than its tracked slices:
//! everything runs on one stream, and raw addresses are what the kernel parameter structs hold.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction, CUfunction_attribute, CUstreamCaptureMode};
use cudarc::driver::{result, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use half::{bf16, f16};

use super::params::KernelParams;
use super::CudaError;

/// Element types of device arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    U32,
    F64,
    /// Packed structs (plan arrays, sampling rows): lengths in bytes.
    U8,
}

impl Dtype {
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F64 => 8,
            Dtype::U8 => 1,
        }
    }

    /// The suffix of kernels instantiated for this activation dtype.
    pub fn kernel_suffix(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
            other => panic!("no kernels take {other:?} activations"),
        }
    }
}

/// A typed view of device memory: what launchers take and check. Copy, like a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceArray {
    pub ptr: u64,
    pub len: usize,
    pub dtype: Dtype,
}

impl DeviceArray {
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size_bytes()
    }

    /// Elements `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> DeviceArray {
        assert!(start + len <= self.len, "slice {start}..{} of a device array of {}", start + len, self.len);
        DeviceArray { ptr: self.ptr + (start * self.dtype.size_bytes()) as u64, len, dtype: self.dtype }
    }

    /// The same bytes seen as another element type.
    pub fn reinterpret(&self, dtype: Dtype) -> DeviceArray {
        assert_eq!(self.bytes() % dtype.size_bytes(), 0, "reinterpreting {self:?} as {dtype:?}");
        DeviceArray { ptr: self.ptr, len: self.bytes() / dtype.size_bytes(), dtype }
    }

    pub(crate) fn expect(&self, what: &str, dtype: Dtype, len: usize) -> Result<(), CudaError> {
        if self.dtype != dtype || self.len < len {
            return Err(CudaError::Shape(format!(
                "{what} must hold {len} {dtype:?} values, it is {} {:?}",
                self.len, self.dtype
            )));
        }
        Ok(())
    }
}

/// Device memory freed on drop; allocated at start-up, never per step.
pub struct DeviceBuffer {
    array: DeviceArray,
    ctx: Arc<CudaContext>,
}

impl DeviceBuffer {
    pub fn array(&self) -> DeviceArray {
        self.array
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.array.bytes() > 0 && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: the pointer came from malloc_sync in this context and is freed once.
            let _ = unsafe { result::free_sync(self.array.ptr) };
        }
    }
}

/// Page-locked host memory, so copies to and from the device are asynchronous.
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value alone.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to `bytes` bytes allocated by cuMemHostAlloc and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_host and freed once.
            let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
        }
    }
}

/// A kernel launch ready to go: function, geometry and the bytes of its one params struct.
#[derive(Clone, Copy)]
pub struct Launch {
    pub(crate) function: CUfunction,
    pub name: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
    params: [u64; 18],
}

// SAFETY: a CUfunction handle is usable from any thread of the process once loaded.
unsafe impl Send for Launch {}

impl Launch {
    pub fn new<P: KernelParams>(
        kernel: &Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        params: &P,
    ) -> Launch {
        let size = std::mem::size_of::<P>();
        assert!(size <= 18 * 8, "kernel params of {size} bytes do not fit a Launch");
        let mut words = [0u64; 18];
        // SAFETY: P is a repr(C) plain-data struct (KernelParams is only implemented for those) of
        // `size` bytes, copied into a buffer at least that large and 8-byte aligned.
        unsafe { std::ptr::copy_nonoverlapping(params as *const P as *const u8, words.as_mut_ptr() as *mut u8, size) };
        Launch { function: kernel.function, name: kernel.name, grid, block, shared_bytes, params: words }
    }
}

/// A loaded kernel function.
#[derive(Clone, Copy)]
pub struct Kernel {
    function: CUfunction,
    pub name: &'static str,
}

// SAFETY: see Launch.
unsafe impl Send for Kernel {}
unsafe impl Sync for Kernel {}

pub struct GpuInfo {
    /// The device ordinal (cuDeviceGet's index).
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: u32,
    pub total_bytes: usize,
    /// The sm_90a kernels (wgmma) are loaded: a compute capability 9.0 GPU, and
    /// `KILN_NO_WGMMA` unset.
    pub wgmma: bool,
}

/// How many GPUs the driver (or the emulator) reports.
pub fn gpu_count() -> Result<usize, CudaError> {
    super::cuda_available().map_err(CudaError::Unavailable)?;
    Ok(CudaContext::device_count()?.max(0) as usize)
}

/// The device: context, the one stream every kernel and copy runs on, and the loaded modules.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _modules: Vec<Arc<CudaModule>>,
    functions: HashMap<&'static str, CudaFunction>,
    pub info: GpuInfo,
}

// SAFETY: the context is bound to whichever thread uses the Gpu (bind_to_thread before each
// call that needs it); the backend is used from one thread at a time (Backend: Send, not Sync).
unsafe impl Send for Gpu {}

impl Gpu {
    /// Opens device `ordinal` (its primary context: every `Gpu` of one device shares it, each
    /// with a stream of its own) and loads every kernel module. Fails cleanly without a driver
    /// or GPU.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        super::cuda_available().map_err(CudaError::Unavailable)?;
        let gpus = gpu_count()?;
        if ordinal >= gpus {
            return Err(CudaError::Unavailable(format!("there is no GPU {ordinal}: the driver counts {gpus}")));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream orders everything; cudarc's per-buffer events would only add work (and
        // would break graph capture).
        // SAFETY: no cudarc-tracked buffers exist yet, and this backend never uses them.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let info = GpuInfo {
            ordinal,
            name: ctx.name()?,
            compute_capability: ctx.compute_capability()?,
            multiprocessors: ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            total_bytes: ctx.total_mem()?,
            wgmma: false,
        };
        if info.compute_capability.0 < 8 {
            return Err(CudaError::Unavailable(format!(
                "{} has compute capability {}.{}; kiln's kernels need 8.0 (Ampere) or newer",
                info.name, info.compute_capability.0, info.compute_capability.1
            )));
        }
        let mut info = info;
        // sm_90a machine code runs on compute capability 9.0 alone.
        info.wgmma = info.compute_capability == (9, 0) && std::env::var_os("KILN_NO_WGMMA").is_none();
        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for (file, fatbin) in super::kernels::ALL {
            let hopper_only = file.ends_with("_sm90");
            if hopper_only && !info.wgmma {
                continue;
            }
            let module = match ctx.load_module(Ptx::from_binary(fatbin.to_vec())) {
                Ok(module) => module,
                // The Hopper-only kernels are an optimisation: without them the mma.sync path runs.
                Err(e) if hopper_only => {
                    tracing::warn!("cuda/{file}.cu did not load ({e}); using the mma.sync GEMM");
                    info.wgmma = false;
                    continue;
                }
                Err(e) => return Err(CudaError::Module(format!("cuda/{file}.cu did not load: {e}"))),
            };
            for &name in super::kernels_in(file) {
                let function =
                    module.load_function(name).map_err(|e| CudaError::Module(format!("{file}.cu: {name}: {e}")))?;
                functions.insert(name, function);
            }
            modules.push(module);
        }
        Ok(Gpu { ctx, stream, _modules: modules, functions, info })
    }

    pub fn kernel(&self, name: &str) -> Result<Kernel, CudaError> {
        let (&name, function) =
            self.functions.get_key_value(name).ok_or_else(|| CudaError::Module(format!("no kernel named {name}")))?;
        Ok(Kernel { function: function.cu_function(), name })
    }

    pub(crate) fn set_dynamic_shared(&self, name: &str, bytes: u32) -> Result<(), CudaError> {
        let function = self.functions.get(name).ok_or_else(|| CudaError::Module(format!("no kernel named {name}")))?;
        function.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)?;
        Ok(())
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// (free, total) bytes of this device's memory.
    pub fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.bind_to_thread()?;
        Ok(result::mem_get_info()?)
    }

    pub fn alloc(&self, dtype: Dtype, len: usize) -> Result<DeviceBuffer, CudaError> {
        self.ctx.bind_to_thread()?;
        let bytes = len * dtype.size_bytes();
        let ptr = if bytes == 0 {
            0
        } else {
            // SAFETY: plain device allocation; freed by DeviceBuffer's Drop.
            unsafe { result::malloc_sync(bytes) }.map_err(|e| {
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                CudaError::OutOfMemory { wanted: bytes, free, total, source: e }
            })?
        };
        Ok(DeviceBuffer { array: DeviceArray { ptr, len, dtype }, ctx: self.ctx.clone() })
    }

    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedBuffer, CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: host allocation of `bytes` bytes, owned and freed by PinnedBuffer.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }? as *mut u8;
        Ok(PinnedBuffer { ptr, bytes, ctx: self.ctx.clone() })
    }

    /// Copies host bytes to the device, ordered on the stream (the source must outlive the copy:
    /// pinned buffers, or synchronise before dropping a pageable one; `upload_*` do).
    pub fn copy_to_device(&self, dst: DeviceArray, src: &[u8]) -> Result<(), CudaError> {
        assert!(src.len() <= dst.bytes(), "copy of {} bytes into a device array of {}", src.len(), dst.bytes());
        self.ctx.bind_to_thread()?;
        // SAFETY: dst holds at least src.len() bytes; the caller keeps src alive until the copy ends.
        unsafe { result::memcpy_htod_async(dst.ptr, src, self.stream.cu_stream()) }?;
        Ok(())
    }

    pub fn copy_to_host(&self, dst: &mut [u8], src: DeviceArray) -> Result<(), CudaError> {
        assert!(dst.len() <= src.bytes(), "copy of {} bytes out of a device array of {}", dst.len(), src.bytes());
        self.ctx.bind_to_thread()?;
        // SAFETY: src holds at least dst.len() bytes; dst lives until the synchronisation below
        // or, for pinned memory, until the caller synchronises.
        unsafe { result::memcpy_dtoh_async(dst, src.ptr, self.stream.cu_stream()) }?;
        Ok(())
    }

    pub fn copy_device(&self, dst: DeviceArray, src: DeviceArray, bytes: usize) -> Result<(), CudaError> {
        assert!(bytes <= dst.bytes() && bytes <= src.bytes(), "device copy of {bytes} bytes out of bounds");
        self.ctx.bind_to_thread()?;
        // SAFETY: both ranges are inside their allocations.
        unsafe { result::memcpy_dtod_async(dst.ptr, src.ptr, bytes, self.stream.cu_stream()) }?;
        Ok(())
    }

    /// Fills with 0xFF bytes: NaN in every float dtype, so an unwritten output never passes a test.
    pub fn poison(&self, array: DeviceArray) -> Result<(), CudaError> {
        self.memset(array, 0xFF)
    }

    pub fn memset(&self, array: DeviceArray, byte: u8) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the range is the array's own.
        unsafe { result::memset_d8_async(array.ptr, byte, array.bytes(), self.stream.cu_stream()) }?;
        Ok(())
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        Ok(())
    }

    pub fn launch(&self, launch: &Launch) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        let mut params = launch.params;
        let mut args: [*mut c_void; 1] = [params.as_mut_ptr() as *mut c_void];
        // SAFETY: every Launch is built by a launcher that checked the shapes and dtypes of the
        // arrays in its params against the kernel's contract; the params bytes are a live copy
        // of the struct the kernel takes by value.
        unsafe {
            result::launch_kernel(
                launch.function,
                launch.grid,
                launch.block,
                launch.shared_bytes,
                self.stream.cu_stream(),
                &mut args,
            )
        }
        .map_err(|e| CudaError::Launch { kernel: launch.name, source: e })
    }

    /// Records `launches` into a CUDA graph instead of running them.
    pub fn capture(&self, launches: &[Launch]) -> Result<CudaGraph, CudaError> {
        self.capture_with(|| launches.iter().try_for_each(|l| self.launch(l)))
    }

    /// Records what `record` enqueues on this stream (kernel launches, NCCL collectives) into a
    /// CUDA graph instead of running it. Thread-local capture mode: several ranks' threads may
    /// capture their own streams at once.
    pub fn capture_with(&self, record: impl FnOnce() -> Result<(), CudaError>) -> Result<CudaGraph, CudaError> {
        self.ctx.bind_to_thread()?;
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let launched = record();
        let graph = self.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        launched?;
        graph?.ok_or_else(|| CudaError::Module("graph capture recorded nothing".into()))
    }

    // Host conversions for tests, weights and tools.

    pub fn upload_f32(&self, values: &[f32]) -> Result<DeviceBuffer, CudaError> {
        self.upload_bytes(Dtype::F32, values.len(), bytemuck::cast_slice(values))
    }

    pub fn upload_u32(&self, values: &[u32]) -> Result<DeviceBuffer, CudaError> {
        self.upload_bytes(Dtype::U32, values.len(), bytemuck::cast_slice(values))
    }

    /// Rounds f32 values to `dtype` (f16, bf16 or f32) and uploads them.
    pub fn upload_as(&self, values: &[f32], dtype: Dtype) -> Result<DeviceBuffer, CudaError> {
        match dtype {
            Dtype::F32 => self.upload_f32(values),
            Dtype::F16 => {
                let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                self.upload_bytes(dtype, v.len(), bytemuck::cast_slice(&v))
            }
            Dtype::Bf16 => {
                let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                self.upload_bytes(dtype, v.len(), bytemuck::cast_slice(&v))
            }
            other => Err(CudaError::Shape(format!("cannot upload f32 values as {other:?}"))),
        }
    }

    pub fn upload_bytes(&self, dtype: Dtype, len: usize, bytes: &[u8]) -> Result<DeviceBuffer, CudaError> {
        let buffer = self.alloc(dtype, len)?;
        self.copy_to_device(buffer.array(), bytes)?;
        self.synchronize()?;
        Ok(buffer)
    }

    /// Reads any float array back as f32 (synchronises).
    pub fn download_f32(&self, array: DeviceArray) -> Result<Vec<f32>, CudaError> {
        let mut bytes = vec![0u8; array.bytes()];
        self.copy_to_host(&mut bytes, array)?;
        self.synchronize()?;
        Ok(match array.dtype {
            Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&bytes),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(&bytes).iter().map(|v| v.to_f32()).collect(),
            Dtype::Bf16 => bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes).iter().map(|v| v.to_f32()).collect(),
            Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(&bytes).iter().map(|&v| v as f32).collect(),
            other => return Err(CudaError::Shape(format!("{other:?} is not a float dtype"))),
        })
    }

    pub fn download_u32(&self, array: DeviceArray) -> Result<Vec<u32>, CudaError> {
        let mut bytes = vec![0u8; array.bytes()];
        self.copy_to_host(&mut bytes, array)?;
        self.synchronize()?;
        Ok(bytemuck::pod_collect_to_vec::<u8, u32>(&bytes))
    }

    /// Milliseconds the stream spends on `work`, timed with device events (synchronises).
    pub fn time_ms(&self, work: impl FnOnce() -> Result<(), CudaError>) -> Result<f32, CudaError> {
        let start = self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        let stop = self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(&self.stream)?;
        work()?;
        stop.record(&self.stream)?;
        stop.synchronize()?;
        Ok(start.elapsed_ms(&stop)?)
    }
}
