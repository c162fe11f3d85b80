// Stream capture into graphs and graph replay. A capturing stream records its launches, copies
// and memsets (launch parameters copied at the call, as CUDA does) instead of queueing them; a
// launched graph queues copies of those records. Calls CUDA forbids during a capture are refused
// and invalidate it, so end-capture then fails as it would on a GPU.

#include "driver_state.h"

namespace kiln_emu::driver {

void invalidate_capture(Stream& stream, const char*) {
    if (stream.capture) stream.capture->invalidated = true;
}

bool capture_is_active(const Context& ctx, uint64_t capture_id) {
    if (ctx.legacy_stream.capture && ctx.legacy_stream.capture->id == capture_id) return true;
    for (auto& stream : ctx.streams) {
        if (stream->capture && stream->capture->id == capture_id) return true;
    }
    return false;
}

void invalidate_capture_by_id(Context& ctx, uint64_t capture_id, const char* why) {
    for (auto& stream : ctx.streams) {
        if (stream->capture && stream->capture->id == capture_id) invalidate_capture(*stream, why);
    }
}

CUresult refuse_if_capturing(DriverState& s, const char* api) {
    // GLOBAL mode forbids these calls in every thread, THREAD_LOCAL in the capturing thread,
    // RELAXED nowhere.
    bool refused = false;
    for (auto& stream : s.ctx.streams) {
        Capture* capture = stream->capture.get();
        if (capture == nullptr) continue;
        bool covers = capture->mode == CU_STREAM_CAPTURE_MODE_GLOBAL ||
                      (capture->mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
                       capture->thread == std::this_thread::get_id());
        if (covers) {
            capture->invalidated = true;
            refused = true;
        }
    }
    if (!refused) return CUDA_SUCCESS;
    return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                  "%s is not permitted while a stream captures a graph; the capture is invalidated", api);
}

namespace {

Graph* find_graph(Context& ctx, CUgraph handle) {
    auto found = ctx.graphs.find(reinterpret_cast<Graph*>(handle));
    return found == ctx.graphs.end() ? nullptr : found->second.get();
}

GraphExec* find_graph_exec(Context& ctx, CUgraphExec handle) {
    auto found = ctx.graph_execs.find(reinterpret_cast<GraphExec*>(handle));
    return found == ctx.graph_execs.end() ? nullptr : found->second.get();
}

CUresult capture_info(CUstream handle, CUstreamCaptureStatus* status, cuuint64_t* id, CUgraph* graph,
                      const CUgraphNode** dependencies, const CUgraphEdgeData** edge_data, size_t* dependency_count) {
    return api(Need::Context, [&](DriverState& s) {
        Stream* stream;
        if (CUresult e = resolve_stream(s, handle, "cuStreamGetCaptureInfo", &stream)) return e;
        if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
        Capture* capture = stream->capture.get();
        *status = capture == nullptr    ? CU_STREAM_CAPTURE_STATUS_NONE
                  : capture->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                         : CU_STREAM_CAPTURE_STATUS_ACTIVE;
        if (id != nullptr && capture != nullptr) *id = capture->id;
        // The graph under construction is not an object here until cuStreamEndCapture.
        if (graph != nullptr) *graph = nullptr;
        if (dependencies != nullptr) *dependencies = nullptr;
        if (edge_data != nullptr) *edge_data = nullptr;
        if (dependency_count != nullptr) *dependency_count = 0;
        return CUDA_SUCCESS;
    });
}

}  // namespace
}  // namespace kiln_emu::driver

using namespace kiln_emu::driver;

// ---- Capture ----

extern "C" CUresult cuStreamBeginCapture_v2(CUstream handle, CUstreamCaptureMode mode) {
    return api(Need::Context, [&](DriverState& s) {
        Stream* stream;
        if (CUresult e = resolve_stream(s, handle, "cuStreamBeginCapture", &stream)) return e;
        if (stream->legacy) {
            return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: the legacy (NULL) stream cannot capture");
        }
        if (stream->capture) return refuse(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: the stream is already capturing");
        if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
            mode != CU_STREAM_CAPTURE_MODE_RELAXED) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        stream->capture = std::make_unique<Capture>();
        stream->capture->id = s.next_capture_id++;
        stream->capture->mode = mode;
        stream->capture->thread = std::this_thread::get_id();
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuStreamEndCapture(CUstream handle, CUgraph* graph) {
    return api(Need::Context, [&](DriverState& s) {
        Stream* stream;
        if (CUresult e = resolve_stream(s, handle, "cuStreamEndCapture", &stream)) return e;
        if (graph == nullptr) return CUDA_ERROR_INVALID_VALUE;
        if (!stream->capture) return refuse(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: the stream is not capturing");
        if (stream->capture->mode != CU_STREAM_CAPTURE_MODE_RELAXED &&
            stream->capture->thread != std::this_thread::get_id()) {
            return refuse(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,
                          "cuStreamEndCapture: the capture began on another thread");
        }
        std::unique_ptr<Capture> capture = std::move(stream->capture);
        *graph = nullptr;
        // What invalidated it was reported when it happened.
        if (capture->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        auto recorded = std::make_unique<Graph>();
        recorded->nodes = std::move(capture->nodes);
        *graph = reinterpret_cast<CUgraph>(recorded.get());
        s.ctx.graphs.emplace(recorded.get(), std::move(recorded));
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuStreamIsCapturing(CUstream handle, CUstreamCaptureStatus* status) {
    return capture_info(handle, status, nullptr, nullptr, nullptr, nullptr, nullptr);
}

extern "C" CUresult cuStreamGetCaptureInfo_v3(CUstream handle, CUstreamCaptureStatus* status, cuuint64_t* id,
                                              CUgraph* graph, const CUgraphNode** dependencies,
                                              const CUgraphEdgeData** edge_data, size_t* dependency_count) {
    return capture_info(handle, status, id, graph, dependencies, edge_data, dependency_count);
}

#ifndef KILN_EMU_USE_CUDA_H  // older names that cuda.h 13 maps onto _v3
extern "C" CUresult cuStreamGetCaptureInfo_v2(CUstream handle, CUstreamCaptureStatus* status, cuuint64_t* id,
                                              CUgraph* graph, const CUgraphNode** dependencies,
                                              size_t* dependency_count) {
    return capture_info(handle, status, id, graph, dependencies, nullptr, dependency_count);
}

extern "C" CUresult cuStreamGetCaptureInfo(CUstream handle, CUstreamCaptureStatus* status, cuuint64_t* id) {
    return capture_info(handle, status, id, nullptr, nullptr, nullptr, nullptr);
}
#endif

// ---- Graphs ----

extern "C" CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph handle, unsigned long long flags) {
    return api(Need::Context, [&](DriverState& s) {
        Graph* graph = find_graph(s.ctx, handle);
        if (graph == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphInstantiateWithFlags: not a live graph");
        if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
        unsigned long long known = CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH | CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD |
                                   CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH | CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY;
        bool conflicting = (flags & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) &&
                           (flags & CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH);
        if ((flags & ~known) || conflicting) {
            return refuse(CUDA_ERROR_INVALID_VALUE, "cuGraphInstantiateWithFlags: flags 0x%llx", flags);
        }
        auto instance = std::make_unique<GraphExec>();
        instance->nodes = graph->nodes;  // an instance is independent of later changes to the graph
        *exec = reinterpret_cast<CUgraphExec>(instance.get());
        s.ctx.graph_execs.emplace(instance.get(), std::move(instance));
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuGraphLaunch(CUgraphExec handle, CUstream stream_handle) {
    return api(Need::Context, [&](DriverState& s) {
        GraphExec* exec = find_graph_exec(s.ctx, handle);
        if (exec == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphLaunch: not a live graph instance");
        Stream* stream;
        if (CUresult e = resolve_stream(s, stream_handle, "cuGraphLaunch", &stream)) return e;
        for (size_t i = 0; i < exec->nodes.size(); ++i) {
            const Op& node = exec->nodes[i];
            if (node.kind == Op::Kind::Launch && !s.ctx.functions.count(node.function)) {
                return refuse(CUDA_ERROR_INVALID_VALUE, "cuGraphLaunch: node %zu launches a kernel whose module was unloaded", i);
            }
        }
        // Memory the nodes use is checked when each runs: freed memory faults there, as on a GPU.
        for (const Op& node : exec->nodes) {
            Op copy = node;
            if (CUresult e = submit(s, *stream, std::move(copy))) return e;
        }
        return CUDA_SUCCESS;
    });
}

extern "C" CUresult cuGraphUpload(CUgraphExec handle, CUstream stream_handle) {
    return api(Need::Context, [&](DriverState& s) {
        if (find_graph_exec(s.ctx, handle) == nullptr) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphUpload: not a live graph instance");
        Stream* stream;
        return resolve_stream(s, stream_handle, "cuGraphUpload", &stream);
    });
}

extern "C" CUresult cuGraphExecDestroy(CUgraphExec handle) {
    return api(Need::Driver, [&](DriverState& s) {
        if (s.ctx.graph_execs.erase(reinterpret_cast<GraphExec*>(handle)) == 0) {
            return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphExecDestroy: not a live graph instance");
        }
        return s.ctx.sticky;
    });
}

extern "C" CUresult cuGraphDestroy(CUgraph handle) {
    return api(Need::Driver, [&](DriverState& s) {
        if (s.ctx.graphs.erase(reinterpret_cast<Graph*>(handle)) == 0) {
            return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphDestroy: not a live graph");
        }
        return s.ctx.sticky;
    });
}
