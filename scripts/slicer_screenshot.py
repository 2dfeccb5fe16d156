"""The Extensions Index screenshot: the module's comparison, made with the shipped model.

    .venv/bin/python scripts/slicer_screenshot.py            # writes Resources/Screenshots/comparison.png

What it shows: the XDiffusion module's result layout (real | generated | difference, linked axial
views) for the demo's held-out real T1 (``kmeans_t1``), reconstructed from 5 axial input slices
(chosen as the evaluation chooses them) with the shipped model at the panel's default settings,
on an axial slice that is not an input (the middle of the widest gap). It runs the module's own
scene logic (``XDiffusionLib.slicer.reconstruction.SceneReconstruction`` with the worker process,
``layout.apply_to_scene``); each view is a real Slicer slice view (MRML slice logic and displayable
managers from trame-slicer[standalone]) rendered offscreen through VTK. It is not a capture of
the Qt application: the panel is not in the picture. The caption names the model by its weights'
SHA-256, so a screenshot always says which weights made it: re-run this after the shipped weights
change.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from XDiffusionLib.data.samples import SAMPLES, sample_path  # noqa: E402 - needs the checkout on sys.path
from XDiffusionLib.errors import XDiffusionError  # noqa: E402
from XDiffusionLib.io import read_volume  # noqa: E402
from XDiffusionLib.settings import DEFAULTS  # noqa: E402
from XDiffusionLib.slicer.layout import ORIENTATION, apply_to_scene  # noqa: E402
from XDiffusionLib.worker.launcher import DONE, WorkerLauncher  # noqa: E402
from XDiffusionLib.worker.messages import JobSettings  # noqa: E402

DEFAULT_OUT = REPO / "Resources" / "Screenshots" / "comparison.png"
# The panel's defaults: its parameter node (XDiffusion/XDiffusion.py) takes them from settings.DEFAULTS.
PANEL_DEFAULTS = {name: getattr(DEFAULTS, name) for name in ("views", "steps", "sampler", "guidance", "samples", "seed")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Render the XDiffusion comparison layout for the Extensions Index.")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"PNG to write (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--model", metavar="DIR", help="model folder (default: the shipped weights)")
    parser.add_argument("--sample", default="kmeans_t1", help="shipped held-out sample (default kmeans_t1)")
    parser.add_argument("--k", type=int, default=5, help="axial input slices (default 5)")
    parser.add_argument("--views", type=int, default=PANEL_DEFAULTS["views"])
    parser.add_argument("--steps", type=int, default=PANEL_DEFAULTS["steps"])
    parser.add_argument("--size", type=int, default=360, help="pixels per view, square (default 360)")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def reconstruct(scene, args):
    """The module's run on ``scene``: input node, reference = input, no overlay; returns (input node, result)."""
    # Slicer's scene (vtk), SimpleITK and scipy: loaded for a screenshot, not when a test reads PANEL_DEFAULTS
    from XDiffusionLib.evaluation.protocol import choose_indices
    from XDiffusionLib.slicer import nodes
    from XDiffusionLib.slicer.reconstruction import SceneReconstruction
    from XDiffusionLib.transforms.orientation import to_canonical

    if args.sample not in SAMPLES or SAMPLES[args.sample].role != "heldout":
        raise XDiffusionError(f"sample {args.sample!r} is not a held-out sample: the model may have seen it")
    volume = read_volume(sample_path(args.sample))
    indices = tuple(int(i) for i in choose_indices(to_canonical(volume)[0].array, "axial", args.k))
    node = nodes.add_volume_node(scene, volume, args.sample)
    options = dict(PANEL_DEFAULTS, views=args.views, steps=args.steps, device=args.device)
    run = SceneReconstruction(scene, node, JobSettings("axial", indices, args.model, options), reference_node=node,
                              overlay=None, launcher=WorkerLauncher("subprocess")).start()
    last = None
    while not run.job.finished:
        run.wait(1.0)
        line = f"{100 * run.fraction:5.1f}% {run.message}"
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
    if run.state != DONE:
        raise XDiffusionError(f"the reconstruction {run.state}: {run.error}")
    return node, run.finish(), indices


def render_views(app, result, node, indices, size: int) -> tuple[list[np.ndarray], int]:
    """Each view of the result's comparison layout as an RGB array, and the generated slice shown."""
    # vtk, trame-slicer and SimpleITK, as in reconstruct
    import vtk
    from trame_slicer.views import ViewLayoutDefinition, ViewProps, ViewType
    from vtk.util.numpy_support import vtk_to_numpy

    from XDiffusionLib.slicer.nodes import grid_from_node
    from XDiffusionLib.slicer.slices import canonical_depth, ras_point_of_slice

    layout = result.layout
    views = [app.view_manager.create_view(ViewLayoutDefinition(
        singleton_tag=spec.name, view_type=ViewType.SLICE_VIEW,
        properties=ViewProps(orientation=ORIENTATION[layout.plane], label=spec.label, color=spec.color,
                             group=layout.view_group))) for spec in layout.views]
    apply_to_scene(app.scene, layout)
    grid = grid_from_node(node)
    ordered = sorted(indices)
    if len(ordered) > 1:  # the middle of the widest gap between two inputs
        shown = max((b - a, (a + b) // 2) for a, b in zip(ordered, ordered[1:]))[1]
    else:
        shown = min(ordered[0] + 8, canonical_depth(grid, layout.plane) - 1)
    point = ras_point_of_slice(grid, layout.plane, shown)
    for view in views:
        view.render_window().SetSize(size, size)
        view.fit_view_to_content()
        view.get_view_node().JumpSliceByOffsetting(*point)
        view.render()  # the first render builds each view's pipeline
    images = []
    for view in views:
        window = view.render_window()
        view.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
        images.append(np.ascontiguousarray(pixels))
    return images, shown


def compose(images: list[np.ndarray], layout, caption: list[str]):
    """The views side by side under their titles (in the views' colours), a caption below."""
    size = images[0].shape[0]
    gap, header, line = 4, 30, 20
    font = ImageFont.load_default(size=17)
    small = ImageFont.load_default(size=14)
    width = len(images) * size + (len(images) - 1) * gap
    canvas = Image.new("RGB", (width, header + size + 10 + line * len(caption)), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    for n, (image, spec) in enumerate(zip(images, layout.views)):
        left = n * (size + gap)
        draw.rectangle([left, 0, left + size - 1, header - 5], fill=spec.color)
        draw.text((left + 8, 5), f"{spec.label}  {spec.title}", fill=(255, 255, 255), font=font)
        canvas.paste(Image.fromarray(image), (left, header))
    for n, text in enumerate(caption):
        draw.text((8, header + size + 6 + n * line), text, fill=(225, 225, 225), font=small)
    return canvas


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # trame-slicer, Slicer's scene and SimpleITK, as in reconstruct
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory

    from XDiffusionLib.slicer.export import describe_model
    from XDiffusionLib.slicer.request_checks import check_model_dir

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise XDiffusionError(f"{out}: the screenshot is written as PNG; give a .png file name")
    model = describe_model(str(check_model_dir(args.model)))
    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    node, result, indices = reconstruct(app.scene, args)
    images, shown = render_views(app, result, node, indices, args.size)
    caption = [
        f"XDiffusion in 3D Slicer: {args.sample} (real T1, held out), {len(indices)} axial input slices "
        f"{list(indices)}; shown: axial slice {shown}, not an input.",
        f"Shipped model {model}" if args.model is None else f"Model {model}",
        f"{args.views} views x {args.steps} steps (dpmpp). Generated = AI-generated pseudo-MRI, not for diagnosis.",
    ]
    canvas = compose(images, result.layout, caption)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(handle)
    try:
        canvas.save(temp)
        os.chmod(temp, 0o644)  # mkstemp made it private; this file is published
        os.replace(temp, out)
    finally:
        Path(temp).unlink(missing_ok=True)
    print(f"wrote {out} ({canvas.width}x{canvas.height}): {caption[1]}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except XDiffusionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
