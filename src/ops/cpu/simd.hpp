// Run-time choice of the SIMD width for the CPU kernels: the library is built for baseline x86-64 and only
// the functions that need wider vectors carry target attributes. IMAGETOTEXT_CPU_SIMD=scalar|avx2|avx512
// caps the choice (the tests run every path with it).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define IMAGETOTEXT_X86 1
#else
#define IMAGETOTEXT_X86 0
#endif

namespace imagetotext::ops::cpu {

enum class SimdLevel { scalar, avx2, avx512 };  // ascending, so a cap is a min

// The widest level this CPU has (AVX-512 needs avx512f+avx512bw, AVX2 needs avx2+fma), capped by
// IMAGETOTEXT_CPU_SIMD. The variable is read on every call (~100 ns) so tests can switch paths in one
// process; an unknown value is a c10::ValueError.
SimdLevel simd_level();

}  // namespace imagetotext::ops::cpu
