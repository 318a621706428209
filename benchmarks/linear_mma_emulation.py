"""Lane-level numpy emulation of linear_mma.cuh linear_task_batch's index math (every warp's
32-column steps, each lane's 16-byte loads of page rows and staged inputs, the m16n8k16 fragments
built from them with k permuted per lane, the warps' sums through the scratch in warp order)
against W @ x: a CPU check of the layout before a GPU runs it.
`python benchmarks/linear_mma_emulation.py` prints each case's relative error (0 up to float rounding:
the operands are bf16 already)."""
import numpy as np

from attention_mma_emulation import bf16, mma

WARPS = 8       # adamk/config.py CONSUMER_WARPS


def task(W_pages, xs, rows, pc, npages, batch, k_len, gated=False):
    """out [batch, rows or rows / 2] from pages [npages][rows][pc] and xs [batch][XS], as the kernel."""
    km, kn = -(-rows // 16), -(-batch // 8)
    kr = 1 << max(0, rows - 1).bit_length()
    acc = np.zeros((WARPS, 32, km, kn, 4), np.float32)
    for p in range(npages):
        page = W_pages[p]
        cols = min(pc, k_len - p * pc)
        for warp in range(WARPS):
            for c0 in range(warp * 32, cols, WARPS * 32):
                A_l, B_l = {}, {}
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    col = c0 + 8 * t
                    has = col < cols
                    a = [[page[16 * m + 8 * h + g, col:col + 8] if has and 16 * m + 8 * h + g < rows else np.zeros(8)
                          for h in range(2)] for m in range(km)]
                    x = [xs[8 * j + g, p * pc + col:p * pc + col + 8] if has and 8 * j + g < batch else np.zeros(8)
                         for j in range(kn)]
                    A_l[lane], B_l[lane] = a, x
                for m in range(km):
                    for j in range(kn):
                        for step in range(2):       # words (x, y), then (z, w): columns 8t + 4 step .. + 3
                            w0, w1 = 4 * step, 4 * step + 2
                            A = [(A_l[ln][m][0][w0:w0 + 2], A_l[ln][m][1][w0:w0 + 2], A_l[ln][m][0][w1:w1 + 2],
                                  A_l[ln][m][1][w1:w1 + 2]) for ln in range(32)]
                            B = [(B_l[ln][j][w0:w0 + 2], B_l[ln][j][w1:w1 + 2]) for ln in range(32)]
                            C = [acc[warp, ln, m, j] for ln in range(32)]
                            D = mma(A, B, C)
                            for ln in range(32):
                                acc[warp, ln, m, j] = D[ln]
    scratch = np.zeros((WARPS, kr, batch), np.float32)
    for warp in range(WARPS):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for m in range(km):
                for j in range(kn):
                    for e in range(4):
                        row, seq = 16 * m + g + 8 * (e // 2), 8 * j + 2 * t + e % 2
                        if row < rows and seq < batch:
                            scratch[warp, row, seq] = acc[warp, lane, m, j, e]
    sums = np.zeros((rows, batch), np.float32)
    for w in range(WARPS):                      # in warp order
        sums = sums + scratch[w, :rows]
    if gated:
        half = rows // 2
        g = sums[:half]
        return ((g / (1 + np.exp(-g))) * sums[half:]).T
    return sums.T


def case(rows, pc, npages, batch, k_len, gated=False, seed=0):
    rng = np.random.default_rng(seed)
    xs_cols = npages * pc
    W = np.zeros((rows, xs_cols), np.float32)
    W[:, :k_len] = bf16(rng.standard_normal((rows, k_len)))
    pages = np.stack([W[:, p * pc:(p + 1) * pc] for p in range(npages)])
    xs = np.zeros((batch, xs_cols), np.float32)
    xs[:, :k_len] = bf16(rng.standard_normal((batch, k_len)))
    got = task(pages, xs, rows, pc, npages, batch, k_len, gated)
    want = (xs.astype(np.float64) @ W.T.astype(np.float64))
    if gated:
        half = rows // 2
        g = want[:, :half]
        want = (g / (1 + np.exp(-g))) * want[:, half:]
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def main():
    cases = [(16, 1024, 2, 4, 2048, False), (16, 136, 1, 3, 136, False), (8, 144, 1, 16, 144, False),
             (32, 512, 1, 16, 512, True), (16, 344, 1, 9, 344, True), (16, 1024, 2, 16, 1800, False)]
    worst = 0.0
    for rows, pc, npages, batch, k_len, gated in cases:
        err = case(rows, pc, npages, batch, k_len, gated)
        worst = max(worst, err)
        print(f"rows {rows:2d} page cols {pc:4d} x {npages} batch {batch:2d} K {k_len:4d}{' gated' if gated else ''}: "
              f"relative error {err:.1e}")
    return worst


if __name__ == "__main__":
    raise SystemExit(0 if main() < 1e-5 else 1)
