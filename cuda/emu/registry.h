// Registration of the kernels compiled into the emulator. build.rs generates one translation unit
// per cuda/*.cu that includes the file (inside a namespace of its own, so helper templates with
// the same name in two files stay apart) and registers each of its `extern "C"` kernels:
//   namespace kiln_kernels_gemv { #include "gemv.cu"  KILN_EMU_REGISTER(gemv_m1_f16, 256) }
#pragma once
#include <type_traits>

#include "runtime.h"

namespace kiln_emu {

void register_kernel(const KernelInfo& info);

template <typename Function>
struct KernelSignature;
template <typename Params>
struct KernelSignature<void (*)(Params)> {
    using ParamsType = std::remove_cv_t<Params>;
};

// Calls kernel F with the parameter struct at `params` (every kiln kernel takes one by value).
template <typename Params, void (*F)(Params)>
void invoke_kernel(const void* params) {
    F(*static_cast<const Params*>(params));
}

}  // namespace kiln_emu

// Used inside the file's namespace, after its source, so `kernel` and `max_threads` (which may
// name the file's own constants) resolve there.
#define KILN_EMU_REGISTER(kernel, max_threads)                                                                \
    static const bool kiln_emu_registered_##kernel = (kiln_emu::register_kernel(kiln_emu::KernelInfo{        \
        #kernel, sizeof(kiln_emu::KernelSignature<decltype(&kernel)>::ParamsType), (unsigned)(max_threads), \
        &kiln_emu::invoke_kernel<kiln_emu::KernelSignature<decltype(&kernel)>::ParamsType, &kernel>}), true);
