"""Lane-level numpy emulation of attention.cuh attention_rows_mma's index math (the PTX m16n8k16 fragment
layouts, 32 lanes by hand) against a direct softmax attention: a CPU check of the layout before a GPU
runs it. `python benchmarks/attention_mma_emulation.py` prints each case's relative error (bf16 q and p)."""
import numpy as np
rng = np.random.default_rng(0)

def bf16(x):  # round to nearest even
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return (u.astype(np.uint32) << 16).view(np.float32)

def mma(A_lanes, B_lanes, C_lanes):
    """Reassemble A (16x16), B (16x8), C (16x8) from lane fragments, D = A B + C, scatter back."""
    A = np.zeros((16, 16), np.float32); B = np.zeros((16, 8), np.float32); C = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        a = A_lanes[lane]  # 4 pairs
        A[g, 2*t:2*t+2] = a[0]; A[g+8, 2*t:2*t+2] = a[1]; A[g, 2*t+8:2*t+10] = a[2]; A[g+8, 2*t+8:2*t+10] = a[3]
        b = B_lanes[lane]
        B[2*t:2*t+2, g] = b[0]; B[2*t+8:2*t+10, g] = b[1]
        c = C_lanes[lane]
        C[g, 2*t:2*t+2] = c[0:2]; C[g+8, 2*t:2*t+2] = c[2:4]
    D = A.astype(np.float64) @ B.astype(np.float64) + C
    out = []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        out.append(np.array([D[g, 2*t], D[g, 2*t+1], D[g+8, 2*t], D[g+8, 2*t+1]], np.float32))
    return out

def warp_state(HD, P, q, K, V, valid):
    """One warp over rows 0..valid-1 of K/V ([rows, HD]) in 16-row tiles: (acc [P, HD], m [P], l [P])."""
    kChunks, kTiles, kQuarter, kEighth = HD // 16, HD // 8, HD // 4, HD // 8
    qa = [[None] * kChunks for _ in range(32)]
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for c in range(kChunks):
            base = t * kQuarter + 4 * c
            qa[lane][c] = (bf16(q[g, base:base+2]) if g < P else np.zeros(2), bf16(q[g, base+2:base+4]) if g < P else np.zeros(2))
    m = np.full(32, -1e30, np.float32); l = np.zeros(32, np.float32); o = np.zeros((32, kTiles, 4), np.float32)
    for r0 in range(0, valid, 16):
        sc = [[np.zeros(4, np.float32) for _ in range(32)] for _ in range(2)]
        for h in range(2):
            for c in range(kChunks):
                A = [(qa[ln][c][0], np.zeros(2), qa[ln][c][1], np.zeros(2)) for ln in range(32)]
                Bl = []
                for ln in range(32):
                    g, t = ln // 4, ln % 4
                    r = r0 + 8 * h + g
                    row = K[r] if r < K.shape[0] else np.full(HD, np.nan)
                    kw = row[t * kQuarter:(t + 1) * kQuarter]
                    Bl.append((kw[4*c:4*c+2], kw[4*c+2:4*c+4]))
                sc[h] = mma(A, Bl, sc[h])
        pas, rowsets = [], []
        for ln in range(32):
            g, t = ln // 4, ln % 4
            rows = [r0 + 2*t, r0 + 2*t + 1, r0 + 8 + 2*t, r0 + 9 + 2*t]
            sv = np.array([sc[0][ln][0], sc[0][ln][1], sc[1][ln][0], sc[1][ln][1]], np.float32)
            sv = np.where(np.array(rows) < valid, sv, -np.inf)
            rowsets.append((rows, sv))
        mts = [max(-1e30, rowsets[ln][1].max()) for ln in range(32)]
        mts = [max(mts[(ln // 4) * 4 + i] for i in range(4)) for ln in range(32)]   # shfl xor 1, 2
        for ln in range(32):
            mn = max(m[ln], mts[ln]); corr = np.exp2(m[ln] - mn)
            p = bf16(np.exp2(rowsets[ln][1] - mn))       # as the MMA takes them
            l[ln] = l[ln] * corr + p.sum(); m[ln] = mn
            o[ln, :, 0:2] *= corr
            pas.append((p[0:2], np.zeros(2), p[2:4], np.zeros(2)))
        for c in range(kTiles):
            Bl = []
            for ln in range(32):
                g, t = ln // 4, ln % 4
                vals = []
                for r in (r0 + 2*t, r0 + 2*t + 1, r0 + 8 + 2*t, r0 + 9 + 2*t):
                    vals.append(V[r, g * kEighth + c] if r < valid else 0.0)
                Bl.append((np.array(vals[0:2]), np.array(vals[2:4])))
            res = mma(pas, Bl, [o[ln, c] for ln in range(32)])
            for ln in range(32):
                o[ln, c] = res[ln]
    # l across the group
    l = np.array([sum(l[(ln // 4) * 4 + i] for i in range(4)) for ln in range(32)], np.float32)
    acc = np.zeros((P, HD), np.float32); ms = np.zeros(P); ls = np.zeros(P)
    for ln in range(32):
        g, t = ln // 4, ln % 4
        if g >= P: continue
        for c in range(kTiles):
            acc[g, (2*t) * kEighth + c] = o[ln, c, 0]
            acc[g, (2*t + 1) * kEighth + c] = o[ln, c, 1]
        ms[g], ls[g] = m[ln], l[ln]
    return acc, ms, ls

def main():
    for HD, P, valid in ((64, 4, 128), (64, 3, 37), (32, 4, 16), (128, 2, 50), (64, 1, 1)):
        q = rng.standard_normal((P, HD)).astype(np.float32) * 0.3
        K = bf16(rng.standard_normal((128, HD))); V = bf16(rng.standard_normal((128, HD)))
        acc, m, l = warp_state(HD, P, q, K, V, valid)
        s = (q.astype(np.float64) @ K[:valid].T)            # base-2 scores (q pre-scaled)
        mm = s.max(1); p = np.exp2(s - mm[:, None])
        ref = p @ V[:valid]
        got = acc * np.exp2(m - mm)[:, None]
        lref = p.sum(1); lgot = l * np.exp2(m - mm)
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        print(HD, P, valid, "acc rel err", f"{err:.2e}", "l rel err", f"{np.abs(lgot - lref).max() / lref.max():.2e}")
        assert err < 1e-2 and np.abs(lgot - lref).max() / lref.max() < 1e-2
    print("ok")


if __name__ == "__main__":
    main()
