"""What the session's features share besides the page's state: its Slicer scene and views, the
loaded volume and the comparison. Only ``loading`` sets the volume; the features never hold each
other (they talk through ``signals``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only
    from ...io.volume import Volume
    from .comparison import Comparison


class Workspace:
    def __init__(self, scene, view_manager, layout_manager):
        self.scene = scene
        self.view_manager = view_manager
        self.layout_manager = layout_manager
        self.comparison: Comparison | None = None  # made by the session once the views exist
        self.volume: Volume | None = None  # the loaded volume (also the reference when "compare" is on)
        self.input_node = None  # its volume node in the scene
        self.baseline: set[str] = set()  # the scene's nodes before any volume (the views' own)

    def view(self, tag: str):
        return self.view_manager.get_view(tag)
