# SPDX-License-Identifier: GPL-3.0-or-later
"""The modal plumbing shared by the operators that run a job in a worker thread (3Dfy, Refine).

The operator gathers its inputs into a job on the main thread (`_prepare`), the job runs in a
worker thread, and a 0.1 s modal timer calls the job's step function (`_step`) until it is done,
publishing progress to a window manager property group (never an undo step); Esc (`cancel_keys`)
cancels.  In background mode timers never fire, so operators run blocking (`_run_blocking`).
"""

_REDRAW_SPACES = {"IMAGE_EDITOR", "VIEW_3D"}


def redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in _REDRAW_SPACES:
                area.tag_redraw()


class Sam3DModalJob:
    """Mixin for a bpy Operator that runs a job (`start`, `run_blocking`, `cancel`, `progress`).

    Hooks: `_prepare(context)` -> the job, or None after reporting why; `_step(context, job)`
    -> the job's state ('RUNNING' until done); `_finish(context, state, job)` -> the operator's
    return set.  `job_label` and `job_state_attr` (the window manager's property group) name it.
    """

    job_label = "Job"
    job_state_attr = ""
    cancel_keys = frozenset({"ESC"})

    _timer = None
    _job = None

    # -- hooks ----------------------------------------------------------------------------------
    def _prepare(self, context):
        raise NotImplementedError

    def _step(self, context, job) -> str:
        raise NotImplementedError

    def _finish(self, context, state: str, job) -> set:
        raise NotImplementedError

    # -- blocking path --------------------------------------------------------------------------
    def _run_blocking(self, context) -> set:
        job = self._prepare(context)
        if job is None:
            return {"CANCELLED"}
        job.run_blocking()
        return self._finish(context, self._step(context, job), job)

    # -- asynchronous path ----------------------------------------------------------------------
    def _run_modal(self, context) -> set:
        if not self._start_job(context):
            return {"CANCELLED"}
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _start_job(self, context) -> bool:
        """Gather the inputs, start the worker thread and the polling timer."""
        job = self._prepare(context)
        if job is None:
            return False
        self._job = job
        job.start()
        self._set_state(context, True, 0.0, "Starting")
        self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
        redraw(context)
        return True

    def _poll_worker(self, context):
        """Timer step: run the job's step, publish progress; once it is done, clean up and finish."""
        state = self._step(context, self._job)
        if state == "RUNNING":
            fraction, text = self._job.progress()
            self._set_state(context, True, fraction, text)
            redraw(context)
            return {"RUNNING_MODAL"}
        self._cleanup(context)
        return self._finish(context, state, self._job)

    def modal(self, context, event):
        if event.type in self.cancel_keys and event.value == "PRESS":
            self._job.cancel()
            return self._poll_worker(context)
        if event.type == "TIMER":
            return self._poll_worker(context)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        # Called by Blender when the modal operator is aborted (e.g. a file is loaded).
        if self._job is not None:
            self._job.cancel()
            self._step(context, self._job)
        self._cleanup(context)

    def _cleanup(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        self._set_state(context, False)
        redraw(context)

    def _set_state(self, context, running: bool, progress: float = 0.0, status: str = "") -> None:
        """Progress for the panel's bar and the status bar (window manager data: no undo steps)."""
        progress = min(max(progress, 0.0), 1.0)
        state = getattr(context.window_manager, self.job_state_attr, None)
        if state is not None:
            state.running = running
            state.progress = progress
            state.status = status
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(
                f"{self.job_label} {progress:.0%}: {status}   (Esc: cancel)" if running else None)

