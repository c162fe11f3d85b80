// Inside the emulator: one running thread block. Its CUDA threads are fibers on one OS thread;
// the scheduler (runtime.cpp) resumes the runnable ones in the chosen order after every
// synchronisation point, and each warp-level instruction is a rendezvous of the warp's lanes.
// Shared by runtime.cpp (scheduling, barriers, shuffles) and tensor.cpp (cp.async, ldmatrix,
// mma, wgmma).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cuda_emu.h"
#include "runtime.h"

namespace kiln_emu {

constexpr unsigned WARP = 32;

// A cp.async copy in flight: the source bytes as read at issue, landing at its group's wait.
struct PendingCopy {
    unsigned char* destination;
    unsigned char bytes[16];
    unsigned group;  // index of the commit group it belongs to
};

// A wgmma in flight: computed into `d` when its group is waited for.
struct PendingWgmma {
    int type;
    float* d;
    uint64_t descriptor_a, descriptor_b;
    bool accumulate;
    unsigned group;
};

struct EmuThread {
    ThreadView view;
    unsigned linear = 0, warp = 0, lane = 0;
    enum class State { Ready, Blocked, Done } state = State::Ready;
    const char* waiting_at = "";  // for deadlock reports
    void* stack_pointer = nullptr;
    void* tsan_fiber = nullptr;
    // cp.async: copies not yet landed, the open group's index, groups retired so far.
    std::vector<PendingCopy> copies;
    unsigned copy_groups_committed = 0;
    // wgmma: operations not yet computed, and committed groups.
    std::vector<PendingWgmma> wgmmas;
    unsigned wgmma_groups_committed = 0;
    // Warp collectives this lane has entered (matches lanes' n-th collectives with each other).
    uint64_t collectives = 0;
    // __syncthreads() this thread has passed (which of the block's two barrier sync tokens).
    uint64_t barriers = 0;
};

// The kinds of warp-level rendezvous; lanes meeting at different kinds is divergence.
enum class Collective : int { Syncwarp, Shuffle, Ldmatrix, Mma };

// One warp-level instruction in progress: what each lane brought.
struct CollectiveSlot {
    Collective kind = Collective::Syncwarp;
    uint32_t arrived = 0;  // lanes that deposited
    uint32_t expected = 0;
    unsigned readers = 0;  // lanes that took their result (the slot is reused when all have)
    uint64_t values[WARP];
    uint32_t words[WARP][6];
    const char* name = "";
};

struct WarpState {
    CollectiveSlot slots[2];  // a lane can be at most one collective ahead of another
    uint32_t exited = 0;
    uint32_t lanes = 0;  // mask of the lanes that exist (a last partial warp has fewer)
};

struct Block {
    const KernelInfo* kernel = nullptr;
    const void* params = nullptr;
    std::vector<EmuThread> threads;
    std::vector<WarpState> warps;
    unsigned barrier_arrived = 0;
    // ThreadSanitizer sync tokens of alternate barriers: a thread resumed late from barrier n
    // must not acquire what a faster thread released on arriving at barrier n + 1.
    char barrier_sync[2] = {0, 0};
    unsigned exited = 0;
    unsigned char* shared_window = nullptr;  // shared address 0
    size_t shared_window_bytes = 0;
    size_t static_bytes = 0;  // static shared memory placed so far
    std::vector<std::pair<const void*, size_t>> static_sites;  // declaration -> offset
    size_t dynamic_offset = 0, dynamic_bytes = 0;
    void* scheduler_stack_pointer = nullptr;
    void* scheduler_tsan_fiber = nullptr;
    std::string error;
};

// The block and thread the running fiber belongs to.
extern thread_local Block* current_block;
extern thread_local EmuThread* current_thread;

// Blocks the running thread until `ready` is set again by another thread of the block; the
// scheduler then resumes it in schedule order. `where` names the wait in deadlock reports.
void block_and_yield(const char* where);

// Enters the warp's next collective: deposits this lane's `value` / `words`, waits for every
// lane of `mask`, and returns the slot holding everybody's deposits (valid until release).
CollectiveSlot& collective_enter(Collective kind, const char* name, uint32_t mask, uint64_t value,
                                 const uint32_t* words, int word_count);
void collective_release(CollectiveSlot& slot);

// ThreadSanitizer's view of the rendezvous: fibers switch without creating happens-before, so
// every synchronisation point releases on arrival and acquires on departure.
void sync_release(const void* address);
void sync_acquire(const void* address);

}  // namespace kiln_emu
