"""Reconstruction away from the caller: a worker process (``python -m XDiffusionLib.worker``),
its file-and-JSON-lines protocol (``messages``) and the launcher that starts, follows and cancels
it from Slicer, a script or the web app (``launcher.WorkerLauncher``)."""
