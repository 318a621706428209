// mma.cuh — the bf16 tensor-core MMA (mma.sync m16n8k16, sm_80 and later: one source serves sm_89 and
// sm_90) and its operand packing. Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"),
// for lane = 4 * g + t (g = groupID, t = threadID_in_group):
//   A (16 x 16, row-major), a[4]: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                                 a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9];
//   B (16 x 8), b[2]:             b[0] = B[2t, 2t+1][g],    b[1] = B[2t+8, 2t+9][g];
//   C, D (16 x 8, f32), c[4]:     c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1].
// Each pair is packed in a u32, the lower index in the low half.
#pragma once
#include "common.cuh"

namespace adamk {

// d = a b + c.
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

// The bf16 of half `h` (0: low, 1: high) of `lo` and of `hi`, as one pair (`lo`'s in the low half).
__device__ __forceinline__ u32 pair_of_halves(u32 lo, u32 hi, int h) {
  return h == 0 ? __byte_perm(lo, hi, 0x5410) : __byte_perm(lo, hi, 0x7632);
}

}  // namespace adamk
