// A stand-in for the CUDA driver library: the cu* functions cudarc calls for kiln's CUDA backend,
// implemented over the CPU emulator of cuda/*.cu (runtime.h). Linked with the runtime and the
// kernels into libkiln_cuda_emu.so, whose SONAME is libcuda.so: a process that loads it before
// cudarc's first call (src/backend/cuda/driver.rs) runs the backend on the CPU through exactly
// the calls a GPU gets, so host-side bugs show before a GPU is lent.
//
// Emulated as a host can observe them: one device and its primary context; device memory as
// exact-size host allocations (AddressSanitizer sees overruns), with every copy and memset range
// checked against them; streams as queues run lazily, in order, when the host synchronises;
// pinned versus pageable copies (a pinned source is read when the copy runs, a pageable one is
// staged at the call, a copy to pageable memory returns once done); launch limits (threads,
// __launch_bounds__, dynamic shared memory and its opt-in); sticky launch failures; events and
// their timing; stream capture into graphs, with the calls CUDA forbids while capturing refused.
//
// Not emulated: more devices or contexts, memory pools (cuMemAllocAsync), managed and peer
// memory, textures, cooperative or cluster launches, host callbacks, cross-stream capture (fork
// and join through events), graph editing, the per-thread default stream (it is the legacy
// stream here), static shared memory and register counts (reported as 0), and meaningful timing.
//
// Files: driver.cpp (this: initialisation, device, context, modules, errors, kiln's exports),
// driver_memory.cpp, driver_stream.cpp (streams, events, launches, running queues),
// driver_graph.cpp (capture and graphs); driver_state.h is what they share.

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "driver_state.h"

namespace kiln_emu::driver {

DriverState& state() {
    // Never destroyed: cudarc may release its context from a static destructor after ours ran.
    static DriverState* s = new DriverState();
    return *s;
}

thread_local Context* current_context = nullptr;

CUresult refuse(CUresult code, const char* format, ...) {
    va_list args;
    va_start(args, format);
    std::fputs("kiln CUDA emulator: ", stderr);
    std::vfprintf(stderr, format, args);
    std::fputc('\n', stderr);
    va_end(args);
    return code;
}

void fault(CUresult code, const std::string& message) {
    Context& ctx = state().ctx;
    if (ctx.sticky == CUDA_SUCCESS) {
        ctx.sticky = code;
        std::fprintf(stderr, "kiln CUDA emulator: %s\n", message.c_str());
    }
    // After a fault the device state is undefined: nothing queued runs any more.
    ctx.legacy_stream.queue.clear();
    for (auto& stream : ctx.streams) stream->queue.clear();
}

Function* find_function(Context& ctx, CUfunction handle) {
    auto* function = reinterpret_cast<Function*>(handle);
    return ctx.functions.count(function) ? function : nullptr;
}

void destroy_context_objects(Context& ctx) {
    // Work still queued is dropped, not run: a context being torn down does not finish it.
    ctx.legacy_stream.queue.clear();
    ctx.legacy_stream.capture.reset();
    ctx.streams.clear();
    ctx.events.clear();
    ctx.graph_execs.clear();
    ctx.graphs.clear();
    ctx.functions.clear();
    ctx.modules.clear();
    free_all_memory(ctx);
}

namespace {

// The device's attributes; false for a value outside the enumeration.
bool device_attribute(const DriverState& s, int attribute, int* value) {
    switch (attribute) {
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = kMaxThreadsPerBlock; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *value = 1024; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *value = 1024; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *value = 64; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *value = 2147483647; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *value = 65535; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *value = 65535; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *value = kDefaultSharedBytes; return true;
        case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: *value = 65536; return true;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_PITCH: *value = 2147483647; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *value = 65536; return true;
        case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *value = 1410000; return true;  // kHz
        case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: *value = 512; return true;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = kMultiprocessors; return true;
        case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: *value = 1; return true;
        case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *value = 1; return true;
        case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *value = 1593000; return true;  // kHz
        case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *value = 5120; return true;
        case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *value = 40 << 20; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *value = 2048; return true;
        case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: *value = 2; return true;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; return true;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = s.cc_major; return true;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = s.cc_minor; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *value = s.shared_per_sm_bytes; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: *value = 65536; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = s.shared_optin_bytes; return true;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: *value = 32; return true;
        // No pools: cudarc then allocates and frees synchronously, the paths emulated here.
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *value = 0; return true;
        default:
            // Everything else (textures, surfaces, PCI ids, features not emulated) reads as 0.
            *value = 0;
            return attribute >= 1 && attribute < CU_DEVICE_ATTRIBUTE_MAX;
    }
}

// The bytes cuModuleLoadData may read: a fatbin's and an ELF's size are in their headers; PTX
// is text up to its NUL. Returns 0 for an image none of these.
size_t image_size(const unsigned char* image, bool* binary) {
    uint32_t magic;
    std::memcpy(&magic, image, 4);
    *binary = true;
    if (magic == 0xBA55ED50u) {  // fatbin: u32 magic, u16 version, u16 header size, u64 payload size
        uint16_t header_bytes;
        uint64_t payload_bytes;
        std::memcpy(&header_bytes, image + 6, 2);
        std::memcpy(&payload_bytes, image + 8, 8);
        return header_bytes + payload_bytes;
    }
    if (std::memcmp(image, "\x7f" "ELF", 4) == 0 && image[4] == 2) {  // ELF64 (a cubin): to the last table
        uint64_t program_offset, section_offset;
        uint16_t program_entry, program_count, section_entry, section_count;
        std::memcpy(&program_offset, image + 0x20, 8);
        std::memcpy(&section_offset, image + 0x28, 8);
        std::memcpy(&program_entry, image + 0x36, 2);
        std::memcpy(&program_count, image + 0x38, 2);
        std::memcpy(&section_entry, image + 0x3A, 2);
        std::memcpy(&section_count, image + 0x3C, 2);
        uint64_t end = std::max(program_offset + uint64_t(program_entry) * program_count,
                                section_offset + uint64_t(section_entry) * section_count);
        return size_t(end);
    }
    *binary = false;
    return std::strlen(reinterpret_cast<const char*>(image));
}

bool is_identifier_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
}

// The kernels an image defines, as far as the runtime knows them: in a binary image each name is
// a NUL-terminated string (symbol and section names), in PTX a whole word. A name the runtime
// knows but the image lacks is not found, so each module yields only its own kernels.
std::set<std::string> kernels_in_image(const unsigned char* image, size_t bytes, bool binary) {
    std::set<std::string> names;
    size_t i = 0;
    while (i < bytes) {
        if (!is_identifier_byte(image[i])) {
            ++i;
            continue;
        }
        size_t start = i;
        while (i < bytes && is_identifier_byte(image[i])) ++i;
        bool terminated = binary ? (i < bytes && image[i] == 0) : true;
        if (terminated) {
            std::string word(reinterpret_cast<const char*>(image + start), i - start);
            if (find_kernel(word.c_str()) != nullptr) names.insert(std::move(word));
        }
    }
    return names;
}

}  // namespace
}  // namespace kiln_emu::driver

using namespace kiln_emu::driver;

// ---- Initialisation and the device ----

extern "C" CUresult cuInit(unsigned int flags) {
    try {
        DriverState& s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        if (flags != 0) return refuse(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0");
        if (s.initialized) return CUDA_SUCCESS;
        const char* capability = std::getenv("KILN_EMU_COMPUTE_CAPABILITY");
        std::string cc = capability ? capability : "9.0";
        if (cc == "9.0") {
            s.cc_major = 9, s.cc_minor = 0, s.shared_optin_bytes = 232448, s.shared_per_sm_bytes = 233472;
        } else if (cc == "8.0") {
            s.cc_major = 8, s.cc_minor = 0, s.shared_optin_bytes = 166912, s.shared_per_sm_bytes = 167936;
        } else {
            return refuse(CUDA_ERROR_INVALID_VALUE,
                          "KILN_EMU_COMPUTE_CAPABILITY is \"%s\"; the emulator models 9.0 (the default) or 8.0",
                          cc.c_str());
        }
        s.ctx.legacy_stream.legacy = true;
        s.initialized = true;
        return CUDA_SUCCESS;
    } catch (...) {
        return CUDA_ERROR_UNKNOWN;
    }
}

extern "C" CUresult cuDriverGetVersion(int* version) {
    if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *version = 13000;  // the API cudarc's cuda-13000 bindings expect
    return CUDA_SUCCESS;
}

extern "C" CUresult cuDeviceGetCount(int* count) {
    return api(Need::Driver, [&](DriverState&) {
        if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
        *count = 1;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    return api(Need::Driver, [&](DriverState&) {
        if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if (ordinal != 0) return refuse(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet: device %d; the emulator has device 0 only", ordinal);
        *device = 0;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDeviceGetName(char* name, int length, CUdevice device) {
    return api(Need::Driver, [&](DriverState&) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (name == nullptr || length <= 0) return CUDA_ERROR_INVALID_VALUE;
        std::snprintf(name, size_t(length), "%s", "kiln CUDA emulator (CPU)");
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device) {
    return api(Need::Driver, [&](DriverState& s) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if (!device_attribute(s, int(attribute), value)) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: no attribute %d", int(attribute));
        }
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device) {
    return api(Need::Driver, [&](DriverState&) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
        *bytes = kTotalMemoryBytes;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice device) {
    return api(Need::Driver, [&](DriverState&) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (uuid == nullptr) return CUDA_ERROR_INVALID_VALUE;
        std::memcpy(uuid->bytes, "kiln-cuda-emu-00", 16);
        return CUDA_SUCCESS;
    });
}

#ifndef KILN_EMU_USE_CUDA_H  // cuda.h 13 renames cuDeviceGetUuid to the _v2 above
extern "C" CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice device) { return cuDeviceGetUuid_v2(uuid, device); }
#endif

// ---- The primary context ----

extern "C" CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device) {
    return api(Need::Driver, [&](DriverState& s) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (context == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if (s.ctx.retained++ == 0) {
            s.ctx.live = true;
            s.ctx.sticky = CUDA_SUCCESS;
        }
        *context = reinterpret_cast<CUcontext>(&s.ctx);
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
    return api(Need::Driver, [&](DriverState& s) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (s.ctx.retained == 0) return refuse(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: not retained");
        if (--s.ctx.retained == 0) {
            // The last release destroys the context: its memory, modules and streams go with it.
            destroy_context_objects(s.ctx);
            s.ctx.live = false;
            s.ctx.sticky = CUDA_SUCCESS;
        }
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDevicePrimaryCtxReset_v2(CUdevice device) {
    return api(Need::Driver, [&](DriverState& s) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        destroy_context_objects(s.ctx);
        s.ctx.sticky = CUDA_SUCCESS;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuDevicePrimaryCtxGetState(CUdevice device, unsigned int* flags, int* active) {
    return api(Need::Driver, [&](DriverState& s) {
        if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
        if (flags == nullptr || active == nullptr) return CUDA_ERROR_INVALID_VALUE;
        *flags = 0;
        *active = s.ctx.live ? 1 : 0;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuCtxSetCurrent(CUcontext context) {
    return api(Need::Driver, [&](DriverState& s) {
        if (context != nullptr && context != reinterpret_cast<CUcontext>(&s.ctx)) {
            return refuse(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: not the primary context's handle");
        }
        current_context = context ? &s.ctx : nullptr;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuCtxGetCurrent(CUcontext* context) {
    return api(Need::Driver, [&](DriverState&) {
        if (context == nullptr) return CUDA_ERROR_INVALID_VALUE;
        *context = reinterpret_cast<CUcontext>(current_context);
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuCtxGetDevice(CUdevice* device) {
    return api(Need::CurrentContext, [&](DriverState&) {
        if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
        *device = 0;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuCtxSynchronize(void) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (CUresult refused = refuse_if_capturing(s, "cuCtxSynchronize")) return refused;
        run_context(s);
        return s.ctx.sticky;
    });
}

// ---- Modules and functions ----

extern "C" CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (module == nullptr || image == nullptr) return CUDA_ERROR_INVALID_VALUE;
        auto* bytes = static_cast<const unsigned char*>(image);
        bool binary;
        size_t size = image_size(bytes, &binary);
        if (size == 0) return refuse(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: not a fatbin, cubin or PTX image");
        // The image may be freed once this returns (cudarc frees it): keep only what was found.
        auto loaded = std::make_unique<Module>();
        loaded->kernel_names = kernels_in_image(bytes, size, binary);
        *module = reinterpret_cast<CUmodule>(loaded.get());
        s.ctx.modules.emplace(loaded.get(), std::move(loaded));
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuModuleUnload(CUmodule handle) {
    return api(Need::Driver, [&](DriverState& s) {
        auto found = s.ctx.modules.find(reinterpret_cast<Module*>(handle));
        if (found == s.ctx.modules.end()) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: not a loaded module");
        // Queued launches may use its kernels: they finish first.
        run_context(s);
        for (auto& [name, function] : found->second->functions) s.ctx.functions.erase(function.get());
        s.ctx.modules.erase(found);
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuModuleGetFunction(CUfunction* function, CUmodule handle, const char* name) {
    return api(Need::Context, [&](DriverState& s) {
        auto found = s.ctx.modules.find(reinterpret_cast<Module*>(handle));
        if (found == s.ctx.modules.end()) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: not a loaded module");
        if (function == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
        Module& module = *found->second;
        if (!module.kernel_names.count(name)) {
            return refuse(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: the module has no kernel %s%s", name,
                          kiln_emu::find_kernel(name) ? " (another module has it)" : "");
        }
        auto& slot = module.functions[name];
        if (!slot) {
            slot = std::make_unique<Function>();
            slot->kernel = kiln_emu::find_kernel(name);
            slot->module = &module;
            s.ctx.functions.insert(slot.get());
        }
        *function = reinterpret_cast<CUfunction>(slot.get());
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuFuncGetAttribute(int* value, CUfunction_attribute attribute, CUfunction handle) {
    return api(Need::Context, [&](DriverState& s) {
        Function* function = find_function(s.ctx, handle);
        if (function == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuFuncGetAttribute: not a loaded function");
        if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
        switch (attribute) {
            case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
                *value = int(std::min<unsigned>(function->kernel->max_threads, kMaxThreadsPerBlock));
                return CUDA_SUCCESS;
            case CU_FUNC_ATTRIBUTE_PTX_VERSION:
            case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *value = s.cc_major * 10 + s.cc_minor; return CUDA_SUCCESS;
            case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *value = function->max_dynamic_shared_bytes; return CUDA_SUCCESS;
            case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *value = function->shared_carveout; return CUDA_SUCCESS;
            default:
                // Static shared memory, registers, local memory, cluster shape: unknown here, 0.
                *value = 0;
                if (int(attribute) < 0 || int(attribute) >= CU_FUNC_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
                return CUDA_SUCCESS;
        }
    });
}

extern "C" CUresult cuFuncSetAttribute(CUfunction handle, CUfunction_attribute attribute, int value) {
    return api(Need::Context, [&](DriverState& s) {
        Function* function = find_function(s.ctx, handle);
        if (function == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: not a loaded function");
        switch (attribute) {
            case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
                if (value < 0 || value > s.shared_optin_bytes) {
                    return refuse(CUDA_ERROR_INVALID_VALUE,
                                  "cuFuncSetAttribute: %s: %d bytes of dynamic shared memory; the device allows %d",
                                  function->kernel->name, value, s.shared_optin_bytes);
                }
                function->max_dynamic_shared_bytes = value;
                return CUDA_SUCCESS;
            case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
                if (value < -1 || value > 100) return CUDA_ERROR_INVALID_VALUE;
                function->shared_carveout = value;
                return CUDA_SUCCESS;
            default:
                return refuse(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: attribute %d is read-only or not emulated",
                              int(attribute));
        }
    });
}

// ---- Errors ----

namespace {

struct ErrorText {
    int code;
    const char* name;
    const char* text;
};

// Codes the emulator returns, and common ones a caller may ask about.
const ErrorText kErrors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {34, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {401, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"},
    {710, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
    {902, "CUDA_ERROR_STREAM_CAPTURE_MERGE", "operation would result in a merge of separate capture sequences"},
    {903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "capture was not ended in the same stream as it began"},
    {904, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED", "capturing stream has unjoined work"},
    {905, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION", "dependency created on uncaptured work in another stream"},
    {906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "operation would make the legacy stream depend on a capturing blocking stream"},
    {907, "CUDA_ERROR_CAPTURED_EVENT", "operation not permitted on an event last recorded in a capturing stream"},
    {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const ErrorText* error_text(CUresult error) {
    for (const ErrorText& e : kErrors) {
        if (e.code == int(error)) return &e;
    }
    return nullptr;
}

}  // namespace

extern "C" CUresult cuGetErrorName(CUresult error, const char** name) {
    if (name == nullptr) return CUDA_ERROR_INVALID_VALUE;
    const ErrorText* e = error_text(error);
    *name = e ? e->name : nullptr;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

extern "C" CUresult cuGetErrorString(CUresult error, const char** text) {
    if (text == nullptr) return CUDA_ERROR_INVALID_VALUE;
    const ErrorText* e = error_text(error);
    *text = e ? e->text : nullptr;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- kiln's own entry points (found with dlsym by src/backend/cuda/driver.rs) ----

extern "C" int kiln_emu_is_emulator(void) { return 1; }

// The order the emulator resumes a block's threads in (kiln_emu::Schedule: 0 forward, 1 reverse,
// 2 random from `seed`). Returns 0, or 1 for an unknown mode. Waits for a running kernel.
extern "C" int kiln_emu_set_schedule(int mode, uint64_t seed) {
    if (mode < 0 || mode > 2) return 1;
    try {
        std::lock_guard<std::mutex> lock(state().mutex);
        kiln_emu::set_schedule(static_cast<kiln_emu::Schedule>(mode), seed);
        return 0;
    } catch (...) {
        return 1;
    }
}
