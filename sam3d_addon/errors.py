"""User-facing errors.

Every failure a user can cause (bad image, bad mask, missing model, no CUDA) is raised as a
`Sam3DError` whose message is one line that says what is wrong and what to do. The CLI prints it
to stderr and exits non-zero; operators show it with `self.report({'ERROR'}, ...)`.
"""


class Sam3DError(Exception):
    """An error whose message is meant for the user, as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(Sam3DError):
    """The image or a mask cannot be used."""


class ModelError(Sam3DError):
    """The model files are missing, corrupt, or of another contract version."""


class DeviceError(Sam3DError):
    """The requested device cannot be used."""


class Cancelled(Sam3DError):
    """The user cancelled the job; nothing was changed."""

    def __init__(self, message: str = "Cancelled; nothing was changed."):
        super().__init__(message)
