"""Where the device library lives: csrc/kernels in a checkout, adamk/_csrc/kernels in a wheel."""
from pathlib import Path

_here = Path(__file__).resolve().parent
KERNELS_DIR = next((p for p in (_here.parent / "csrc" / "kernels", _here / "_csrc" / "kernels") if p.is_dir()),
                   _here.parent / "csrc" / "kernels")
