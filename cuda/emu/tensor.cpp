// The asynchronous-copy and tensor-core instructions of cuda/ptx.cuh on the CPU, each following
// the PTX ISA's description of who holds which element:
// - cp.async: the source is read at issue, the 16 bytes land in shared memory only when
//   cp.async.wait_group retires their commit group (so a read before the wait sees poison);
// - ldmatrix .x4: a warp rendezvous; lane l gets row l/4, columns 2 (l%4), +1 of matrix i
//   (whose rows lanes 8i..8i+7 addressed);
// - mma.sync m16n8k16: a warp rendezvous over the documented A, B and C fragments, products
//   summed in f32 in k order (tensor cores may round differently: tolerances cover it);
// - wgmma m64n128k16: per thread, from shared memory through the descriptors (128-byte swizzle,
//   K-major, the only form kiln uses: others fail loudly), computed at wgmma.wait_group.
#include <cstdio>
#include <cstring>

#include "block.h"
#include "../ptx.cuh"

namespace kiln_emu {

static float element(MmaType type, uint16_t bits) {
    return type == MmaType::F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

// ---------------------------------------------------------------------------------------------
// cp.async

void cp_async16(uint32_t shared, const void* global, int source_bytes) {
    if (shared % 16 != 0) fail("cp.async: shared destination not 16-byte aligned");
    if (reinterpret_cast<uintptr_t>(global) % 16 != 0) fail("cp.async: global source not 16-byte aligned");
    if (source_bytes < 0 || source_bytes > 16) fail("cp.async: source size outside 0..16 bytes");
    EmuThread& thread = *current_thread;
    PendingCopy copy;
    copy.destination = shared_pointer(shared, 16);
    memset(copy.bytes, 0, sizeof copy.bytes);
    memcpy(copy.bytes, global, (size_t)source_bytes);
    copy.group = thread.copy_groups_committed;  // the open group
    thread.copies.push_back(copy);
}

void cp_async_commit() { current_thread->copy_groups_committed++; }

void cp_async_wait(int pending_groups) {
    EmuThread& thread = *current_thread;
    const unsigned committed = thread.copy_groups_committed;
    const unsigned retire_below = committed > (unsigned)pending_groups ? committed - (unsigned)pending_groups : 0;
    size_t kept = 0;
    for (const PendingCopy& copy : thread.copies) {
        if (copy.group < retire_below) {
            memcpy(copy.destination, copy.bytes, 16);
        } else {
            thread.copies[kept++] = copy;
        }
    }
    thread.copies.resize(kept);
}

// ---------------------------------------------------------------------------------------------
// ldmatrix and mma.sync

void ldmatrix_x4(uint32_t fragments[4], uint32_t shared) {
    if (shared % 16 != 0) fail("ldmatrix: row address not 16-byte aligned");
    const unsigned lane = current_thread->lane;
    CollectiveSlot& slot = collective_enter(Collective::Ldmatrix, "ldmatrix", 0xFFFFFFFFu, shared, nullptr, 0);
    for (unsigned i = 0; i < 4; i++) {
        const uint32_t row_address = (uint32_t)slot.values[i * 8 + lane / 4];
        const unsigned char* row = shared_pointer(row_address, 16);
        memcpy(&fragments[i], row + (lane % 4) * 4, 4);
    }
    collective_release(slot);
}

void mma_m16n8k16(MmaType type, float c[4], const uint32_t a[4], const uint32_t b[2]) {
    const unsigned lane = current_thread->lane;
    const uint32_t words[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    CollectiveSlot& slot = collective_enter(Collective::Mma, "mma.sync", 0xFFFFFFFFu, (uint64_t)type, words, 6);
    for (unsigned l = 0; l < WARP; l++) {
        if (slot.values[l] != (uint64_t)type) fail("mma.sync: lanes of one warp use different element types");
    }
    // A (16x16, row): lane 4g + t holds rows g and g + 8, columns 2t, 2t+1 and 2t+8, 2t+9:
    // register (r / 8) + 2 (k / 8), low half for even k.
    auto a_at = [&](unsigned r, unsigned k) {
        const uint32_t word = slot.words[(r % 8) * 4 + (k % 8) / 2][(r / 8) + 2 * (k / 8)];
        return element(type, (uint16_t)(k % 2 ? word >> 16 : word & 0xFFFFu));
    };
    // B (16x8, column): lane 4n + t holds rows (k) 2t, 2t+1 in register 0 and 2t+8, 2t+9 in 1.
    auto b_at = [&](unsigned k, unsigned n) {
        const uint32_t word = slot.words[n * 4 + (k % 8) / 2][4 + k / 8];
        return element(type, (uint16_t)(k % 2 ? word >> 16 : word & 0xFFFFu));
    };
    float out[4];
    for (unsigned i = 0; i < 4; i++) {
        // C and D: lane 4g + t holds rows g (c0, c1) and g + 8 (c2, c3), columns 2t, 2t+1.
        const unsigned row = lane / 4 + 8 * (i / 2), col = 2 * (lane % 4) + (i % 2);
        float sum = c[i];
        for (unsigned k = 0; k < 16; k++) sum = fmaf(a_at(row, k), b_at(k, col), sum);
        out[i] = sum;
    }
    collective_release(slot);
    memcpy(c, out, sizeof out);
}

// ---------------------------------------------------------------------------------------------
// wgmma

void wgmma_fence() {}

void wgmma_m64n128k16(MmaType type, float d[64], uint64_t descriptor_a, uint64_t descriptor_b, bool accumulate) {
    EmuThread& thread = *current_thread;
    if (current_view->block_dim.x * current_view->block_dim.y * current_view->block_dim.z % 128 != 0) {
        fail("wgmma in a block that is not whole warpgroups");
    }
    thread.wgmmas.push_back(PendingWgmma{(int)type, d, descriptor_a, descriptor_b, accumulate, thread.wgmma_groups_committed});
}

void wgmma_commit() { current_thread->wgmma_groups_committed++; }

// Element (row, k) of a K-major operand behind a 128-byte-swizzle descriptor: rows are 128 bytes
// apart inside 8-row atoms, atoms `stride` bytes apart, and the swizzle XORs address bits 4-6
// (the 16-byte chunk) with bits 7-9 (the row within the atom).
static float operand(MmaType type, uint64_t descriptor, unsigned row, unsigned k) {
    const uint32_t start = (uint32_t)(descriptor & 0x3FFFu) << 4;
    const uint32_t stride = (uint32_t)((descriptor >> 32) & 0x3FFFu) << 4;
    const unsigned base_offset = (unsigned)((descriptor >> 49) & 7u), swizzle = (unsigned)(descriptor >> 62);
    if (swizzle != 1 || base_offset != 0) fail("wgmma: only 128-byte-swizzled descriptors with base offset 0 are emulated");
    const uint32_t logical = start + (row / 8) * stride + (row % 8) * 128 + k * 2;
    const uint32_t physical = logical ^ (((logical >> 7) & 7u) << 4);
    uint16_t bits;
    memcpy(&bits, shared_pointer(physical, 2), 2);
    return element(type, bits);
}

static void compute_wgmma(const PendingWgmma& op) {
    const MmaType type = (MmaType)op.type;
    const unsigned in_group = current_thread->linear % 128, warp = in_group / 32, lane = in_group % 32;
    float a[2][16];
    for (unsigned half = 0; half < 2; half++) {
        for (unsigned k = 0; k < 16; k++) a[half][k] = operand(type, op.descriptor_a, 16 * warp + lane / 4 + 8 * half, k);
    }
    for (unsigned j = 0; j < 16; j++) {
        for (unsigned e = 0; e < 2; e++) {
            const unsigned col = 8 * j + 2 * (lane % 4) + e;
            float b[16];
            for (unsigned k = 0; k < 16; k++) b[k] = operand(type, op.descriptor_b, col, k);
            for (unsigned half = 0; half < 2; half++) {
                float& out = op.d[4 * j + 2 * half + e];
                float sum = op.accumulate ? out : 0.0f;
                for (unsigned k = 0; k < 16; k++) sum = fmaf(a[half][k], b[k], sum);
                out = sum;
            }
        }
    }
}

void wgmma_wait(int pending_groups) {
    EmuThread& thread = *current_thread;
    const unsigned committed = thread.wgmma_groups_committed;
    const unsigned retire_below = committed > (unsigned)pending_groups ? committed - (unsigned)pending_groups : 0;
    size_t kept = 0;
    for (const PendingWgmma& op : thread.wgmmas) {
        if (op.group < retire_below) {
            compute_wgmma(op);
        } else {
            thread.wgmmas[kept++] = op;
        }
    }
    thread.wgmmas.resize(kept);
}

}  // namespace kiln_emu
