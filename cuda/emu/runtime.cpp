// The emulator's runtime: runs a grid's blocks on a few OS threads, each block's CUDA threads as
// fibers between synchronisation points, in a chosen order (forward, reverse or seeded random),
// and reports a deadlock, a barrier reached after threads exited, or lanes of a warp meeting at
// different warp-level instructions instead of hanging. Also the kernel registry.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "block.h"
#include "fiber.h"
#include "registry.h"

#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}
#endif
#if defined(__SANITIZE_ADDRESS__)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

namespace kiln_emu {

thread_local const ThreadView* current_view = nullptr;
thread_local Block* current_block = nullptr;
thread_local EmuThread* current_thread = nullptr;

// ---------------------------------------------------------------------------------------------
// Kernel registry (filled by the generated registrations before main or at dlopen).

static std::map<std::string, KernelInfo>& registry() {
    static std::map<std::string, KernelInfo> kernels;
    return kernels;
}

void register_kernel(const KernelInfo& info) { registry()[info.name] = info; }

const KernelInfo* find_kernel(const char* name) {
    auto found = registry().find(name);
    return found == registry().end() ? nullptr : &found->second;
}

// ---------------------------------------------------------------------------------------------
// Schedule.

static std::atomic<int> schedule_mode{-1};
static std::atomic<uint64_t> schedule_seed{1};
static std::atomic<uint64_t> launches{0};

void set_schedule(Schedule schedule, uint64_t seed) {
    schedule_seed.store(seed);
    schedule_mode.store((int)schedule);
}

// KILN_EMU_SCHEDULE=forward|reverse|random[:seed]; random with seed 1 when unset.
static Schedule current_schedule(uint64_t* seed) {
    int mode = schedule_mode.load();
    if (mode < 0) {
        const char* text = getenv("KILN_EMU_SCHEDULE");
        mode = (int)Schedule::Random;
        if (text && strncmp(text, "forward", 7) == 0) mode = (int)Schedule::Forward;
        if (text && strncmp(text, "reverse", 7) == 0) mode = (int)Schedule::Reverse;
        if (text && strncmp(text, "random:", 7) == 0) schedule_seed.store(strtoull(text + 7, nullptr, 10));
        int expected = -1;
        schedule_mode.compare_exchange_strong(expected, mode);
        mode = schedule_mode.load();
    }
    *seed = schedule_seed.load();
    return (Schedule)mode;
}

static uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------------------------
// Sanitizer annotations.

void sync_release(const void* address) {
#if defined(__SANITIZE_THREAD__)
    __tsan_release(const_cast<void*>(address));
#else
    (void)address;
#endif
}

void sync_acquire(const void* address) {
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(const_cast<void*>(address));
#else
    (void)address;
#endif
}

// The runtime's own bookkeeping (barrier counts, warp slots, thread states) is shared by the
// fibers of a block and the scheduler, which ThreadSanitizer sees as threads without
// happens-before between them: it is hidden from it, so only the kernels' own accesses are
// checked. (Ordering between fibers is exactly what the barriers and shuffles establish.)
struct RuntimeSection {
#if defined(__SANITIZE_THREAD__)
    RuntimeSection() {
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    }
    ~RuntimeSection() {
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    }
#endif
};

#if defined(__SANITIZE_ADDRESS__)
static constexpr size_t STACK_BYTES = 512 * 1024;  // instrumented frames are much larger
#else
static constexpr size_t STACK_BYTES = 64 * 1024;
#endif

// The stacks of this OS thread's fibers, kept from block to block, unmapped when it exits.
// ThreadSanitizer's fiber for each stack is kept too: creating them is costly, and the threads of
// consecutive blocks on one OS thread are ordered by the scheduler anyway.
struct StackCache {
    std::vector<FiberStack> stacks;
    std::vector<void*> tsan_fibers;
    ~StackCache() {
        for (FiberStack& stack : stacks) free_stack(stack);
#if defined(__SANITIZE_THREAD__)
        for (void* fiber : tsan_fibers) __tsan_destroy_fiber(fiber);
#endif
    }
};
static thread_local StackCache stack_cache;
#if defined(__SANITIZE_ADDRESS__)
static thread_local const void* scheduler_stack_bottom = nullptr;
static thread_local size_t scheduler_stack_size = 0;
static thread_local void* scheduler_fake_stack = nullptr;
static thread_local void* fiber_fake_stack = nullptr;
#endif

// ---------------------------------------------------------------------------------------------
// Switching between the scheduler and a fiber.

static void switch_to_thread(Block& block, EmuThread& thread) {
    current_thread = &thread;
    current_view = &thread.view;
#if defined(__SANITIZE_ADDRESS__)
    const FiberStack& stack = stack_cache.stacks[thread.linear];
    __sanitizer_start_switch_fiber(&scheduler_fake_stack, stack.bottom(), stack.bytes);
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(thread.tsan_fiber, 1 /* no synchronisation: barriers say where it is */);
#endif
    kiln_emu_switch(&block.scheduler_stack_pointer, thread.stack_pointer);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
    current_thread = nullptr;
    current_view = nullptr;
}

static void switch_to_scheduler(bool finished) {
    Block& block = *current_block;
    EmuThread& thread = *current_thread;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(finished ? nullptr : &fiber_fake_stack, scheduler_stack_bottom, scheduler_stack_size);
#else
    (void)finished;
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(block.scheduler_tsan_fiber, 1);
#endif
    kiln_emu_switch(&thread.stack_pointer, block.scheduler_stack_pointer);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fiber_fake_stack, &scheduler_stack_bottom, &scheduler_stack_size);
#endif
}

static void note_exit(Block& block, EmuThread& thread);

static void fiber_entry() {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
#endif
    Block& block = *current_block;
    sync_acquire(&block);
    block.kernel->invoke(block.params);
    note_exit(block, *current_thread);
    sync_release(&block.exited);
    switch_to_scheduler(true);
    fprintf(stderr, "kiln CUDA emulator: a finished thread was resumed\n");
    abort();
}

[[noreturn]] void fail(const char* message) {
    RuntimeSection section;
    Block* block = current_block;
    EmuThread* thread = current_thread;
    if (!block || !thread) {
        fprintf(stderr, "kiln CUDA emulator: %s\n", message);
        abort();
    }
    if (block->error.empty()) {
        char where[160];
        snprintf(where, sizeof where, " (block (%u, %u, %u), thread (%u, %u, %u))", thread->view.block_idx.x,
                 thread->view.block_idx.y, thread->view.block_idx.z, thread->view.thread_idx.x,
                 thread->view.thread_idx.y, thread->view.thread_idx.z);
        block->error = std::string(message) + where;
    }
    thread->state = EmuThread::State::Blocked;
    thread->waiting_at = "an error";
    switch_to_scheduler(true);
    abort();  // never resumed: the scheduler stops at the first error
}

static void fail_with(const std::string& message) { fail(message.c_str()); }

// ---------------------------------------------------------------------------------------------
// Barriers and warp collectives.

static void yield_blocked(const char* where) {
    current_thread->state = EmuThread::State::Blocked;
    current_thread->waiting_at = where;
}

void block_and_yield(const char* where) {
    RuntimeSection section;
    yield_blocked(where);
    switch_to_scheduler(false);
}

void syncthreads() {
    RuntimeSection section;
    Block& block = *current_block;
    EmuThread& thread = *current_thread;
    if (block.exited > 0) {
        fail_with("__syncthreads() reached after " + std::to_string(block.exited) +
                  " threads of the block exited (undefined on a GPU: some threads never arrive)");
    }
    const char* token = &block.barrier_sync[thread.barriers++ & 1];
    sync_release(token);
    yield_blocked("__syncthreads()");
    if (++block.barrier_arrived == block.threads.size()) {
        block.barrier_arrived = 0;
        for (EmuThread& other : block.threads) other.state = EmuThread::State::Ready;
    }
    switch_to_scheduler(false);
    sync_acquire(token);
}

CollectiveSlot& collective_enter(Collective kind, const char* name, uint32_t mask, uint64_t value,
                                 const uint32_t* words, int word_count) {
    RuntimeSection section;
    Block& block = *current_block;
    EmuThread& thread = *current_thread;
    WarpState& warp = block.warps[thread.warp];
    if (mask != 0xFFFFFFFFu) fail_with(std::string(name) + " with a partial lane mask is not emulated");
    if (warp.lanes != 0xFFFFFFFFu) fail_with(std::string(name) + " with a full mask in a partial warp (blockDim not a multiple of 32)");
    if (warp.exited) fail_with(std::string(name) + " with a full mask after lanes of the warp exited");
    CollectiveSlot& slot = warp.slots[thread.collectives & 1];
    thread.collectives++;
    if (slot.arrived == 0) {
        slot.kind = kind;
        slot.name = name;
        slot.expected = warp.lanes;
        slot.readers = 0;
    } else if (slot.kind != kind) {
        fail_with("lanes of warp " + std::to_string(thread.warp) + " diverged: lane " + std::to_string(thread.lane) +
                  " reached " + name + " while others wait at " + slot.name);
    }
    slot.values[thread.lane] = value;
    for (int i = 0; i < word_count; i++) slot.words[thread.lane][i] = words[i];
    sync_release(&slot);
    yield_blocked(name);
    slot.arrived |= 1u << thread.lane;
    if (slot.arrived == slot.expected) {
        for (unsigned lane = 0; lane < WARP; lane++) {
            block.threads[thread.warp * WARP + lane].state = EmuThread::State::Ready;
        }
    }
    switch_to_scheduler(false);
    sync_acquire(&slot);
    return slot;
}

void collective_release(CollectiveSlot& slot) {
    RuntimeSection section;
    if (++slot.readers == (unsigned)__builtin_popcount(slot.expected)) slot.arrived = 0;
}

void syncwarp(unsigned mask) {
    collective_release(collective_enter(Collective::Syncwarp, "__syncwarp()", mask, 0, nullptr, 0));
}

uint64_t shuffle(unsigned mask, uint64_t bits, int lane, bool xor_lane) {
    const unsigned self = current_thread->lane;
    CollectiveSlot& slot = collective_enter(Collective::Shuffle, "a warp shuffle", mask, bits, nullptr, 0);
    const unsigned source = xor_lane ? (self ^ (unsigned)lane) & 31u : (unsigned)lane & 31u;
    const uint64_t result = slot.values[source];
    collective_release(slot);
    return result;
}

static void note_exit(Block& block, EmuThread& thread) {
    RuntimeSection section;
    if (!thread.copies.empty()) fail("thread exited with cp.async copies that no cp.async.wait_group retired");
    if (!thread.wgmmas.empty()) fail("thread exited with wgmma operations that no wgmma.wait_group retired");
    WarpState& warp = block.warps[thread.warp];
    for (const CollectiveSlot& slot : warp.slots) {
        if (slot.arrived != 0 && !(slot.arrived & (1u << thread.lane)) && slot.arrived != slot.expected) {
            fail_with(std::string("lane exited while its warp waits at ") + slot.name);
        }
    }
    if (block.barrier_arrived > 0) {
        fail_with("thread exited while " + std::to_string(block.barrier_arrived) + " threads wait at __syncthreads()");
    }
    warp.exited |= 1u << thread.lane;
    block.exited++;
    thread.state = EmuThread::State::Done;
}

// ---------------------------------------------------------------------------------------------
// Shared memory: a window per block, shared address 0 at its start. Static shared memory
// (KILN_SHARED) is placed at first use in the first 48 KiB, CUDA's static limit; dynamic shared
// memory follows 16 bytes past that, so code that assumes more alignment than CUDA promises (16
// bytes) shows it. All of it is poisoned with 0xFF (NaN in every float type) at every block
// start, so a read before the data was written or landed shows too.

constexpr size_t STATIC_SHARED_BYTES = 48 * 1024;
constexpr size_t DYNAMIC_SHARED_OFFSET = STATIC_SHARED_BYTES + 16;

unsigned char* dynamic_shared() { return current_block->shared_window + current_block->dynamic_offset; }

void* static_shared(const void* declaration, size_t bytes) {
    RuntimeSection section;
    Block& block = *current_block;
    for (const auto& [site, offset] : block.static_sites) {
        if (site == declaration) return block.shared_window + offset;
    }
    const size_t offset = (block.static_bytes + 15) / 16 * 16;
    if (offset + bytes > STATIC_SHARED_BYTES) fail("static shared memory over 48 KiB");
    block.static_bytes = offset + bytes;
    block.static_sites.emplace_back(declaration, offset);
    return block.shared_window + offset;
}

uint32_t shared_address(const void* pointer) {
    const Block& block = *current_block;
    const unsigned char* p = static_cast<const unsigned char*>(pointer);
    if (p < block.shared_window || p > block.shared_window + block.shared_window_bytes) {
        fail("the shared address of a pointer outside shared memory");
    }
    return (uint32_t)(p - block.shared_window);
}

unsigned char* shared_pointer(uint32_t address, size_t bytes) {
    const Block& block = *current_block;
    const bool in_static = address + bytes <= block.static_bytes;
    const bool in_dynamic = address >= block.dynamic_offset && address + bytes <= block.dynamic_offset + block.dynamic_bytes;
    if (!in_static && !in_dynamic) {
        char message[240];
        snprintf(message, sizeof message,
                 "shared-memory access of %zu bytes at address %u, outside static [0, %zu) and dynamic [%zu, %zu) "
                 "shared memory",
                 bytes, address, block.static_bytes, block.dynamic_offset, block.dynamic_offset + block.dynamic_bytes);
        fail(message);
    }
    return block.shared_window + address;
}

// ---------------------------------------------------------------------------------------------
// Running blocks.

static std::string describe_deadlock(const Block& block) {
    std::map<std::string, unsigned> waits;
    for (const EmuThread& thread : block.threads) {
        if (thread.state == EmuThread::State::Blocked) waits[thread.waiting_at]++;
    }
    std::string text = "deadlock: no thread can run;";
    for (const auto& [where, count] : waits) text += " " + std::to_string(count) + " wait at " + where + ";";
    text += " " + std::to_string(block.exited) + " exited";
    return text;
}

static std::string run_block(const KernelInfo& kernel, const void* params, Dim3 grid, Dim3 block_dim,
                             Dim3 block_index, unsigned dynamic_bytes, Schedule schedule, uint64_t& random_state) {
    RuntimeSection section;
    const unsigned count = block_dim.x * block_dim.y * block_dim.z;
    Block block;
    block.kernel = &kernel;
    block.params = params;
    block.dynamic_offset = DYNAMIC_SHARED_OFFSET;
    block.dynamic_bytes = dynamic_bytes;
    block.shared_window_bytes = DYNAMIC_SHARED_OFFSET + dynamic_bytes;
    void* window = nullptr;
    if (posix_memalign(&window, 4096, block.shared_window_bytes) != 0) return "cannot allocate shared memory";
    block.shared_window = static_cast<unsigned char*>(window);
    memset(block.shared_window, 0xFF, block.shared_window_bytes);
    block.threads.resize(count);
    const unsigned warps = (count + WARP - 1) / WARP;
    block.warps.resize(warps);
    for (unsigned w = 0; w < warps; w++) {
        const unsigned lanes = std::min(WARP, count - w * WARP);
        block.warps[w].lanes = lanes == WARP ? 0xFFFFFFFFu : (1u << lanes) - 1u;
    }
    std::vector<FiberStack>& stacks = stack_cache.stacks;
    while (stacks.size() < count) {
        stacks.push_back(allocate_stack(STACK_BYTES));
#if defined(__SANITIZE_THREAD__)
        stack_cache.tsan_fibers.push_back(__tsan_create_fiber(0));
#endif
    }
    current_block = &block;
#if defined(__SANITIZE_THREAD__)
    block.scheduler_tsan_fiber = __tsan_get_current_fiber();
#endif
    sync_release(&block);
    for (unsigned i = 0; i < count; i++) {
        EmuThread& thread = block.threads[i];
        thread.linear = i;
        thread.barriers = 0;
        thread.warp = i / WARP;
        thread.lane = i % WARP;
        thread.view.thread_idx = {i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
        thread.view.block_idx = {block_index.x, block_index.y, block_index.z};
        thread.view.block_dim = {block_dim.x, block_dim.y, block_dim.z};
        thread.view.grid_dim = {grid.x, grid.y, grid.z};
        thread.stack_pointer = prepare_fiber(stacks[i], fiber_entry);
#if defined(__SANITIZE_THREAD__)
        thread.tsan_fiber = stack_cache.tsan_fibers[i];
#endif
    }

    std::vector<unsigned> order;
    order.reserve(count);
    while (block.error.empty()) {
        order.clear();
        bool all_done = true;
        for (const EmuThread& thread : block.threads) {
            if (thread.state == EmuThread::State::Ready) order.push_back(thread.linear);
            all_done = all_done && thread.state == EmuThread::State::Done;
        }
        if (all_done) break;
        if (order.empty()) {
            block.error = describe_deadlock(block);
            break;
        }
        if (schedule == Schedule::Reverse) std::reverse(order.begin(), order.end());
        if (schedule == Schedule::Random) {
            for (size_t i = order.size(); i > 1; i--) std::swap(order[i - 1], order[splitmix64(random_state) % i]);
        }
        for (unsigned i : order) {
            if (!block.error.empty()) break;
            if (block.threads[i].state == EmuThread::State::Ready) switch_to_thread(block, block.threads[i]);
        }
    }
    sync_acquire(&block.exited);
    current_block = nullptr;
    free(window);
    return block.error;
}

// OS threads that run blocks beside the launching thread, kept for the whole process (each keeps
// its fiber stacks from launch to launch). KILN_EMU_THREADS sets how many threads run blocks in
// all (default: one per core).
class WorkerPool {
  public:
    static WorkerPool& get() {
        static WorkerPool* pool = new WorkerPool();  // never destroyed: its threads wait forever
        return *pool;
    }

    // Runs `work` on every pool thread and the calling thread; returns when all have finished.
    void run(std::function<void()>& work) {
        std::lock_guard<std::mutex> one_grid_at_a_time(run_mutex_);  // launches from several host threads
        std::unique_lock<std::mutex> lock(mutex_);
        job_ = &work;
        finished_ = 0;
        generation_++;
        wake_.notify_all();
        lock.unlock();
        work();
        lock.lock();
        done_.wait(lock, [&] { return finished_ == threads_.size(); });
        job_ = nullptr;
    }

  private:
    WorkerPool() {
        unsigned total = std::thread::hardware_concurrency();
        if (const char* text = getenv("KILN_EMU_THREADS")) total = (unsigned)atoi(text);
        for (unsigned i = 1; i < std::max(total, 1u); i++) threads_.emplace_back([this] { loop(); });
    }

    void loop() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        while (true) {
            wake_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            std::function<void()>* job = job_;
            lock.unlock();
            (*job)();
            lock.lock();
            if (++finished_ == threads_.size()) done_.notify_all();
        }
    }

    std::mutex run_mutex_, mutex_;
    std::condition_variable wake_, done_;
    std::function<void()>* job_ = nullptr;
    uint64_t generation_ = 0;
    size_t finished_ = 0;
    std::vector<std::thread> threads_;
};

std::string run_grid(const KernelInfo& kernel, Dim3 grid, Dim3 block, unsigned dynamic_shared_bytes,
                     const void* params) {
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) return "a block of " + std::to_string(threads) + " threads";
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "an empty grid";
    // The kernel runs from a private copy: CUDA copies parameters at launch.
    std::vector<uint64_t> params_copy((kernel.params_bytes + 7) / 8);
    memcpy(params_copy.data(), params, kernel.params_bytes);
    uint64_t seed = 0;
    const Schedule schedule = current_schedule(&seed);
    const uint64_t launch = launches.fetch_add(1);
    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;

    std::atomic<uint64_t> next{0};
    std::mutex error_lock;
    std::string first_error;
    std::function<void()> work = [&]() {
        for (uint64_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) {
            const Dim3 index{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y), (unsigned)(b / ((uint64_t)grid.x * grid.y))};
            uint64_t random_state = seed ^ (launch * 0x9E3779B97F4A7C15ull) ^ (b << 20);
            std::string error = run_block(kernel, params_copy.data(), grid, block, index, dynamic_shared_bytes, schedule, random_state);
            if (!error.empty()) {
                std::lock_guard<std::mutex> guard(error_lock);
                if (first_error.empty()) first_error = kernel.name + std::string(": ") + error;
                next.store(blocks);
            }
        }
    };
    WorkerPool::get().run(work);
    return first_error;
}

}  // namespace kiln_emu
