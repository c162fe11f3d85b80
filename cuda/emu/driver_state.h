// Internal to the driver stand-in (driver*.cpp): the emulated device's one context, the objects
// it owns, and the helpers every exported cu* function goes through.
//
// One mutex serialises all calls from all threads. Queued work runs on the thread that reaches a
// synchronisation point, while that thread holds the mutex (run_grid spreads a kernel's blocks
// over its own threads, which never call back into the driver), so the device never runs work
// "in the background": what a host sees is one legal CUDA schedule, chosen as late as possible.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "driver_api.h"
#include "runtime.h"

namespace kiln_emu::driver {

using Clock = std::chrono::steady_clock;

// The emulated device (the brief of cuda/emu: an H100- or A100-like part with few SMs).
constexpr size_t kTotalMemoryBytes = size_t(16) << 30;
constexpr int kMultiprocessors = 8;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultSharedBytes = 48 * 1024;  // without opting in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_...)
constexpr size_t kDeviceAlignment = 256;        // cuMemAlloc's guarantee
constexpr size_t kPinnedAlignment = 4096;       // pinned memory is page-locked whole pages

struct Module;

struct Function {
    const KernelInfo* kernel = nullptr;
    Module* module = nullptr;
    int max_dynamic_shared_bytes = kDefaultSharedBytes;
    int shared_carveout = -1;
};

struct Module {
    std::set<std::string> kernel_names;                 // found in the image and known to the runtime
    std::map<std::string, std::unique_ptr<Function>> functions;  // the ones asked for, by name
};

struct Stream;

struct Event {
    unsigned flags = 0;
    uint64_t recorded = 0;      // records made outside a capture
    uint64_t completed = 0;     // the latest of them the queue has reached
    Stream* stream = nullptr;   // the stream holding the latest record
    Clock::time_point time;     // when the queue reached the latest record
    uint64_t capture_id = 0;    // nonzero while its latest record went into that capture
    bool query_deferred = false;
};

// Memory an operation reads or writes, as the driver saw it at the call.
enum class Memory { Device, Pinned, Pageable, Staged };

// One unit of stream work; a captured graph's nodes are the same records.
struct Op {
    enum class Kind { Launch, Copy, Memset, RecordEvent, WaitEvent };
    Op(Kind kind, const char* api) : kind(kind), api(api) {}

    Kind kind;
    const char* api;  // the call that made it, for messages

    // Launch.
    Function* function = nullptr;
    Dim3 grid, block;
    unsigned shared_bytes = 0;
    // Launch: the params struct, copied at the call (as CUDA does). Copy from pageable host
    // memory: the source bytes, staged at the call (as CUDA does).
    std::vector<unsigned char> bytes;

    // Copy and Memset: `count` bytes (Copy) or elements of `element_bytes` (Memset).
    uintptr_t dst = 0, src = 0;
    Memory dst_memory = Memory::Device, src_memory = Memory::Device;
    size_t count = 0;
    uint32_t value = 0;
    unsigned element_bytes = 1;

    // RecordEvent and WaitEvent: the event, which record of it, and (WaitEvent) the stream
    // holding that record.
    std::shared_ptr<Event> event;
    uint64_t epoch = 0;
    Stream* source = nullptr;
};

struct Capture {
    uint64_t id = 0;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    std::thread::id thread;
    bool invalidated = false;
    std::vector<Op> nodes;  // one stream: a chain, in order
};

struct Stream {
    bool legacy = false;        // the NULL stream
    bool non_blocking = false;  // exempt from the legacy stream's implicit synchronisation
    std::deque<Op> queue;
    std::unique_ptr<Capture> capture;
    bool query_deferred = false;
};

struct Graph {
    std::vector<Op> nodes;
};

struct GraphExec {
    std::vector<Op> nodes;
};

struct Allocation {
    size_t bytes;
    bool pinned;  // cuMemHostAlloc (host memory the device can address) rather than cuMemAlloc
};

// The primary context of device 0, the only context there is.
struct Context {
    int retained = 0;
    bool live = false;  // retained at least once since the last reset
    CUresult sticky = CUDA_SUCCESS;
    std::map<uintptr_t, Allocation> allocations;  // by base address
    size_t device_bytes = 0;
    Stream legacy_stream;
    std::vector<std::unique_ptr<Stream>> streams;  // creation order: context-wide syncs run them so
    std::map<Event*, std::shared_ptr<Event>> events;
    std::map<Module*, std::unique_ptr<Module>> modules;
    std::set<Function*> functions;  // of loaded modules
    std::map<Graph*, std::unique_ptr<Graph>> graphs;
    std::map<GraphExec*, std::unique_ptr<GraphExec>> graph_execs;
};

struct DriverState {
    std::mutex mutex;
    bool initialized = false;
    int cc_major = 9, cc_minor = 0;
    int shared_optin_bytes = 232448;  // per block, after opting in: 227 KiB at 9.0, 163 KiB at 8.0
    int shared_per_sm_bytes = 233472;
    uint64_t next_capture_id = 1;
    Context ctx;
};

DriverState& state();
extern thread_local Context* current_context;

// Prints "kiln CUDA emulator: <message>" on stderr and returns `code`: misuse gets a reason, not
// only a number.
CUresult refuse(CUresult code, const char* format, ...) __attribute__((format(printf, 2, 3)));

// A device fault while running queued work: the context fails with `code` for good (every later
// call returns it, as CUDA's sticky errors do), the first message is printed, and work still
// queued is dropped.
void fault(CUresult code, const std::string& message);

// What an exported function needs before its body runs: an initialised driver; a live context
// (calls on objects, which name their context); a live context current on this thread.
enum class Need { Driver, Context, CurrentContext };

// Runs `body` under the driver's mutex once `need` holds; the context's sticky error wins over
// the body. No exception leaves: a C caller (cudarc) cannot unwind through us.
template <class Body>
CUresult api(Need need, Body&& body) noexcept {
    try {
        DriverState& s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        if (!s.initialized) return CUDA_ERROR_NOT_INITIALIZED;
        if (need == Need::CurrentContext && current_context == nullptr) {
            return refuse(CUDA_ERROR_INVALID_CONTEXT, "no context is current on this thread (cuCtxSetCurrent)");
        }
        if (need != Need::Driver && !s.ctx.live) {
            return refuse(CUDA_ERROR_INVALID_CONTEXT, "the primary context is not retained (destroyed?)");
        }
        if (need != Need::Driver && s.ctx.sticky != CUDA_SUCCESS) return s.ctx.sticky;
        return body(s);
    } catch (const std::bad_alloc&) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    } catch (...) {
        return CUDA_ERROR_UNKNOWN;
    }
}

// Handles: the object's address, valid while the context lists it.
Stream* find_stream(Context& ctx, CUstream handle);  // the legacy stream for NULL and its aliases
bool stream_is_live(Context& ctx, const Stream* stream);
// The stream an API call names, or the error to return (the NULL stream needs a current context).
CUresult resolve_stream(DriverState& s, CUstream handle, const char* api, Stream** stream);
Event* find_event(Context& ctx, CUevent handle);
Function* find_function(Context& ctx, CUfunction handle);

// Memory (driver_memory.cpp). The allocation holding all of [address, address + bytes), or null.
const Allocation* allocation_holding(const Context& ctx, uintptr_t address, size_t bytes);
// Whether [address, address + bytes) touches any allocation of the given kind.
bool overlaps_allocation(const Context& ctx, uintptr_t address, size_t bytes, bool pinned);
void free_all_memory(Context& ctx);

// Queues (driver_stream.cpp).
CUresult submit(DriverState& s, Stream& stream, Op&& op);  // into the capture or the queue
void run_one(DriverState& s, Stream& stream);
void run_all(DriverState& s, Stream& stream);
void run_legacy_and_blocking(DriverState& s);  // what the legacy stream's implicit sync waits for
void run_context(DriverState& s);              // every queue: cuCtxSynchronize
CUresult execute(DriverState& s, Op& op);      // not via a queue: synchronous copies and memsets

// Capture (driver_graph.cpp).
// Calls CUDA forbids while a capture is in progress in a mode that covers this thread
// (cuMemAlloc, cuCtxSynchronize, synchronous copies...): invalidates those captures and returns
// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; CUDA_SUCCESS when the call may go ahead.
CUresult refuse_if_capturing(DriverState& s, const char* api);
void invalidate_capture(Stream& stream, const char* why);
bool capture_is_active(const Context& ctx, uint64_t capture_id);
void invalidate_capture_by_id(Context& ctx, uint64_t capture_id, const char* why);

// Drops every object and allocation of the context (primary context released or reset).
void destroy_context_objects(Context& ctx);

}  // namespace kiln_emu::driver
