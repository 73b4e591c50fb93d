"""`pipeline run app`: a web page to animate a photo (Gradio, the `app` extra).

    pipeline run app [--host 127.0.0.1] [--port 7860] [--config vox-256 --checkpoint vox-cpk.pth.tar]

The page takes a source photo (upload or webcam) and a driving video (upload or webcam
recording), the model (family, config, checkpoint: preset from the flags), the options
`pipeline run animate` knows (motion mode, adapt scale, best frame, auto crop, paste-back,
smoothing, precision, side-by-side layout), shows the run's progress, a preview and the
marked mp4 (with the driving video's sound) to download. Gradio's API offers the same run as
`animate` (inputs: the source, the driving video, an options object; output: the video file).

Each run builds its command line, parses it with `stages.animate`'s parser and runs
`stages.animate.options` and `stages.animate.run`: the same AnimateRequest, the same checks,
the same library call as `pipeline run animate`. Bad input (an unreadable photo, a video with
no frames, a checkpoint that does not fit the config) shows the one-line UserError in the
page; anything else shows one line too, its traceback going to the server's log only.

Bounds: the server listens on 127.0.0.1 unless --host says otherwise; uploads are limited to
--max-upload-mb; a driving video is cut to --max-frames frames; runs are queued one at a time;
everything the app writes (uploads, results, Gradio's cache) lies in one temporary folder,
removed when the app stops.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError, check_count

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MOTION = ("config's default", "relative", "standard", "avd")   # standard = absolute motion
PRECISIONS = ("auto", "fp32", "bf16", "int8")
LAYOUTS = ("result", "side-by-side")
# the `options` object of the API (and of the page): name -> default
DEFAULT_SETTINGS: dict[str, Any] = {
    "config": None,                  # None: the app's --config
    "model": None,                   # a family name; None: the config's
    "random_weights": False,         # no checkpoint: random weights (demo only)
    "mode": "config's default",
    "adapt_scale": False,
    "find_best_frame": False,
    "auto_crop": False,
    "paste_back": True,              # with auto crop on a photo larger than the model's input
    "smooth": False,
    "smooth_strength": 1.0,
    "precision": None,               # None: the app's --precision
    "layout": "result",
    "max_frames": None,              # None: the app's --max-frames
}


@dataclass(frozen=True)
class AppOptions:
    host: str = "127.0.0.1"
    port: int = 7860                 # 0: a free port
    config: str = "vox-256"          # the preset config (a name or a yaml path)
    checkpoint: Path | None = None   # the preset checkpoint
    device: str = "auto"
    precision: str = "auto"          # the page's preset precision
    max_frames: int = 300            # driving frames animated at most
    max_upload_mb: int = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it "
                             "to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: any free port)")
    parser.add_argument("--config", default="vox-256", help="the preset config: a name (vox-256) or a yaml path")
    parser.add_argument("--checkpoint", help="the preset checkpoint (without one the page runs random weights "
                                             "only when 'random weights (demo)' is ticked)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                        help="the page's preset precision (animate's --precision)")
    parser.add_argument("--max-frames", type=int, default=300,
                        help="driving frames animated at most per run (default 300)")
    parser.add_argument("--max-upload-mb", type=int, default=100, help="largest upload in MB (default 100)")


def options(args: argparse.Namespace) -> AppOptions:
    """The app's options, checked (UserError) before the server starts."""
    from fomm.animation import resolve_device
    from fomm.config import load_config
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 to 65535")
    check_count("--max-frames", args.max_frames)
    check_count("--max-upload-mb", args.max_upload_mb)
    load_config(args.config)  # UserError for a config that does not exist or does not load
    checkpoint = None if args.checkpoint is None else Path(args.checkpoint)
    if checkpoint is not None and not checkpoint.is_file():
        raise UserError(f"--checkpoint {args.checkpoint!r} does not exist (expected a checkpoint file)")
    resolve_device(args.device)
    return AppOptions(args.host, args.port, args.config, checkpoint, args.device, args.precision,
                      args.max_frames, args.max_upload_mb)


def run(app_options: AppOptions) -> None:
    """Serve the page until interrupted (Ctrl-C or SIGTERM); the temporary folder goes with it."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with AnimateApp(app_options) as app:
            app.launch(block=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace) -> int:
    run(options(args))
    return 0


# --------------------------------------------------------------------------- one run
class _Parser(argparse.ArgumentParser):
    """animate's parser, raising UserError instead of exiting (the page shows the line)."""

    def error(self, message: str):
        raise UserError(message)


def config_names() -> list[str]:
    return sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def animate_argv(source: Path, driving: Path, out: Path, settings: dict[str, Any], app: AppOptions,
                 checkpoint: Path | None) -> list[str]:
    """The `pipeline run animate` flags of one run of the page (`settings`: DEFAULT_SETTINGS's
    keys; unknown keys and values outside the choices are a UserError)."""
    from fomm.families import NAMES
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise UserError(f"options {unknown}: unknown; expected some of {sorted(DEFAULT_SETTINGS)}")
    given = {**DEFAULT_SETTINGS, **{key: value for key, value in settings.items() if value is not None}}

    def choice(key: str, allowed) -> str:
        if given[key] not in allowed:
            raise UserError(f"{key} {given[key]!r}: expected one of {list(allowed)}")
        return given[key]

    for key, default in DEFAULT_SETTINGS.items():
        if isinstance(default, bool) and not isinstance(given[key], bool):
            raise UserError(f"{key} {given[key]!r}: expected true or false")
    strength = given["smooth_strength"]
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise UserError(f"smooth_strength {strength!r}: expected a number")

    config = app.config if given["config"] in (None, app.config) else choice("config", config_names())
    argv = ["--config", str(config), "--source", str(source), "--driving", str(driving), "--out", str(out),
            "--device", app.device,
            "--precision", choice("precision", PRECISIONS) if given["precision"] else app.precision,
            "--layout", choice("layout", LAYOUTS)]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    elif given["random_weights"]:
        argv += ["--random-weights"]
    else:
        raise UserError("no checkpoint: start the app with --checkpoint, upload one, or tick "
                        "'random weights (demo)'")
    if given["model"] not in (None, ""):
        argv += ["--model", choice("model", NAMES)]
    mode = choice("mode", MOTION)
    if mode != MOTION[0]:
        argv += ["--mode", mode]
    flags = {"adapt_scale": "--adapt-scale", "find_best_frame": "--find-best-frame", "smooth": "--smooth"}
    for key, flag in flags.items():
        if given[key]:
            argv.append(flag)
    if given["auto_crop"]:
        argv += ["--crop", "auto"]
    if not given["paste_back"]:
        argv.append("--no-paste-back")
    if given["smooth"]:
        argv += ["--smooth-strength", str(float(strength))]
    frames = app.max_frames if given["max_frames"] is None else given["max_frames"]
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise UserError(f"max_frames {frames!r}: expected a whole number of 1 or more")
    argv += ["--max-frames", str(min(frames, app.max_frames))]
    return argv


class AnimateApp:
    """The Gradio page and API over `stages.animate`, with its own temporary folder."""

    def __init__(self, app_options: AppOptions):
        self.options = app_options
        self.folder = Path(tempfile.mkdtemp(prefix="motion-transfer-app-")).resolve()
        # Gradio keeps uploads and what it serves in its cache folder: ours
        self._old_temp = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = str(self.folder / "gradio")
        self.demo = self._build()
        self.url: str | None = None

    def __enter__(self) -> "AnimateApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def launch(self, block: bool = False) -> str:
        """Start serving; returns the page's URL (`block`: until interrupted)."""
        self.demo.queue(default_concurrency_limit=1, max_size=16)
        _, url, _ = self.demo.launch(server_name=self.options.host, server_port=self.options.port or None,
                                     max_file_size=f"{self.options.max_upload_mb}mb", prevent_thread_lock=True,
                                     quiet=True, show_error=False)
        self.url = url
        logger.info("app: serving %s, writing under %s", url, self.folder)
        print(f"app: {url} (files under {self.folder}, removed on exit; Ctrl-C stops)", flush=True)
        if block:
            try:
                self.demo.block_thread()  # returns on Ctrl-C
            except KeyboardInterrupt:
                pass
        return url

    def close(self) -> None:
        try:
            self.demo.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self._old_temp is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._old_temp

    # ----------------------------------------------------------------------- the run
    def _upload(self, payload, what: str) -> Path | None:
        """The path of an uploaded file (a Gradio FileData payload), which must lie in the app's
        folder: a client cannot name another file of the server."""
        if isinstance(payload, dict) and isinstance(payload.get("video"), dict):
            payload = payload["video"]  # a Video payload wraps its file
        path = payload.get("path") if isinstance(payload, dict) else None
        if not path:
            return None
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.folder):
            raise UserError(f"{what}: {Path(path).name!r} is not an upload of this page")
        return resolved

    def animate(self, source, driving, settings: dict[str, Any] | None, checkpoint=None, progress=None) -> Path:
        """One run: the request `pipeline run animate` would build from these inputs, run by
        stages.animate.run; returns the marked video."""
        from stages import animate as stage
        source_path = self._upload(source, "source photo")
        driving_path = self._upload(driving, "driving video")
        if source_path is None:
            raise UserError("no source photo: upload one or take one with the webcam")
        if driving_path is None:
            raise UserError("no driving video: upload one or record one with the webcam")
        if settings is not None and not isinstance(settings, dict):
            raise UserError(f"options {settings!r}: expected an object of {sorted(DEFAULT_SETTINGS)}")
        uploaded = self._upload(checkpoint, "checkpoint") if checkpoint is not None else None
        out = self.folder / "runs" / uuid.uuid4().hex / "animated.mp4"
        out.parent.mkdir(parents=True)
        argv = animate_argv(source_path, driving_path, out, settings or {}, self.options,
                            uploaded or self.options.checkpoint)
        parser = _Parser(prog="app")
        stage.add_arguments(parser)
        request = stage.options(parser.parse_args(argv))
        if progress is not None:
            progress(0, desc="loading the model")

        def frames_done(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="animating", unit="frames")
        result = stage.run(request, frames_done)
        logger.info("app: %s", result.summary())
        return result.path

    def _run(self, source, driving, settings, checkpoint=None, progress=None) -> Path:
        """`animate` with every failure as one line in the page (gr.Error)."""
        import gradio as gr
        try:
            return self.animate(source, driving, settings, checkpoint, progress)
        except UserError as err:
            raise gr.Error(" ".join(str(err).split()), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - the page shows one line; the log keeps the traceback
            logger.exception("app: the run failed")
            line = " ".join(str(err).split())[:300]
            raise gr.Error(f"the run failed: {type(err).__name__}: {line}", print_exception=False) from None

    # ----------------------------------------------------------------------- the page
    def _build(self):
        import gradio as gr

        from fomm.families import NAMES
        preset = self.options
        names = config_names()
        if preset.config not in names:
            names = [preset.config, *names]
        with gr.Blocks(title="motion-transfer: animate a photo", analytics_enabled=False) as demo:
            gr.Markdown("## Animate a photo\nThe photo moves like the driving video (First Order Motion "
                        "Model and its families). Every result carries the generated-content marks.")
            with gr.Row():
                source = gr.Image(label="source photo", sources=["upload", "webcam"], type="filepath",
                                  elem_id="source")
                driving = gr.Video(label="driving video", sources=["upload", "webcam"], include_audio=True,
                                   elem_id="driving")
            with gr.Accordion("model", open=False):
                with gr.Row():
                    family = gr.Dropdown(["", *NAMES], value="", label="model family ('': the config's)")
                    config = gr.Dropdown(names, value=preset.config, label="config")
                    checkpoint = gr.File(label=f"checkpoint (preset: {preset.checkpoint or 'none'})",
                                         file_types=[".pth", ".pt", ".tar"], elem_id="checkpoint")
            with gr.Accordion("options", open=True):
                with gr.Row():
                    mode = gr.Radio(list(MOTION), value=MOTION[0], label="motion (standard = absolute)")
                    precision = gr.Dropdown(list(PRECISIONS), value=preset.precision, label="precision")
                    layout = gr.Radio(list(LAYOUTS), value="result", label="layout", elem_id="layout")
                with gr.Row():
                    adapt_scale = gr.Checkbox(False, label="adapt scale")
                    find_best_frame = gr.Checkbox(False, label="find best frame")
                    auto_crop = gr.Checkbox(False, label="auto crop (face)")
                    paste_back = gr.Checkbox(True, label="paste back into the whole photo (with auto crop)")
                    smooth = gr.Checkbox(False, label="smooth motion")
                    smooth_strength = gr.Slider(0.25, 4.0, value=1.0, step=0.25, label="smoothing strength")
            with gr.Row():
                random_weights = gr.Checkbox(False, label="random weights (demo): no checkpoint, meaningless "
                                             "motion", elem_id="random-weights")
                button = gr.Button("Animate", variant="primary", elem_id="animate")
            with gr.Row():
                preview = gr.Video(label="preview", interactive=False, elem_id="preview")
                download = gr.File(label="the marked mp4", interactive=False, elem_id="download")
            # the API's `animate`: source, driving, options (DEFAULT_SETTINGS's keys) -> the video
            settings = gr.JSON(visible=False)
            api_button = gr.Button(visible=False)

            def on_click(source_value, driving_value, family_value, config_value, checkpoint_value,
                         random_value, mode_value, precision_value, layout_value, adapt_value, best_value,
                         crop_value, paste_value, smooth_value, strength_value, progress=gr.Progress()):
                chosen = {"model": family_value or None, "config": config_value, "random_weights": random_value,
                          "mode": mode_value, "precision": precision_value, "layout": layout_value,
                          "adapt_scale": adapt_value, "find_best_frame": best_value, "auto_crop": crop_value,
                          "paste_back": paste_value, "smooth": smooth_value, "smooth_strength": strength_value}
                path = self._run(source_value, driving_value, chosen, checkpoint_value, progress)
                return str(path), str(path)

            def on_api(source_value, driving_value, settings_value, progress=gr.Progress()):
                return str(self._run(source_value, driving_value, settings_value, None, progress))

            # preprocess=False: the handlers get the uploads' paths and read them through the
            # project's checks, so a bad file is the project's one-line error, not Gradio's
            button.click(on_click, [source, driving, family, config, checkpoint, random_weights, mode, precision,
                                    layout, adapt_scale, find_best_frame, auto_crop, paste_back,
                                    smooth, smooth_strength],
                         [preview, download], preprocess=False, api_visibility="private")
            api_button.click(on_api, [source, driving, settings], [download], preprocess=False,
                             api_name="animate")
        return demo
