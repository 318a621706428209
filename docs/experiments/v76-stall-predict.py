"""The cost model's replay with the stall prefetch of v76-stall-l2.patch (docs/perf.md v76; not part
of the product): a linear task's producer, at the first page whose ring slot is still held when it
reaches it, streams that page and the task's later ones from DRAM into L2 from then on; each fill,
once its slot frees, reads L2 at `l2_share` SM shares. Prints the predicted makespan.

    python docs/experiments/v76-stall-predict.py ARTIFACT GPU L2_SHARE      # L2_SHARE 0: main's replay
"""
import sys, collections
from pathlib import Path
from adamk.calibrate import parse_module
import adamk.search.cost as C
from adamk.targets import get_gpu
path, gpu, share = sys.argv[1], sys.argv[2], float(sys.argv[3])

sched = parse_module((Path(path) / "schedule.mlir").read_text())
model = C.CostModel.for_gpu(get_gpu(gpu))
orig_run, orig_page = C.SmClock.run, C.SmClock._page
STATS = collections.Counter()
def run(self, task, ready=0.0, staged=None):
    self.l2_at, self.task_pages = {}, (len(self.landed), len(self.landed) + task.pages, task) if share and task.pages and task.kind == "linear" else None
    return orig_run(self, task, ready, staged)
def held(self, j):
    return j >= self.depth and (j - self.depth >= len(self.released) or self.released[j - self.depth] > self.issued)
def page(self, nbytes, consumer, loaded=True, share_=1.0):
    m, j = self.model, len(self.landed)
    if self.task_pages and j not in self.l2_at and held(self, j):
        t = max(self.issued, self.stream_free)
        for k in range(j, self.task_pages[1]):
            t += nbytes / m.sm_bytes_per_us
            self.l2_at[k] = t
        self.stream_free = t
        STATS["pages"] += self.task_pages[1] - j; STATS[self.task_pages[2].kind] += 1
    if j not in self.l2_at:
        return orig_page(self, nbytes, consumer, loaded, share_)
    issue = max(self.issued, self.released[j - self.depth] if j >= self.depth else 0.0,
                self.landed[j - self.in_flight] if j >= self.in_flight else 0.0)
    self.issued = issue
    land = max(issue + nbytes / (m.sm_bytes_per_us * share), self.l2_at[j]) + m.dram_latency_us
    self.landed.append(land)
    self.released.append(max(consumer, land) + nbytes / m.smem_bytes_per_us)
    return self.released[-1]
C.SmClock.run = run; C.SmClock._page = page
t = C.predict_timeline(sched, model, 512)
print(dict(STATS), path, gpu, "share", share, "makespan", round(max(e for _, (_, _, e) in t.items()), 1))
