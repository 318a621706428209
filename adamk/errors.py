"""User-facing errors: each prints as one line naming what is wrong."""


class AdamkError(Exception):
    """A problem with the user's input or configuration (the CLI prints it as one line)."""


class FrontendError(AdamkError):
    """The frontend met an op or pattern it cannot place."""


class UnsupportedShapeError(AdamkError):
    """A shape the kernel cannot take."""


class UnsupportedOpError(AdamkError):
    """An op the frontends recognise and the simulator runs, but the device library cannot yet."""


class UnknownGPUError(AdamkError):
    """A GPU name not in the spec table."""


class ScheduleError(AdamkError):
    """A schedule that deadlocks or does not fit."""


class ToolchainError(AdamkError):
    """NVRTC or the driver refused the generated code."""


class KernelError(RuntimeError):
    """The megakernel stopped itself and left a diagnosis in its error record."""


class KernelTimeoutError(KernelError):
    """A spin-wait in the megakernel ran past its timeout (a schedule or runtime bug)."""


class KernelSharedMemoryError(KernelError):
    """A task needed more dynamic shared memory than the launch gave (a model or runtime bug)."""
