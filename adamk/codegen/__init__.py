"""Codegen: schedule-level IR -> CUDA C++ (cuda.py) -> cubin/PTX with NVRTC (nvrtc.py)."""
