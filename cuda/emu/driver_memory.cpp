// Device memory and pinned host memory as exact-size host allocations (so AddressSanitizer sees
// a kernel's overrun), and the copies and memsets between them, each range checked against those
// allocations at the call and again when the work runs.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include "driver_state.h"

namespace kiln_emu::driver {

const Allocation* allocation_holding(const Context& ctx, uintptr_t address, size_t bytes) {
    if (address + bytes < address) return nullptr;
    auto next = ctx.allocations.upper_bound(address);
    if (next == ctx.allocations.begin()) return nullptr;
    auto holder = std::prev(next);
    return address + bytes <= holder->first + holder->second.bytes ? &holder->second : nullptr;
}

bool overlaps_allocation(const Context& ctx, uintptr_t address, size_t bytes, bool pinned) {
    uintptr_t end = address + std::max<size_t>(bytes, 1);
    auto it = ctx.allocations.upper_bound(address);
    if (it != ctx.allocations.begin()) {
        auto before = std::prev(it);
        if (before->second.pinned == pinned && before->first + before->second.bytes > address) return true;
    }
    for (; it != ctx.allocations.end() && it->first < end; ++it) {
        if (it->second.pinned == pinned) return true;
    }
    return false;
}

void free_all_memory(Context& ctx) {
    for (auto& [address, allocation] : ctx.allocations) std::free(reinterpret_cast<void*>(address));
    ctx.allocations.clear();
    ctx.device_bytes = 0;
}

namespace {

// A device-address argument: all of it inside one allocation. Pinned host memory counts, as on
// a GPU with unified addressing, where the device reads it through the same pointer.
CUresult check_device_range(const Context& ctx, const char* api, const char* what, uintptr_t address, size_t bytes,
                            Memory* memory) {
    const Allocation* holder = allocation_holding(ctx, address, bytes);
    if (holder == nullptr) {
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: %s [0x%llx, +%zu bytes) is not inside one live allocation", api,
                      what, static_cast<unsigned long long>(address), bytes);
    }
    *memory = holder->pinned ? Memory::Pinned : Memory::Device;
    return CUDA_SUCCESS;
}

// A host-pointer argument: pinned when inside one cuMemHostAlloc block, else pageable. Device
// memory is host memory here, so a device pointer passed as a host pointer would work: refused,
// because on a GPU it would not.
CUresult check_host_range(const Context& ctx, const char* api, const char* what, const void* pointer, size_t bytes,
                          Memory* memory) {
    auto address = reinterpret_cast<uintptr_t>(pointer);
    if (pointer == nullptr) return refuse(CUDA_ERROR_INVALID_VALUE, "%s: %s is NULL", api, what);
    if (overlaps_allocation(ctx, address, bytes, /*pinned=*/false)) {
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: %s %p is device memory (cuMemAlloc), passed as a host pointer", api,
                      what, pointer);
    }
    const Allocation* holder = allocation_holding(ctx, address, bytes);
    if (holder != nullptr && holder->pinned) {
        *memory = Memory::Pinned;
    } else if (overlaps_allocation(ctx, address, bytes, /*pinned=*/true)) {
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: %s [%p, +%zu bytes) runs past its pinned allocation", api, what,
                      pointer, bytes);
    } else {
        *memory = Memory::Pageable;
    }
    return CUDA_SUCCESS;
}

// Copies that must finish before the call returns (to or from pageable memory the caller owns)
// cannot be recorded into a graph.
CUresult refuse_in_capture(Stream& stream, const char* api) {
    invalidate_capture(stream, api);
    return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                  "%s: a copy with pageable host memory cannot be captured into a graph; the capture is invalidated",
                  api);
}

Op copy_op(const char* api, uintptr_t dst, Memory dst_memory, uintptr_t src, Memory src_memory, size_t bytes) {
    Op op{Op::Kind::Copy, api};
    op.dst = dst, op.dst_memory = dst_memory, op.src = src, op.src_memory = src_memory, op.count = bytes;
    return op;
}

Op memset_op(const char* api, uintptr_t dst, Memory dst_memory, uint32_t value, unsigned element_bytes, size_t count) {
    Op op{Op::Kind::Memset, api};
    op.dst = dst, op.dst_memory = dst_memory, op.value = value, op.element_bytes = element_bytes, op.count = count;
    return op;
}

CUresult host_to_device(DriverState& s, const char* api, CUdeviceptr dst, const void* src, size_t bytes,
                        CUstream handle, bool async) {
    if (bytes == 0) return CUDA_SUCCESS;
    Memory dst_memory = Memory::Device, src_memory = Memory::Device;
    if (CUresult e = check_device_range(s.ctx, api, "destination", dst, bytes, &dst_memory)) return e;
    if (CUresult e = check_host_range(s.ctx, api, "source", src, bytes, &src_memory)) return e;
    Op op = copy_op(api, dst, dst_memory, reinterpret_cast<uintptr_t>(src), src_memory, bytes);
    if (!async) {
        run_legacy_and_blocking(s);
        return s.ctx.sticky ? s.ctx.sticky : execute(s, op);
    }
    Stream* stream;
    if (CUresult e = resolve_stream(s, handle, api, &stream)) return e;
    if (src_memory == Memory::Pageable) {
        // CUDA stages pageable sources before returning: later writes by the host do not land.
        if (stream->capture) return refuse_in_capture(*stream, api);
        auto* from = static_cast<const unsigned char*>(src);
        op.bytes.assign(from, from + bytes);
        op.src_memory = Memory::Staged;
    }
    return submit(s, *stream, std::move(op));
}

CUresult device_to_host(DriverState& s, const char* api, void* dst, CUdeviceptr src, size_t bytes, CUstream handle,
                        bool async) {
    if (bytes == 0) return CUDA_SUCCESS;
    Memory dst_memory = Memory::Device, src_memory = Memory::Device;
    if (CUresult e = check_device_range(s.ctx, api, "source", src, bytes, &src_memory)) return e;
    if (CUresult e = check_host_range(s.ctx, api, "destination", dst, bytes, &dst_memory)) return e;
    Op op = copy_op(api, reinterpret_cast<uintptr_t>(dst), dst_memory, src, src_memory, bytes);
    if (!async) {
        run_legacy_and_blocking(s);
        return s.ctx.sticky ? s.ctx.sticky : execute(s, op);
    }
    Stream* stream;
    if (CUresult e = resolve_stream(s, handle, api, &stream)) return e;
    if (dst_memory == Memory::Pinned) return submit(s, *stream, std::move(op));
    // Into pageable memory CUDA returns only once the copy is done: the stream runs through it.
    if (stream->capture) return refuse_in_capture(*stream, api);
    if (CUresult e = submit(s, *stream, std::move(op))) return e;
    run_all(s, *stream);
    return s.ctx.sticky;
}

CUresult device_to_device(DriverState& s, const char* api, CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                          CUstream handle, bool async) {
    if (bytes == 0) return CUDA_SUCCESS;
    Memory dst_memory = Memory::Device, src_memory = Memory::Device;
    if (CUresult e = check_device_range(s.ctx, api, "destination", dst, bytes, &dst_memory)) return e;
    if (CUresult e = check_device_range(s.ctx, api, "source", src, bytes, &src_memory)) return e;
    if (dst < src + bytes && src < dst + bytes) {
        // CUDA leaves overlapping copies undefined; refusing them makes the bug visible.
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: source and destination overlap", api);
    }
    Op op = copy_op(api, dst, dst_memory, src, src_memory, bytes);
    if (!async) {
        run_legacy_and_blocking(s);
        return s.ctx.sticky ? s.ctx.sticky : execute(s, op);
    }
    Stream* stream;
    if (CUresult e = resolve_stream(s, handle, api, &stream)) return e;
    return submit(s, *stream, std::move(op));
}

CUresult memset_elements(DriverState& s, const char* api, CUdeviceptr dst, uint32_t value, unsigned element_bytes,
                         size_t count, CUstream handle, bool async) {
    if (count == 0) return CUDA_SUCCESS;
    if (dst % element_bytes != 0) {
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: destination 0x%llx is not %u-byte aligned", api,
                      static_cast<unsigned long long>(dst), element_bytes);
    }
    if (count > SIZE_MAX / element_bytes) return CUDA_ERROR_INVALID_VALUE;
    Memory dst_memory = Memory::Device;
    if (CUresult e = check_device_range(s.ctx, api, "destination", dst, count * element_bytes, &dst_memory)) return e;
    Op op = memset_op(api, dst, dst_memory, value, element_bytes, count);
    if (!async) {
        run_legacy_and_blocking(s);
        return s.ctx.sticky ? s.ctx.sticky : execute(s, op);
    }
    Stream* stream;
    if (CUresult e = resolve_stream(s, handle, api, &stream)) return e;
    return submit(s, *stream, std::move(op));
}

CUresult host_alloc(DriverState& s, const char* api, void** pointer, size_t bytes, unsigned flags) {
    if (pointer == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (flags & ~unsigned(CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED)) {
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: unknown flags 0x%x", api, flags);
    }
    if (bytes == 0) return refuse(CUDA_ERROR_INVALID_VALUE, "%s: 0 bytes", api);
    if (CUresult refused = refuse_if_capturing(s, api)) return refused;
    void* memory = nullptr;
    if (posix_memalign(&memory, kPinnedAlignment, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    s.ctx.allocations[reinterpret_cast<uintptr_t>(memory)] = Allocation{bytes, /*pinned=*/true};
    *pointer = memory;
    return CUDA_SUCCESS;
}

}  // namespace
}  // namespace kiln_emu::driver

using namespace kiln_emu::driver;

// ---- Allocation ----

extern "C" CUresult cuMemAlloc_v2(CUdeviceptr* pointer, size_t bytes) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (pointer == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if (bytes == 0) return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: 0 bytes");
        if (CUresult refused = refuse_if_capturing(s, "cuMemAlloc")) return refused;
        if (bytes > kTotalMemoryBytes - s.ctx.device_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
        // Exactly `bytes`, not rounded up: a kernel reading past the end hits AddressSanitizer's redzone.
        void* memory = nullptr;
        if (posix_memalign(&memory, kDeviceAlignment, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
        s.ctx.allocations[reinterpret_cast<uintptr_t>(memory)] = Allocation{bytes, /*pinned=*/false};
        s.ctx.device_bytes += bytes;
        *pointer = reinterpret_cast<CUdeviceptr>(memory);
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuMemFree_v2(CUdeviceptr pointer) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (pointer == 0) return CUDA_SUCCESS;
        auto found = s.ctx.allocations.find(uintptr_t(pointer));
        if (found == s.ctx.allocations.end() || found->second.pinned) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemFree: 0x%llx is not the start of a live device allocation%s",
                          static_cast<unsigned long long>(pointer),
                          found != s.ctx.allocations.end() ? " (it is pinned host memory: cuMemFreeHost)" : "");
        }
        if (CUresult refused = refuse_if_capturing(s, "cuMemFree")) return refused;
        // cuMemFree synchronises: queued work that uses the memory finishes first.
        run_context(s);
        s.ctx.device_bytes -= found->second.bytes;
        std::free(reinterpret_cast<void*>(found->first));
        s.ctx.allocations.erase(found);
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (free_bytes == nullptr || total_bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
        *total_bytes = kTotalMemoryBytes;
        *free_bytes = kTotalMemoryBytes - s.ctx.device_bytes;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuMemHostAlloc(void** pointer, size_t bytes, unsigned int flags) {
    return api(Need::CurrentContext,
               [&](DriverState& s) { return host_alloc(s, "cuMemHostAlloc", pointer, bytes, flags); });
}

extern "C" CUresult cuMemAllocHost_v2(void** pointer, size_t bytes) {
    return api(Need::CurrentContext, [&](DriverState& s) { return host_alloc(s, "cuMemAllocHost", pointer, bytes, 0); });
}

extern "C" CUresult cuMemFreeHost(void* pointer) {
    return api(Need::Context, [&](DriverState& s) {
        auto found = s.ctx.allocations.find(reinterpret_cast<uintptr_t>(pointer));
        if (found == s.ctx.allocations.end() || !found->second.pinned) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost: %p is not the start of a live pinned allocation",
                          pointer);
        }
        if (CUresult refused = refuse_if_capturing(s, "cuMemFreeHost")) return refused;
        run_context(s);  // queued copies may still read or write it
        std::free(pointer);
        s.ctx.allocations.erase(found);
        return s.ctx.sticky;
    });
}

// ---- Copies: asynchronous ones queue on their stream; the others run at once, after the
// legacy stream's work (they are ordered on it) ----

extern "C" CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream) {
    return api(Need::Context,
               [&](DriverState& s) { return host_to_device(s, "cuMemcpyHtoDAsync", dst, src, bytes, stream, true); });
}

extern "C" CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    return api(Need::Context,
               [&](DriverState& s) { return device_to_host(s, "cuMemcpyDtoHAsync", dst, src, bytes, stream, true); });
}

extern "C" CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    return api(Need::Context,
               [&](DriverState& s) { return device_to_device(s, "cuMemcpyDtoDAsync", dst, src, bytes, stream, true); });
}

extern "C" CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (CUresult refused = refuse_if_capturing(s, "cuMemcpyHtoD")) return refused;
        return host_to_device(s, "cuMemcpyHtoD", dst, src, bytes, nullptr, false);
    });
}

extern "C" CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (CUresult refused = refuse_if_capturing(s, "cuMemcpyDtoH")) return refused;
        return device_to_host(s, "cuMemcpyDtoH", dst, src, bytes, nullptr, false);
    });
}

extern "C" CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (CUresult refused = refuse_if_capturing(s, "cuMemcpyDtoD")) return refused;
        return device_to_device(s, "cuMemcpyDtoD", dst, src, bytes, nullptr, false);
    });
}

extern "C" CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t count, CUstream stream) {
    return api(Need::Context,
               [&](DriverState& s) { return memset_elements(s, "cuMemsetD8Async", dst, value, 1, count, stream, true); });
}

extern "C" CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t count, CUstream stream) {
    return api(Need::Context,
               [&](DriverState& s) { return memset_elements(s, "cuMemsetD32Async", dst, value, 4, count, stream, true); });
}

extern "C" CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t count) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (CUresult refused = refuse_if_capturing(s, "cuMemsetD8")) return refused;
        return memset_elements(s, "cuMemsetD8", dst, value, 1, count, nullptr, false);
    });
}

extern "C" CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int value, size_t count) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (CUresult refused = refuse_if_capturing(s, "cuMemsetD32")) return refused;
        return memset_elements(s, "cuMemsetD32", dst, value, 4, count, nullptr, false);
    });
}
