// Streams as in-order queues that run when the host synchronises, events that mark a point in
// them (with the time the queue reached it), and kernel launches with CUDA's launch checks.

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>

#include "driver_state.h"

namespace kiln_emu::driver {

Stream* find_stream(Context& ctx, CUstream handle) {
    if (handle == nullptr || handle == CU_STREAM_LEGACY || handle == CU_STREAM_PER_THREAD) return &ctx.legacy_stream;
    for (auto& stream : ctx.streams) {
        if (reinterpret_cast<CUstream>(stream.get()) == handle) return stream.get();
    }
    return nullptr;
}

bool stream_is_live(Context& ctx, const Stream* stream) {
    if (stream == &ctx.legacy_stream) return true;
    for (auto& live : ctx.streams) {
        if (live.get() == stream) return true;
    }
    return false;
}

CUresult resolve_stream(DriverState& s, CUstream handle, const char* api, Stream** stream) {
    bool legacy_alias = handle == nullptr || handle == CU_STREAM_LEGACY || handle == CU_STREAM_PER_THREAD;
    if (legacy_alias && current_context == nullptr) {
        return refuse(CUDA_ERROR_INVALID_CONTEXT, "%s: the NULL stream needs a current context", api);
    }
    *stream = find_stream(s.ctx, handle);
    if (*stream == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "%s: not a live stream", api);
    return CUDA_SUCCESS;
}

Event* find_event(Context& ctx, CUevent handle) {
    auto found = ctx.events.find(reinterpret_cast<Event*>(handle));
    return found == ctx.events.end() ? nullptr : found->second.get();
}

namespace {

std::shared_ptr<Event> event_pointer(Context& ctx, Event* event) { return ctx.events.at(event); }

// Whether memory an operation touches is still allocated when it runs (a graph replayed after
// a cuMemFree, a pinned buffer freed early): on a GPU, an illegal address.
bool still_allocated(const Context& ctx, uintptr_t address, size_t bytes, Memory memory) {
    if (memory != Memory::Device && memory != Memory::Pinned) return true;  // host memory the caller vouches for
    const Allocation* holder = allocation_holding(ctx, address, bytes);
    return holder != nullptr && holder->pinned == (memory == Memory::Pinned);
}

std::string describe_launch(const Op& op) {
    char text[160];
    std::snprintf(text, sizeof text, "<<<(%u, %u, %u), (%u, %u, %u), %u bytes>>>", op.grid.x, op.grid.y, op.grid.z,
                  op.block.x, op.block.y, op.block.z, op.shared_bytes);
    return std::string(op.function->kernel->name) + text;
}

CUresult launch(DriverState& s, Op& op) {
    if (!s.ctx.functions.count(op.function)) {
        fault(CUDA_ERROR_LAUNCH_FAILED, std::string(op.api) + ": a launch of a kernel whose module was unloaded");
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    std::string error;
    try {
        error = run_grid(*op.function->kernel, op.grid, op.block, op.shared_bytes, op.bytes.data());
    } catch (const std::exception& e) {
        error = std::string("the emulator threw: ") + e.what();
    }
    if (error.empty()) return CUDA_SUCCESS;
    fault(CUDA_ERROR_LAUNCH_FAILED, "kernel " + describe_launch(op) + " failed: " + error);
    return CUDA_ERROR_LAUNCH_FAILED;
}

void fill(Op& op) {
    if (op.element_bytes == 1) {
        std::memset(reinterpret_cast<void*>(op.dst), int(op.value & 0xFF), op.count);
        return;
    }
    auto* words = reinterpret_cast<uint32_t*>(op.dst);
    for (size_t i = 0; i < op.count; ++i) words[i] = op.value;
}

}  // namespace

CUresult execute(DriverState& s, Op& op) {
    Context& ctx = s.ctx;
    switch (op.kind) {
        case Op::Kind::Launch:
            return launch(s, op);
        case Op::Kind::Copy:
        case Op::Kind::Memset: {
            size_t bytes = op.count * (op.kind == Op::Kind::Memset ? op.element_bytes : 1);
            bool src_ok = op.kind == Op::Kind::Memset || still_allocated(ctx, op.src, bytes, op.src_memory);
            if (!still_allocated(ctx, op.dst, bytes, op.dst_memory) || !src_ok) {
                fault(CUDA_ERROR_ILLEGAL_ADDRESS, std::string(op.api) +
                                                      ": memory it was given was freed before it ran (an illegal "
                                                      "address on a GPU)");
                return CUDA_ERROR_ILLEGAL_ADDRESS;
            }
            if (op.kind == Op::Kind::Memset) {
                fill(op);
            } else {
                const void* from = op.src_memory == Memory::Staged ? op.bytes.data() : reinterpret_cast<void*>(op.src);
                std::memcpy(reinterpret_cast<void*>(op.dst), from, op.count);
            }
            return CUDA_SUCCESS;
        }
        case Op::Kind::RecordEvent: {
            Event& event = *op.event;
            if (op.epoch > event.completed) event.completed = op.epoch;
            if (op.epoch == event.recorded) event.time = Clock::now();
            return CUDA_SUCCESS;
        }
        case Op::Kind::WaitEvent: {
            // The waited-for record sits earlier in another queue: run that queue up to it.
            Event& event = *op.event;
            while (event.completed < op.epoch && stream_is_live(ctx, op.source) && !op.source->queue.empty() &&
                   ctx.sticky == CUDA_SUCCESS) {
                run_one(s, *op.source);
            }
            return ctx.sticky;
        }
    }
    return CUDA_ERROR_UNKNOWN;
}

void run_one(DriverState& s, Stream& stream) {
    if (stream.queue.empty()) return;
    Op op = std::move(stream.queue.front());
    stream.queue.pop_front();
    execute(s, op);  // a fault is recorded in the context and clears the queues
}

void run_all(DriverState& s, Stream& stream) {
    while (!stream.queue.empty() && s.ctx.sticky == CUDA_SUCCESS) run_one(s, stream);
    stream.query_deferred = false;
}

void run_legacy_and_blocking(DriverState& s) {
    for (auto& stream : s.ctx.streams) {
        if (!stream->non_blocking) run_all(s, *stream);
    }
    run_all(s, s.ctx.legacy_stream);
}

void run_context(DriverState& s) {
    run_all(s, s.ctx.legacy_stream);
    for (auto& stream : s.ctx.streams) run_all(s, *stream);
}

CUresult submit(DriverState& s, Stream& stream, Op&& op) {
    if (stream.capture) {
        if (stream.capture->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        stream.capture->nodes.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    // The legacy stream's implicit synchronisation: its work waits for all earlier work of the
    // blocking streams and they for its. Running the earlier side now is one legal schedule.
    if (stream.legacy) {
        for (auto& other : s.ctx.streams) {
            if (other->non_blocking) continue;
            if (other->capture) {
                invalidate_capture(*other, op.api);
                return refuse(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT,
                              "%s: work on the legacy stream would wait for a capturing blocking stream; the capture "
                              "is invalidated",
                              op.api);
            }
            run_all(s, *other);
        }
    } else if (!stream.non_blocking) {
        run_all(s, s.ctx.legacy_stream);
    }
    if (s.ctx.sticky != CUDA_SUCCESS) return s.ctx.sticky;
    stream.queue.push_back(std::move(op));
    stream.query_deferred = false;
    return CUDA_SUCCESS;
}

}  // namespace kiln_emu::driver

using namespace kiln_emu::driver;
using kiln_emu::Dim3;
using kiln_emu::KernelInfo;

// ---- Streams ----

extern "C" CUresult cuStreamCreate(CUstream* handle, unsigned int flags) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if (flags & ~unsigned(CU_STREAM_NON_BLOCKING)) return refuse(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: flags 0x%x", flags);
        auto stream = std::make_unique<Stream>();
        stream->non_blocking = (flags & CU_STREAM_NON_BLOCKING) != 0;
        *handle = reinterpret_cast<CUstream>(stream.get());
        s.ctx.streams.push_back(std::move(stream));
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuStreamDestroy_v2(CUstream handle) {
    return api(Need::Driver, [&](DriverState& s) {
        Stream* stream = find_stream(s.ctx, handle);
        if (stream == nullptr || stream->legacy) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: not a live stream");
        // CUDA lets queued work finish after the call; running it now is the same to the host.
        stream->capture.reset();
        run_all(s, *stream);
        for (auto it = s.ctx.streams.begin(); it != s.ctx.streams.end(); ++it) {
            if (it->get() == stream) {
                s.ctx.streams.erase(it);
                break;
            }
        }
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuStreamSynchronize(CUstream handle) {
    return api(Need::Context, [&](DriverState& s) {
        Stream* stream;
        if (CUresult e = resolve_stream(s, handle, "cuStreamSynchronize", &stream)) return e;
        if (stream->capture) {
            invalidate_capture(*stream, "cuStreamSynchronize");
            return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                          "cuStreamSynchronize: the stream is capturing a graph; synchronising it is not permitted and "
                          "invalidates the capture");
        }
        if (stream->legacy) {
            run_legacy_and_blocking(s);
        } else {
            run_all(s, *stream);
        }
        return s.ctx.sticky;
    });
}

// Unfinished work answers NOT_READY once and runs at the next query, so a host that takes
// NOT_READY for done reads stale results here as it might on a GPU.
extern "C" CUresult cuStreamQuery(CUstream handle) {
    return api(Need::Context, [&](DriverState& s) {
        Stream* stream;
        if (CUresult e = resolve_stream(s, handle, "cuStreamQuery", &stream)) return e;
        if (stream->capture) {
            invalidate_capture(*stream, "cuStreamQuery");
            return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                          "cuStreamQuery: the stream is capturing a graph; the capture is invalidated");
        }
        if (stream->queue.empty()) return CUDA_SUCCESS;
        if (!stream->query_deferred) {
            stream->query_deferred = true;
            return CUDA_ERROR_NOT_READY;
        }
        run_all(s, *stream);
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuStreamWaitEvent(CUstream handle, CUevent event_handle, unsigned int flags) {
    return api(Need::Context, [&](DriverState& s) {
        Stream* stream;
        if (CUresult e = resolve_stream(s, handle, "cuStreamWaitEvent", &stream)) return e;
        Event* event = find_event(s.ctx, event_handle);
        if (event == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: not a live event");
        if (flags & ~1u) return CUDA_ERROR_INVALID_VALUE;
        if (event->capture_id != 0 && capture_is_active(s.ctx, event->capture_id)) {
            if (stream->capture && stream->capture->id == event->capture_id) return CUDA_SUCCESS;  // same chain
            return refuse(CUDA_ERROR_NOT_SUPPORTED,
                          "cuStreamWaitEvent: joining another stream into a capture is not emulated");
        }
        if (stream->capture) {
            invalidate_capture(*stream, "cuStreamWaitEvent");
            return refuse(CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                          "cuStreamWaitEvent: a capture cannot wait on work recorded outside it; the capture is "
                          "invalidated");
        }
        if (event->completed >= event->recorded) return CUDA_SUCCESS;  // nothing to wait for
        Op wait{Op::Kind::WaitEvent, "cuStreamWaitEvent"};
        wait.event = event_pointer(s.ctx, event);
        wait.epoch = event->recorded;
        wait.source = event->stream;
        return submit(s, *stream, std::move(wait));
    });
}

// ---- Events ----

namespace {

// A sync or query of an event recorded into a capture that is still open: CUDA refuses it and
// invalidates that capture.
CUresult refuse_captured_event(Context& ctx, Event& event, const char* api) {
    invalidate_capture_by_id(ctx, event.capture_id, api);
    return refuse(CUDA_ERROR_CAPTURED_EVENT, "%s: the event was recorded into a capture in progress", api);
}

bool captured(Context& ctx, const Event& event) {
    return event.capture_id != 0 && capture_is_active(ctx, event.capture_id);
}

// Runs the event's stream until its latest record is reached.
void run_to(DriverState& s, Event& event) {
    while (event.completed < event.recorded && stream_is_live(s.ctx, event.stream) && !event.stream->queue.empty() &&
           s.ctx.sticky == CUDA_SUCCESS) {
        run_one(s, *event.stream);
    }
    event.query_deferred = false;
}

CUresult elapsed_ms(float* ms, CUevent start_handle, CUevent end_handle) {
    return api(Need::Context, [&](DriverState& s) {
        Event* start = find_event(s.ctx, start_handle);
        Event* end = find_event(s.ctx, end_handle);
        if (start == nullptr || end == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: not a live event");
        if (ms == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if ((start->flags | end->flags) & CU_EVENT_DISABLE_TIMING) {
            return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event was created with CU_EVENT_DISABLE_TIMING");
        }
        if (captured(s.ctx, *start) || captured(s.ctx, *end)) return CUDA_ERROR_CAPTURED_EVENT;
        if (start->recorded == 0 || end->recorded == 0) {
            return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event was never recorded");
        }
        // Like CUDA, no synchronisation here: an event the queue has not reached is NOT_READY.
        if (start->completed < start->recorded || end->completed < end->recorded) return CUDA_ERROR_NOT_READY;
        *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
        return CUDA_SUCCESS;
    });
}

}  // namespace

extern "C" CUresult cuEventCreate(CUevent* handle, unsigned int flags) {
    return api(Need::CurrentContext, [&](DriverState& s) {
        if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
        unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
        if ((flags & ~known) || ((flags & CU_EVENT_INTERPROCESS) && !(flags & CU_EVENT_DISABLE_TIMING))) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: flags 0x%x", flags);
        }
        auto event = std::make_shared<Event>();
        event->flags = flags;
        *handle = reinterpret_cast<CUevent>(event.get());
        s.ctx.events.emplace(event.get(), std::move(event));
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuEventDestroy_v2(CUevent handle) {
    return api(Need::Driver, [&](DriverState& s) {
        // Queued records and waits keep their own reference: destroying does not wait for them.
        if (s.ctx.events.erase(reinterpret_cast<Event*>(handle)) == 0) {
            return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: not a live event");
        }
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuEventRecord(CUevent handle, CUstream stream_handle) {
    return api(Need::Context, [&](DriverState& s) {
        Event* event = find_event(s.ctx, handle);
        if (event == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: not a live event");
        Stream* stream;
        if (CUresult e = resolve_stream(s, stream_handle, "cuEventRecord", &stream)) return e;
        if (stream->capture) {
            if (stream->capture->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
            event->capture_id = stream->capture->id;  // a point in the graph, not in any queue
            return CUDA_SUCCESS;
        }
        Op record{Op::Kind::RecordEvent, "cuEventRecord"};
        record.event = event_pointer(s.ctx, event);
        record.epoch = event->recorded + 1;
        if (CUresult e = submit(s, *stream, std::move(record))) return e;
        event->recorded += 1;
        event->stream = stream;
        event->capture_id = 0;
        event->query_deferred = false;
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuEventSynchronize(CUevent handle) {
    return api(Need::Context, [&](DriverState& s) {
        Event* event = find_event(s.ctx, handle);
        if (event == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventSynchronize: not a live event");
        if (captured(s.ctx, *event)) return refuse_captured_event(s.ctx, *event, "cuEventSynchronize");
        run_to(s, *event);
        return s.ctx.sticky;
    });
}

// As cuStreamQuery: NOT_READY once for unfinished work, which runs at the next query.
extern "C" CUresult cuEventQuery(CUevent handle) {
    return api(Need::Context, [&](DriverState& s) {
        Event* event = find_event(s.ctx, handle);
        if (event == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventQuery: not a live event");
        if (captured(s.ctx, *event)) return refuse_captured_event(s.ctx, *event, "cuEventQuery");
        if (event->completed >= event->recorded) return CUDA_SUCCESS;
        if (!event->query_deferred) {
            event->query_deferred = true;
            return CUDA_ERROR_NOT_READY;
        }
        run_to(s, *event);
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) { return elapsed_ms(ms, start, end); }

#ifndef KILN_EMU_USE_CUDA_H  // cuda.h 13 renames cuEventElapsedTime to the _v2 above
extern "C" CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) { return elapsed_ms(ms, start, end); }
#endif

// ---- Launches ----

extern "C" CUresult cuLaunchKernel(CUfunction handle, unsigned int grid_x, unsigned int grid_y, unsigned int grid_z,
                                   unsigned int block_x, unsigned int block_y, unsigned int block_z,
                                   unsigned int shared_bytes, CUstream stream_handle, void** params, void** extra) {
    return api(Need::Context, [&](DriverState& s) {
        Function* function = find_function(s.ctx, handle);
        if (function == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: not a loaded function");
        const KernelInfo& kernel = *function->kernel;
        Stream* stream;
        if (CUresult e = resolve_stream(s, stream_handle, "cuLaunchKernel", &stream)) return e;
        if (extra != nullptr) return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: %s: `extra` is not emulated", kernel.name);
        if (grid_x == 0 || grid_y == 0 || grid_z == 0 || block_x == 0 || block_y == 0 || block_z == 0 ||
            grid_x > 2147483647u || grid_y > 65535 || grid_z > 65535 || block_x > 1024 || block_y > 1024 ||
            block_z > 64) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: %s: grid (%u, %u, %u) or block (%u, %u, %u) out of range",
                          kernel.name, grid_x, grid_y, grid_z, block_x, block_y, block_z);
        }
        uint64_t threads = uint64_t(block_x) * block_y * block_z;
        unsigned max_threads = std::min<unsigned>(kernel.max_threads, kMaxThreadsPerBlock);
        if (threads > max_threads) {
            // The real driver answers INVALID_VALUE here, for __launch_bounds__ too (H200, driver
            // 580.159, 2026-12-04); OUT_OF_RESOURCES is its answer to registers it cannot give.
            return refuse(CUDA_ERROR_INVALID_VALUE,
                          "cuLaunchKernel: %s: %llu threads per block; it allows %u (__launch_bounds__ or the device)",
                          kernel.name, static_cast<unsigned long long>(threads), max_threads);
        }
        if (shared_bytes > unsigned(function->max_dynamic_shared_bytes)) {
            return refuse(CUDA_ERROR_INVALID_VALUE,
                          "cuLaunchKernel: %s: %u bytes of dynamic shared memory; it allows %d "
                          "(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES raises it up to %d)",
                          kernel.name, shared_bytes, function->max_dynamic_shared_bytes, s.shared_optin_bytes);
        }
        if (kernel.params_bytes > 0 && (params == nullptr || params[0] == nullptr)) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: %s: no parameter struct", kernel.name);
        }
        Op op{Op::Kind::Launch, "cuLaunchKernel"};
        op.function = function;
        op.grid = Dim3{grid_x, grid_y, grid_z};
        op.block = Dim3{block_x, block_y, block_z};
        op.shared_bytes = shared_bytes;
        // Our kernels take one struct by value (args[0]); CUDA copies it now, and so do we.
        if (kernel.params_bytes > 0) {
            auto* bytes = static_cast<const unsigned char*>(params[0]);
            op.bytes.assign(bytes, bytes + kernel.params_bytes);
        }
        return submit(s, *stream, std::move(op));
    });
}
